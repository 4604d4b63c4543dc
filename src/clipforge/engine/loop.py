"""``fit(task, config)``: the one training loop under every clipforge task.

Per step: the learning rate from the schedule, the task's forward and backward (with exact
micro-batching, :mod:`clipforge.engine.accumulate`), the gradients made the global batch's across
ranks, the non-finite policy, clipping, the optimiser step and the task's after-step hook. Around
the steps: the run folder and config snapshot, device placement, logging (JSONL, TensorBoard, a
progress bar, one cadence), evaluation, atomic checkpoints, exact resume and the summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from clipforge.engine import distributed as D
from clipforge.engine.accumulate import forward_backward
from clipforge.engine.attention import Attention, check_attention
from clipforge.engine.budget import TimeBudget
from clipforge.engine.checkpoint import TrainState, commit_checkpoint, latest_checkpoint, truncate_log
from clipforge.engine.context import StepContext, finite_flag
from clipforge.engine.precision import Precision, check_precision, resolve_precision
from clipforge.engine.schedule import learning_rate
from clipforge.engine.task import Task
from clipforge.errors import TrainingDiverged
from clipforge.io import atomic_write_text
from clipforge.utils.progress import progress_bar

log = logging.getLogger(__name__)


Schedule = Literal["cosine", "linear", "constant"]


@dataclass
class EngineConfig:
    """What the engine does around a task's steps (each task's config maps its options onto this)."""

    out_dir: str
    epochs: int = 1
    max_steps: int | None = None
    minutes: float | None = None
    warmup_steps: int = 0
    schedule: Schedule = "cosine"
    grad_clip: float | None = None
    micro_batch_size: int | None = None
    precision: Precision = "fp32"
    attention: Attention = "auto"  # the attention kernel in training steps (engine.attention)
    log_every_steps: int = 10
    save_every_steps: int = 0
    save_every_minutes: float = 0.0  # also checkpoint when this much time passed since the last one
    save_each_epoch: bool = True  # checkpoint at every epoch's end (the run's end always is)
    keep_checkpoints: int = 3
    eval_every_epochs: int = 1
    eval_every_steps: int = 0  # also evaluate every N steps (small data: epochs of a few steps)
    budget_counts_eval: bool = True  # False: evaluations pause the minutes= clock (equal training time)
    max_nonfinite_steps: int = 5
    tensorboard: bool = True
    label: str = "train"


@dataclass
class FitResult:
    state: TrainState
    stopped_early: bool
    model_path: Path | None


def fit(task: Task, config: EngineConfig, info: D.DistInfo, device: torch.device, resume: str | None = None,
        progress: bool = True, skipped: dict[str, int] | None = None) -> FitResult:
    """Train ``task`` as ``config`` says; ``resume`` is ``"latest"`` or a checkpoint folder.

    ``skipped``: samples already left out while reading the data (counted into the summary).
    """
    check_precision(config.precision)
    check_attention(config.attention)
    if config.precision == "auto":
        config = dataclasses.replace(config, precision=resolve_precision(config.precision, device))
        log.info(f"precision=auto: {config.precision} on this {device.type}")
    run_dir = Path(config.out_dir)
    optimizers = task.optimizers()
    for opt in optimizers.values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    state = TrainState(skipped=dict(skipped or {}))
    if resume:
        state = load_training(latest_checkpoint(run_dir / "checkpoints", resume), task, optimizers)
    per_epoch = task.steps_per_epoch()
    total_steps = per_epoch * config.epochs  # the schedule's length; max_steps only stops early
    # minutes= sizes the schedule to the steps that fit (engine.budget); wall time is counted either way.
    budget = TimeBudget(config.minutes or 0.0, total_steps, config.warmup_steps, state.wall_seconds, info)
    steps_here = 0
    ctx = StepContext(info, device, config.precision, config.micro_batch_size, optimizers, task, config.grad_clip,
                      config.attention)
    if config.attention == "auto" and ctx.attention != "default":
        log.info(f"attention=auto: the {ctx.attention} kernel ({ctx.precision} on the {device.type})")
    writer = _tensorboard(run_dir, config) if info.is_main else None
    if info.is_main:
        for name in ("metrics.jsonl", "evals.jsonl"):  # lines of steps after the checkpoint are done again
            truncate_log(run_dir / name, state.step)
    examples: dict[str, list[str]] = {}
    consecutive_bad, stopped_early = 0, False
    last_save = time.perf_counter()

    def evaluate(last: bool) -> None:
        start = time.perf_counter()
        metrics = task.evaluate(state.epoch, last)
        if not config.budget_counts_eval:
            budget.exclude(time.perf_counter() - start)
        if metrics:
            metrics.update(step=state.step, epoch=state.epoch)
            state.evals.append(metrics)
            _log(run_dir / "evals.jsonl", writer, metrics)
            log.info(_format_eval(metrics))
        task.model.train()

    with progress_bar(config.label, total=total_steps, enabled=progress and info.is_main,
                      fields="loss {task.fields[loss]} lr {task.fields[lr]} {task.fields[extra]}") as bar:
        bar.update(completed=state.step, loss="-", lr="-", extra="")
        bar_total = total_steps
        while state.epoch < config.epochs:
            t0, seen0 = time.perf_counter(), state.samples_seen
            for batch in task.batches(state.epoch, state.batch_in_epoch):
                step_start = time.perf_counter()
                _count_skips(task.skipped(batch), state, examples)
                if budget.active:
                    budget.tick(state.step, steps_here)
                    if budget.total_steps != bar_total:
                        bar_total = budget.total_steps
                        bar.update(total=bar_total)
                for opt in optimizers.values():
                    for group in opt.param_groups:
                        group["lr"] = learning_rate(state.step, group["initial_lr"], budget.warmup,
                                                    budget.total_steps, config.schedule)
                    opt.zero_grad(set_to_none=True)
                lr = next(iter(optimizers.values())).param_groups[0]["lr"]
                ctx.step = state.step
                if task.manual_optimization:
                    out = task.training_step(batch, ctx)
                    scalars = _host_scalars(out)
                    ok = all(math.isfinite(v) for v in scalars.values())
                else:
                    out = forward_backward(task, batch, ctx)
                    task.reduce_gradients(info)
                    flag = finite_flag(out["loss"], task.model)
                    scalars = _host_scalars({**out, _FINITE: False if flag is None else flag})
                    ok = bool(scalars.pop(_FINITE))
                    if ok:
                        ctx.clip_and_step(optimizers)
                if ok:
                    consecutive_bad = 0
                else:
                    consecutive_bad += 1
                    state.nonfinite_steps += 1
                    for opt in optimizers.values():
                        opt.zero_grad(set_to_none=True)
                    if consecutive_bad >= config.max_nonfinite_steps:
                        raise TrainingDiverged(
                            f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (last at step "
                            f"{state.step}); stopped. The last good checkpoint is in {run_dir / 'checkpoints'}; "
                            "try a lower learning rate or precision=fp32")
                extra = task.after_optimizer_step(state.step, total_steps)
                state.step += 1
                state.batch_in_epoch += 1
                state.samples_seen += task.batch_len(batch) * info.world_size
                state.train_seconds += time.perf_counter() - step_start
                steps_here += 1
                state.wall_seconds = budget.after_step()
                rate = (state.samples_seen - seen0) / max(1e-9, time.perf_counter() - t0)
                bar.advance(loss=f"{scalars.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}",
                            extra=" ".join(f"{k} {v:.4g}" for k, v in extra.items()) + f" {rate:.0f} samples/s")
                if info.is_main and (state.step % config.log_every_steps == 0 or state.step == 1):
                    rec = {"step": state.step, "epoch": state.epoch, **scalars, "lr": lr, **extra,
                           "samples_per_s": rate}
                    state.history.append(rec)
                    _log(run_dir / "metrics.jsonl", writer, rec)
                if info.is_main and config.eval_every_steps and state.step % config.eval_every_steps == 0:
                    evaluate(last=False)
                by_steps = config.save_every_steps and state.step % config.save_every_steps == 0
                since_save = time.perf_counter() - last_save
                by_time = config.save_every_minutes and since_save >= 60 * config.save_every_minutes
                if info.is_main and (by_steps or by_time):
                    save_training(run_dir, task, optimizers, state, config.keep_checkpoints)
                    last_save = time.perf_counter()
                if (config.max_steps and state.step >= config.max_steps) or (budget.over):
                    stopped_early = True
                    break
            if not stopped_early:
                state.epoch += 1
                state.batch_in_epoch = 0
            last = stopped_early or state.epoch >= config.epochs
            due = config.eval_every_epochs and state.epoch % config.eval_every_epochs == 0 and not stopped_early
            if info.is_main and (due or (last and task.evaluate_at_end)):
                evaluate(last)
            if info.is_main and (config.save_each_epoch or last):
                save_training(run_dir, task, optimizers, state, config.keep_checkpoints)
                last_save = time.perf_counter()
            D.barrier(info)
            if stopped_early:
                break
    model_path = None
    if info.is_main:
        model_path = task.save_final(run_dir)
        summary = {"steps": state.step, "epochs": state.epoch, "samples_seen": state.samples_seen,
                   "train_seconds": round(state.train_seconds, 1), "wall_seconds": round(state.wall_seconds, 1),
                   "schedule_steps": budget.total_steps, "warmup_steps": budget.warmup,
                   "nonfinite_steps": state.nonfinite_steps,
                   "skipped": state.skipped, "skipped_examples": examples,
                   "final_eval": state.evals[-1] if state.evals else None}
        atomic_write_text(json.dumps(summary, indent=2), run_dir / "summary.json")
        log.info(skip_summary(state.skipped, examples))
    if writer is not None:
        writer.close()
    return FitResult(state, stopped_early, model_path)


def save_training(run_dir: Path, task: Task, optimizers: dict[str, torch.optim.Optimizer], state: TrainState,
                  keep: int) -> Path:
    def write(tmp: Path) -> None:
        task.save_state(tmp)
        for name, opt in optimizers.items():
            torch.save(opt.state_dict(), tmp / _optimizer_file(name, optimizers))
        (tmp / "state.json").write_text(json.dumps(asdict(state)))

    return commit_checkpoint(run_dir / "checkpoints", f"step_{state.step:07d}", write, keep)


def load_training(path: Path, task: Task, optimizers: dict[str, torch.optim.Optimizer]) -> TrainState:
    from clipforge.errors import CheckpointError

    task.load_state(path)
    for name, opt in optimizers.items():
        file = path / _optimizer_file(name, optimizers)
        try:
            opt.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as e:
            raise CheckpointError(f"{file}: cannot restore the optimiser ({str(e).splitlines()[0]})") from None
    return TrainState(**json.loads((path / "state.json").read_text()))


def _optimizer_file(name: str, optimizers: dict) -> str:
    return "optimizer.pt" if len(optimizers) == 1 else f"optimizer-{name}.pt"


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)


_FINITE = "__finite__"  # the finite flag's key among a step's scalars


def _host_scalars(out: dict[str, Any]) -> dict[str, float]:
    """The step's scalars as floats in one copy to the host: on a GPU, the step's only sync (a
    ``float()`` each would wait for the device each time)."""
    names = [k for k, v in out.items() if _is_scalar(v)]
    device = next((out[k].device for k in names if isinstance(out[k], torch.Tensor)), torch.device("cpu"))
    if not names:
        return {}
    values = torch.stack([torch.as_tensor(out[k]).detach().reshape(()).to(device, torch.float64) for k in names])
    return dict(zip(names, values.tolist()))


def _count_skips(skipped: list, state: TrainState, examples: dict[str, list[str]]) -> None:
    for s in skipped:
        state.skipped[s.reason] = state.skipped.get(s.reason, 0) + 1
        ex = examples.setdefault(s.reason, [])
        if len(ex) < 3:
            ex.append(s.source)
        if state.skipped[s.reason] == 1:
            log.warning(f"skipping {s.source}: {s.reason}{' (' + s.detail + ')' if s.detail else ''}; "
                        "further samples skipped for this reason are counted in the summary")


def skip_summary(skipped: dict[str, int], examples: dict[str, list[str]]) -> str:
    if not skipped:
        return "skipped samples: none"
    lines = [f"skipped samples: {sum(skipped.values())} (counted per epoch in which they came up)"]
    for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]):
        ex = ", ".join(examples.get(reason, []))
        lines.append(f"  {reason}: {n}" + (f"  e.g. {ex}" if ex else ""))
    return "\n".join(lines)


def _format_eval(metrics: dict[str, Any]) -> str:
    keys = [k for k in metrics if k not in ("step", "epoch")]
    return f"eval epoch {metrics['epoch']}: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in keys
                                                          if isinstance(metrics[k], float))


def _tensorboard(run_dir: Path, config: EngineConfig) -> Any:
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _log(path: Path, writer: Any, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                writer.add_scalar(k, v, record["step"])
