"""The training engine on small tasks: exact accumulation, resume, non-finite policy, precision,
several optimisers. (CLIP and SSL on the engine are tested in test_training / test_ssl / test_distributed.)"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.engine import EngineConfig, Task, TrainingDiverged, fit
from clipforge.engine.accumulate import forward_backward
from clipforge.engine.context import StepContext
from clipforge.engine.distributed import DistInfo

CPU = torch.device("cpu")


class Regression(Task):
    """The smallest task: a linear model, mean squared error, fixed batches."""

    def __init__(self, n_batches: int = 6, batch: int = 8, lr: float = 0.05, nan_at: tuple[int, ...] = ()) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        g = torch.Generator().manual_seed(1)
        self.data = [(torch.randn(batch, 4, generator=g), torch.randn(batch, 1, generator=g)) for _ in range(n_batches)]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.nan_at, self.calls = nan_at, 0

    def optimizers(self):
        return {"main": self.optimizer}

    def steps_per_epoch(self):
        return len(self.data)

    def batches(self, epoch, start):
        return self.data[start:]

    def training_step(self, batch, ctx):
        self.calls += 1
        x, y = batch
        with ctx.autocast():
            loss = F.mse_loss(self.model(x).float(), y)
        return {"loss": loss * float("nan") if self.calls in self.nan_at else loss}

    def split(self, batch, size):
        return list(zip(*(t.split(size) for t in batch)))

    def batch_len(self, batch):
        return batch[0].shape[0]


class InfoNCEPairs(Regression):
    """A loss that couples the batch (in-batch negatives): exact micro-batching needs GradCache."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Linear(4, 3).double()
        self.data = [(x.double(), torch.randn(8, 4, generator=torch.Generator().manual_seed(i), dtype=torch.float64))
                     for i, (x, _) in enumerate(self.data)]
        self.scale = nn.Parameter(torch.tensor(3.0, dtype=torch.float64))  # a parameter of the loss itself

    training_step = Task.training_step  # loss_from(embed(batch))

    def embed(self, batch):
        x, y = batch
        return {"a": F.normalize(self.model(x), dim=-1), "b": F.normalize(self.model(y), dim=-1)}

    def loss_from(self, e, batch):
        logits = self.scale * e["a"] @ e["b"].T
        return {"loss": F.cross_entropy(logits, torch.arange(len(logits)))}


def _config(tmp_path, **kw) -> EngineConfig:
    return EngineConfig(**{"out_dir": str(tmp_path), "epochs": 2, "log_every_steps": 1, "tensorboard": False, **kw})


@pytest.mark.parametrize("micro", [1, 3, 5])
def test_micro_batches_give_the_full_batch_gradients(micro: int) -> None:
    for make in (Regression, InfoNCEPairs):
        grads = []
        for m in (None, micro):
            task = make()
            ctx = StepContext(DistInfo(), CPU, "fp32", m, task.optimizers(), task)
            out = forward_backward(task, task.data[0], ctx)
            extra = [task.scale.grad.clone()] if isinstance(task, InfoNCEPairs) else []
            grads.append(([p.grad.clone() for p in task.model.parameters()] + extra, out["loss"]))
        (full, loss_full), (acc, loss_acc) = grads
        torch.testing.assert_close(loss_acc.double(), loss_full.double(), rtol=1e-6, atol=1e-7)
        for a, b in zip(acc, full):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-7)


def test_resume_after_an_interruption_is_bit_exact(tmp_path) -> None:
    full = Regression()
    fit(full, _config(tmp_path / "a"), DistInfo(), CPU, progress=False)
    part = Regression()
    r = fit(part, _config(tmp_path / "b", max_steps=4, save_every_steps=2), DistInfo(), CPU, progress=False)
    assert r.stopped_early and r.state.step == 4
    resumed = Regression()
    r = fit(resumed, _config(tmp_path / "b"), DistInfo(), CPU, resume="latest", progress=False)
    assert r.state.step == 12
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_nonfinite_steps_are_skipped_then_training_stops(tmp_path) -> None:
    task = Regression(n_batches=6, nan_at=(2, 5, 6, 7))
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        fit(task, _config(tmp_path, max_nonfinite_steps=3, save_every_steps=1), DistInfo(), CPU, progress=False)
    latest = tmp_path / "checkpoints" / (tmp_path / "checkpoints" / "latest").read_text()
    state = json.loads((latest / "state.json").read_text())
    # Steps 2, 5, 6, 7 were non-finite: 5-6-7 in a row stop the run at step 7; the last checkpoint
    # (after step 6) counts three skipped updates and its weights are finite.
    assert state["step"] == 6 and state["nonfinite_steps"] == 3
    assert all(torch.isfinite(p).all() for p in task.model.parameters())


def test_bf16_autocast_trains(tmp_path) -> None:
    task = Regression()
    r = fit(task, _config(tmp_path, precision="bf16"), DistInfo(), CPU, progress=False)
    losses = [h["loss"] for h in r.state.history]
    assert losses[-1] < losses[0] and all(map(lambda v: v == v, losses))


