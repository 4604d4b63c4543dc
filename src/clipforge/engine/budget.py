"""``minutes=``: a wall-clock budget that sizes the learning-rate schedule, not only stops the run.

A budget counts the whole run's wall time (data loading, steps, evaluation, checkpoints, and the
time spent before a resume), not only the steps. Stopping at the budget with a schedule sized by
``epochs`` would end runs in the warm-up or at a high learning rate, so the schedule's length is
the number of steps the budget allows: after a few steps the rate is measured (the first step of a
process, with its one-off costs, is left out) and the schedule ends where the remaining time runs
out, re-estimated each step. A warm-up longer than a fifth of that is shortened to a fifth, so the
learning rate peaks. Under ``torchrun`` every rank uses the slowest rank's clock, so all ranks
agree on the learning rate and on the step at which they stop.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.distributed as dist

from clipforge.engine.distributed import DistInfo

log = logging.getLogger(__name__)

MINUTES_HELP = ("a wall-clock budget for the whole run (data, evaluation and checkpoints included); the "
                "learning-rate schedule is sized to the steps that fit, and epochs is then an upper bound")
WARMUP_SHARE = 5  # the warm-up takes at most 1/5 of a budgeted schedule
PROBE_STEPS = 2  # steps measured (after the first) before the schedule is sized


class TimeBudget:
    """The run's clock against ``minutes``; ``total_steps`` and ``warmup`` are the schedule's."""

    def __init__(self, minutes: float, steps_cap: int, warmup: int, spent_seconds: float, info: DistInfo) -> None:
        self.active = minutes > 0  # without a budget the clock is only read (for the summary)
        self.seconds = minutes * 60
        self.steps_cap, self.requested_warmup = steps_cap, warmup
        self.total_steps, self.warmup = steps_cap, warmup
        self.spent, self.info = spent_seconds, info
        self.start = time.perf_counter()
        self.now = spent_seconds
        self._first: tuple[int, float] | None = None  # (step, elapsed) at this process's second step
        self._told = False

    def elapsed(self) -> float:
        """Seconds of the run so far (before a resume included), the slowest rank's."""
        t = self.spent + time.perf_counter() - self.start
        if self.active and self.info.enabled:
            x = torch.tensor([t], dtype=torch.float64)
            dist.all_reduce(x, op=dist.ReduceOp.MAX)
            t = float(x)
        return t

    def tick(self, step: int, steps_this_process: int) -> None:
        """Called before each step: read the clock and size the schedule from the measured rate."""
        self.now = self.elapsed()
        if steps_this_process < 1:
            return
        if self._first is None:
            self._first = (step, self.now)
            return
        done = step - self._first[0]
        if done < PROBE_STEPS:
            return
        per_step = (self.now - self._first[1]) / done
        left = max(0.0, self.seconds - self.now)
        self.total_steps = max(step + 1, min(self.steps_cap, int(step + left / per_step)))
        self.warmup = min(self.requested_warmup, max(1, self.total_steps // WARMUP_SHARE))
        if not self._told:
            self._told = True
            short = (f"; warm-up shortened from {self.requested_warmup} to {self.warmup} steps"
                     if self.warmup < self.requested_warmup else "")
            log.info(f"time budget {self.seconds / 60:g} min: {per_step:.2f} s a step, the schedule is sized to "
                     f"about {self.total_steps} steps{short}")

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` just spent (an evaluation) out of the run's budgeted time."""
        self.start += seconds

    @property
    def over(self) -> bool:
        return self.active and self.now >= self.seconds

    def after_step(self) -> float:
        """Read the clock after a step (the stop decision); returns the run's seconds so far."""
        self.now = self.elapsed()
        return self.now
