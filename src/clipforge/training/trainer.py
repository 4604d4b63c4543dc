"""The CLIP training loop: ``train(config)`` from pairs to a saved, evaluated model."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from clipforge.checkpoints.load import build, load
from clipforge.checkpoints.native import save as save_model
from clipforge.checkpoints.state_dict import atomic_write_text
from clipforge.data.pairs import PairDataset, Skipped, collate, read_pairs
from clipforge.data.shards import ShardDataset, count_samples, is_shard_source, iter_captions
from clipforge.errors import ClipforgeError, ConfigError
from clipforge.losses.clip import clip_loss
from clipforge.losses.tiled import tiled_clip_loss
from clipforge.models.clip import CLIP
from clipforge.models.config import CLIPConfig
from clipforge.training import distributed as D
from clipforge.training.checkpoint import TrainState, load_checkpoint, resolve_checkpoint, save_checkpoint
from clipforge.training.config import TrainConfig
from clipforge.training.evaluate import check_eval_data, evaluate
from clipforge.training.optim import learning_rate, param_groups
from clipforge.training.sampler import epoch_batches, steps_per_epoch
from clipforge.training.step import contrastive_backward, micro_batching_is_inexact
from clipforge.utils.progress import progress_bar

# Looked up at call time so tests can substitute the functions in this module.
_LOSSES = {"clip": lambda: clip_loss, "clip_tiled": lambda: tiled_clip_loss}


class TrainingDiverged(ClipforgeError):
    """Too many consecutive non-finite losses."""


@dataclass
class TrainResult:
    model: CLIP
    state: TrainState
    model_dir: Path
    stopped_early: bool


def build_tokenizer(config: TrainConfig, captions: list[str]) -> Any:
    from clipforge.tokenizer import BPETokenizer, HFTokenizer, TrainedBPETokenizer

    ctx = config.model.context_length
    if config.model.text_tower:
        from clipforge.models.hf_text import hf_text_config, resolve_hf_folder

        pad = hf_text_config(config.model.text_tower).pad_token_id
        return HFTokenizer.load(resolve_hf_folder(config.model.text_tower), ctx or 77, pad)
    kind = config.model.tokenizer
    if kind == "openai":
        return BPETokenizer(context_length=ctx or 77)
    if kind == "train":
        return TrainedBPETokenizer.train(captions, vocab_size=config.model.vocab_size, context_length=ctx or 77)
    return TrainedBPETokenizer.load(kind, context_length=ctx or 77)


def build_model(config: TrainConfig, tokenizer: Any) -> CLIP:
    if config.model.init:
        model = load(config.model.init)
        if tokenizer is not None and tokenizer.vocab_size > model.config.text.vocab_size:
            raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens but {config.model.init} only "
                              f"{model.config.text.vocab_size}")
        return model.train()
    base = build(config.model.name).config
    d = base.to_dict()
    for section, values in config.model.overrides.items():
        if isinstance(values, dict) and isinstance(d.get(section), dict):
            d[section].update(values)
        else:
            d[section] = values
    if config.model.text_tower:
        from clipforge.models.hf_text import HFTextTower, hf_text_config

        text_cfg = hf_text_config(config.model.text_tower, config.model.text_pooling, config.model.text_proj,
                                  tokenizer.context_length)
        d["text"] = {**text_cfg.__dict__}
        model = CLIP(CLIPConfig.from_dict(d))
        model.text = HFTextTower(text_cfg, model.config.embed_dim, pretrained=True)
        return model.train()
    d["text"]["vocab_size"] = tokenizer.vocab_size
    d["text"]["context_length"] = tokenizer.context_length
    model = CLIP(CLIPConfig.from_dict(d))
    return model.train()


def train(config: TrainConfig, resume: str | None = None, progress: bool = True) -> TrainResult:
    """Train a CLIP model as ``config`` says; ``resume`` is ``"latest"`` or a checkpoint folder."""
    config.check()
    info = D.init_distributed()
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    loss_fn = _LOSSES.get(config.loss)
    if loss_fn is None:
        raise ConfigError(f"loss must be one of {', '.join(_LOSSES)}, got {config.loss!r}")
    if config.precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be 'fp32' or 'bf16', got {config.precision!r}")
    if not config.data.train:
        raise ConfigError("no training data: set data.train to a CSV/TSV file or a captioned image folder")
    run_dir = Path(config.out_dir)
    if info.is_main:
        _check_writable(run_dir)
        check_eval_data(config)
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")

    shards = is_shard_source(config.data.train)
    if shards:
        pairs, read_skips = [], []
        n_samples = config.data.train_samples or count_samples(config.data.train)
        if not n_samples:
            raise ConfigError(f"{config.data.train}: no shards.json beside the shards to count samples; "
                              "set data.train_samples")
    else:
        pairs, read_skips = read_pairs(config.data.train, config.data.image_column, config.data.caption_column,
                                       config.data.separator)
        n_samples = len(pairs)
    torch.manual_seed(config.seed)
    if resume:
        ckpt = resolve_checkpoint(run_dir, resume)
        model = load(ckpt / "model").train()
    else:
        ckpt = None
        captions = lambda: list(iter_captions(config.data.train)) if shards else [p.caption for p in pairs]  # noqa: E731
        if config.model.init:
            model = build_model(config, None)  # fine-tuning keeps the checkpoint's own tokenizer
            if model.tokenizer is None:
                model.tokenizer = build_tokenizer(config, captions())
        else:
            tokenizer = build_tokenizer(config, captions())
            model = build_model(config, tokenizer)
            model.tokenizer = tokenizer
        if config.model.init_image_tower:
            from clipforge.ssl.trainer import load_encoder_into

            load_encoder_into(model.visual, model.config, config.model.init_image_tower)
    model.to(device)
    if config.model.lock_image:
        model.lock_image_tower()
    if config.model.lock_text:
        model.lock_text_tower()
    model.set_grad_checkpointing(config.model.grad_checkpointing)
    D.broadcast_parameters(model, info)

    opt = config.optim
    optimizer = torch.optim.AdamW(param_groups(model, opt.weight_decay), lr=opt.lr, betas=(opt.beta1, opt.beta2),
                                  eps=opt.eps)
    state = load_checkpoint(ckpt, model, optimizer) if ckpt else TrainState()
    if not ckpt:
        state.skipped = dict(Counter(s.reason for s in read_skips))
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "train_config.json")
        # Steps logged after the checkpoint by the interrupted run are done again: drop their lines.
        for name in ("metrics.jsonl", "evals.jsonl"):
            truncate_log(run_dir / name, state.step)
        if config.micro_batch_size and config.micro_batch_size < config.batch_size and \
                micro_batching_is_inexact(model):
            print("warning: this model has BatchNorm layers (a ResNet tower): with micro_batch_size="
                  f"{config.micro_batch_size} < batch_size={config.batch_size} they normalise each micro-batch by "
                  "its own statistics, so gradients are not exactly the full batch's (running statistics are "
                  "still updated once per step); use a ViT tower for exact micro-batching", flush=True)

    per_epoch = steps_per_epoch(n_samples, config.batch_size)
    batches_of = _epoch_batches(config, pairs, model, info, per_epoch)
    total_steps = per_epoch * config.epochs  # the schedule's length; max_steps only stops early
    writer = _tensorboard(run_dir, config) if info.is_main else None
    log_path = run_dir / "metrics.jsonl"
    skip_examples: dict[str, list[str]] = {}
    consecutive_bad = 0
    stopped_early = False

    with progress_bar("train", total=per_epoch * config.epochs, enabled=progress and info.is_main,
                      fields="loss {task.fields[loss]} lr {task.fields[lr]} T {task.fields[temp]} "
                      "{task.fields[rate]} samples/s") as bar:
        bar.update(completed=state.step, loss="-", lr="-", temp="-", rate="-")
        while state.epoch < config.epochs:
            t0, seen0 = time.perf_counter(), state.samples_seen
            for batch in batches_of(state.epoch, state.batch_in_epoch):
                _count_skips(batch.skipped, state, skip_examples)
                lr = learning_rate(state.step, opt.lr, opt.warmup_steps, total_steps, opt.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss = torch.tensor(float("nan"))
                if len(batch) > 1:
                    loss = contrastive_backward(model, batch.images.to(device), batch.tokens.to(device), loss_fn(),
                                                config.micro_batch_size, config.precision, info)
                D.reduce_gradients(model, info)
                if not torch.isfinite(loss) or not _grads_finite(model):
                    consecutive_bad += 1
                    state.nonfinite_steps += 1
                    optimizer.zero_grad(set_to_none=True)
                    if consecutive_bad >= config.max_nonfinite_steps:
                        raise TrainingDiverged(
                            f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (last at step "
                            f"{state.step}); stopped. The last good checkpoint is in {run_dir / 'checkpoints'}; "
                            "try a lower optim.lr or precision=fp32"
                        )
                else:
                    consecutive_bad = 0
                    if opt.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
                    optimizer.step()
                    model.clamp_logit_scale_()
                state.step += 1
                state.batch_in_epoch += 1
                state.samples_seen += len(batch) * info.world_size
                rate = (state.samples_seen - seen0) / max(1e-9, time.perf_counter() - t0)
                temp = 1.0 / model.logit_scale.exp().item()
                bar.advance(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", temp=f"{temp:.4f}", rate=f"{rate:.0f}")
                if info.is_main and (state.step % config.log_every_steps == 0 or state.step == 1):
                    rec = {"step": state.step, "epoch": state.epoch, "loss": loss.item(), "lr": lr,
                           "temperature": temp, "samples_per_s": rate}
                    state.history.append(rec)
                    _log(log_path, writer, rec)
                if config.save_every_steps and state.step % config.save_every_steps == 0 and info.is_main:
                    save_checkpoint(run_dir, model, optimizer, state, config.keep_checkpoints)
                if config.max_steps and state.step >= config.max_steps:
                    stopped_early = True
                    break
            if stopped_early:
                break
            state.epoch += 1
            state.batch_in_epoch = 0
            if config.eval_every_epochs and state.epoch % config.eval_every_epochs == 0 and info.is_main:
                metrics = evaluate(model, config, progress=False)
                metrics.update(step=state.step, epoch=state.epoch)
                state.evals.append(metrics)
                _log(run_dir / "evals.jsonl", writer, metrics)
                print(_format_eval(metrics), flush=True)
                model.train()
            if info.is_main:
                save_checkpoint(run_dir, model, optimizer, state, config.keep_checkpoints)
            D.barrier(info)
    if info.is_main:
        if stopped_early:
            save_checkpoint(run_dir, model, optimizer, state, config.keep_checkpoints)
        save_model(model, run_dir / "model")
        summary = {"steps": state.step, "epochs": state.epoch, "samples_seen": state.samples_seen,
                   "nonfinite_steps": state.nonfinite_steps, "skipped": state.skipped,
                   "skipped_examples": skip_examples, "final_eval": state.evals[-1] if state.evals else None}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(skip_summary(state.skipped, skip_examples), flush=True)
    if writer is not None:
        writer.close()
    return TrainResult(model.eval(), state, run_dir / "model", stopped_early)


def _epoch_batches(config: TrainConfig, pairs: list, model: CLIP, info: D.DistInfo, per_epoch: int):
    """A function (epoch, first batch) -> this rank's batches of that epoch, for files or shards."""
    workers = config.data.workers
    if not is_shard_source(config.data.train):
        dataset = PairDataset(pairs, model.preprocess, model.tokenizer, train=True, seed=config.seed)

        def from_files(epoch: int, start: int):
            dataset.set_epoch(epoch)
            batches = epoch_batches(len(pairs), config.batch_size, config.seed, epoch, info.rank, info.world_size,
                                    start=start)
            yield from DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate)

        return from_files

    if config.batch_size % info.world_size:
        raise ConfigError(f"batch_size={config.batch_size} must be divisible by the number of processes "
                          f"({info.world_size})")
    per_rank = config.batch_size // info.world_size
    stream = ShardDataset(config.data.train, model.preprocess, model.tokenizer, train=True, seed=config.seed,
                          shuffle_buffer=config.data.shuffle_buffer, resampled=config.data.resampled,
                          rank=info.rank, world_size=info.world_size, batch_size=per_rank)

    def from_shards(epoch: int, start: int):
        # An epoch is per_epoch batches (train_samples / batch_size), as open_clip counts it; a
        # stream that ends early starts its next pass.
        stream.set_epoch(epoch, start)
        done, passes = start, 0
        while done < per_epoch:
            got = 0
            for batch in DataLoader(stream, batch_size=per_rank, num_workers=workers, collate_fn=collate):
                yield batch
                got += 1
                done += 1
                if done >= per_epoch:
                    return
            passes += 1
            if got == 0 or passes > 100:
                raise ConfigError(f"{config.data.train}: the shards yield no batches of {per_rank} for this process")
            stream.set_epoch(epoch + 10_000 * passes, 0)

    return from_shards