class TwoOptimisers(Regression):
    """A GAN-shaped task: two models, two optimisers, stepped by hand in one training step."""

    manual_optimization = True

    def __init__(self) -> None:
        super().__init__()
        self.critic = nn.Linear(1, 1)
        self.model = nn.ModuleDict({"generator": nn.Linear(4, 1), "critic": self.critic})
        self.opt_g = torch.optim.SGD(self.model["generator"].parameters(), lr=0.05)
        self.opt_c = torch.optim.SGD(self.critic.parameters(), lr=0.05)

    def optimizers(self):
        return {"generator": self.opt_g, "critic": self.opt_c}

    def training_step(self, batch, ctx):
        x, y = batch
        fake = self.model["generator"](x)
        critic_loss = F.mse_loss(self.critic(fake.detach()), torch.zeros_like(y)) + \
            F.mse_loss(self.critic(y), torch.ones_like(y))
        ctx.optimizer_step("critic", critic_loss, self.critic)
        gen_loss = F.mse_loss(fake, y)
        ctx.optimizer_step("generator", gen_loss, self.model["generator"])
        return {"loss": gen_loss.detach(), "critic_loss": critic_loss.detach()}


def test_a_task_with_two_optimisers(tmp_path) -> None:
    task = TwoOptimisers()
    g0 = [p.clone() for p in task.model["generator"].parameters()]
    c0 = [p.clone() for p in task.critic.parameters()]
    r = fit(task, _config(tmp_path, save_every_steps=3), DistInfo(), CPU, progress=False)
    assert r.state.step == 12 and {"loss", "critic_loss"} <= set(r.state.history[-1])
    assert all(not torch.equal(a, b) for a, b in zip(g0, task.model["generator"].parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(c0, task.critic.parameters()))
    ckpt = tmp_path / "checkpoints" / (tmp_path / "checkpoints" / "latest").read_text()
    assert (ckpt / "optimizer-generator.pt").is_file() and (ckpt / "optimizer-critic.pt").is_file()
    resumed = TwoOptimisers()
    fit(resumed, _config(tmp_path, epochs=3), DistInfo(), CPU, resume="latest", progress=False)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 18


class SlowRegression(Regression):
    """Steps of a known duration, so a time budget's schedule can be checked on a busy machine."""

    def training_step(self, batch, ctx):
        import time

        time.sleep(0.04)
        return super().training_step(batch, ctx)


def test_a_time_budget_sizes_the_schedule_so_the_learning_rate_peaks_and_decays(tmp_path) -> None:
    task = SlowRegression(n_batches=50)
    cfg = _config(tmp_path, epochs=1000, minutes=0.05, warmup_steps=100)  # 3 s, a 100-step warm-up asked for
    r = fit(task, cfg, DistInfo(), CPU, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    lrs = [h["lr"] for h in r.state.history]
    assert r.stopped_early and 3.0 <= r.state.wall_seconds < 4.5
    # The schedule ends about where the budget does (not at 1000 epochs), the warm-up is cut to a fifth.
    assert abs(summary["schedule_steps"] - r.state.step) <= max(3, 0.15 * r.state.step)
    assert summary["warmup_steps"] == summary["schedule_steps"] // 5 < 100
    assert max(lrs) > 0.9 * 0.05 and lrs[-1] < 0.1 * 0.05
    saved = json.loads(next((tmp_path / "checkpoints").glob("step_*/state.json")).read_text())
    assert saved["wall_seconds"] > 0  # a resumed run counts the time already spent


def test_cadences_in_steps_and_minutes(tmp_path) -> None:
    """Small data has epochs of a few steps: evaluation every N steps, checkpoints only by time or at the end."""

    class Evaluated(Regression):
        def evaluate(self, epoch, last):
            return {"x": 1.0}

    r = fit(Evaluated(), _config(tmp_path, epochs=2, eval_every_epochs=0, eval_every_steps=4, save_each_epoch=False,
                                 save_every_minutes=60), DistInfo(), CPU, progress=False)
    assert [e["step"] for e in r.state.evals] == [4, 8, 12]
    assert [p.name for p in (tmp_path / "checkpoints").glob("step_*")] == ["step_0000012"]  # the end only


def test_the_linear_probe_does_not_depend_on_the_thread_count() -> None:
    from threadpoolctl import threadpool_limits

    from clipforge.evaluation.linear_probe import linear_probe

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 64, generator=g), torch.randint(0, 5, (300,), generator=g)
    runs, before = [], torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            runs.append(linear_probe(x[:200], y[:200], x[200:], y[200:], n_classes=5))
    torch.set_num_threads(before)
    assert runs[0]["lp_acc1"] == runs[1]["lp_acc1"] and runs[0]["C"] == runs[1]["C"]
    assert runs[0]["blas_threads"] == 1 and isinstance(runs[0]["converged"], bool)


def test_evaluation_can_pause_the_time_budget(tmp_path) -> None:
    """budget_counts_eval=False: runs compared at equal training time are not charged for evaluating."""
    import time

    class SlowEval(SlowRegression):
        def evaluate(self, epoch, last):
            time.sleep(0.5)
            return {"x": 1.0}

    start = time.perf_counter()
    r = fit(SlowEval(n_batches=50), _config(tmp_path, epochs=1000, minutes=0.05, eval_every_epochs=0,
                                            eval_every_steps=10, budget_counts_eval=False), DistInfo(), CPU,
            progress=False)
    elapsed = time.perf_counter() - start
    paused = 0.5 * len(r.state.evals)
    assert len(r.state.evals) >= 4 and 3.0 <= r.state.wall_seconds < 4.5  # the budget: training time only
    assert elapsed >= r.state.wall_seconds + paused - 0.1


def test_linear_schedule_matches_transformers_after_warm_up() -> None:
    transformers = pytest.importorskip("transformers")
    from clipforge.engine.schedule import learning_rate

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = transformers.get_linear_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=50)
    for step in range(60):
        if step >= 10:  # their warm-up starts at 0, ours at 1/warmup (the first step trains)
            assert learning_rate(step, 1.0, 10, 50, "linear") == pytest.approx(theirs.get_last_lr()[0])
        opt.step()
        theirs.step()