def _count_skips(skipped: list[Skipped], state: TrainState, examples: dict[str, list[str]]) -> None:
    for s in skipped:
        state.skipped[s.reason] = state.skipped.get(s.reason, 0) + 1
        ex = examples.setdefault(s.reason, [])
        if len(ex) < 3:
            ex.append(s.source)
        if state.skipped[s.reason] == 1:
            print(f"warning: skipping {s.source}: {s.reason}{' (' + s.detail + ')' if s.detail else ''}; "
                  "further samples skipped for this reason are counted in the summary", flush=True)


def skip_summary(skipped: dict[str, int], examples: dict[str, list[str]]) -> str:
    if not skipped:
        return "skipped samples: none"
    lines = [f"skipped samples: {sum(skipped.values())} (counted per epoch in which they came up)"]
    for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]):
        ex = ", ".join(examples.get(reason, []))
        lines.append(f"  {reason}: {n}" + (f"  e.g. {ex}" if ex else ""))
    return "\n".join(lines)


def _check_writable(run_dir: Path) -> None:
    """Fail before any work if out_dir cannot hold the run's files."""
    import tempfile

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"out_dir={run_dir}: cannot write there ({e.strerror or e})") from None


def truncate_log(path: Path, step: int) -> None:
    """Keep only the JSON lines of ``path`` whose step is at most ``step`` (atomically)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(lines):
        atomic_write_text("".join(kept), path)


def _grads_finite(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(grads) and all(torch.isfinite(g).all() for g in grads)


def _format_eval(metrics: dict[str, Any]) -> str:
    keys = [k for k in metrics if k not in ("step", "epoch")]
    return f"eval epoch {metrics['epoch']}: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in keys
                                                          if isinstance(metrics[k], float))


def _tensorboard(run_dir: Path, config: TrainConfig) -> Any:
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _log(path: Path, writer: Any, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                writer.add_scalar(k, v, record["step"])
