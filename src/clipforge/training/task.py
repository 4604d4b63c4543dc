"""CLIP training as a task of the engine: the symmetric contrastive loss over image-text pairs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from clipforge.checkpoints.native import save as save_model
from clipforge.data.pairs import Batch, PairDataset, collate
from clipforge.data.sampler import epoch_batches
from clipforge.data.shards import ShardDataset
from clipforge.engine.distributed import DistInfo, gather_features, reduce_gradients
from clipforge.engine.ema import WeightEMA
from clipforge.engine.prefetch import prefetch, prefetch_depth
from clipforge.engine.task import Task
from clipforge.errors import ConfigError
from clipforge.models.clip import CLIP

# (image_features, text_features, scale) -> loss; SigLIP's take the logit bias as a fourth argument.
LossFn = Callable[..., torch.Tensor]


class ContrastiveStep(Task):
    """The contrastive loss of a batch of (images, tokens): embeddings per sample, the loss over the
    global batch (features gathered from every rank), so micro-batching is exact (GradCache)."""

    min_batch = 2  # a contrastive batch needs a negative

    def __init__(self, model: CLIP, loss_fn: LossFn, dist: DistInfo | None = None) -> None:
        self.model, self.loss_fn, self.dist = model, loss_fn, dist or DistInfo()

    def embed(self, batch: Any) -> dict[str, torch.Tensor]:
        images, tokens = _images_tokens(batch)
        return {"image": at_least_fp32(self.model.encode_image(images, normalize=True)),
                "text": at_least_fp32(self.model.encode_text(tokens, normalize=True))}

    def loss_from(self, embeddings: dict[str, torch.Tensor], batch: Any) -> dict[str, Any]:
        img, _ = gather_features(embeddings["image"], self.dist)
        txt, _ = gather_features(embeddings["text"], self.dist)
        scale = self.model.logit_scale.clamp(max=self.model.max_log_scale).exp()
        bias = getattr(self.model, "logit_bias", None)
        return {"loss": self.loss_fn(img, txt, scale) if bias is None else self.loss_fn(img, txt, scale, bias)}

    def split(self, batch: Any, size: int) -> list[Any]:
        images, tokens = _images_tokens(batch)
        return list(zip(images.split(size), tokens.split(size)))

    def batch_len(self, batch: Any) -> int:
        return _images_tokens(batch)[0].shape[0]

    def reduce_gradients(self, info: DistInfo) -> None:
        # Each rank holds its share of the global loss's gradient; the scale and bias are computed
        # whole on every rank.
        reduce_gradients(self.model, info, averaged=("logit_scale", "logit_bias"))


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Autocast's half-precision embeddings as float32 for the loss; float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def _images_tokens(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return (batch.images, batch.tokens) if isinstance(batch, Batch) else batch


class CLIPTask(ContrastiveStep):
    """Pairs (files or shards) -> a CLIP model; evaluation, checkpoints and the final model in clipforge's format."""

    def __init__(self, model: CLIP, config: Any, pairs: list, n_samples: int, loss_fn: LossFn, dist: DistInfo,
                 device: torch.device) -> None:
        from clipforge.engine.schedule import param_groups

        super().__init__(model, loss_fn, dist)
        self.config, self.pairs, self.n_samples, self.device = config, pairs, n_samples, device
        # A run that evaluates at all also evaluates its last model when max_steps or minutes= stop it.
        self.evaluate_at_end = bool(config.eval_every_epochs or config.eval_every_steps)
        opt = config.optim
        # Fused AdamW on CUDA (one kernel for all parameters); the CPU keeps the reference implementation.
        self.optimizer = torch.optim.AdamW(param_groups(model, opt.weight_decay, opt.decay_embeddings), lr=opt.lr,
                                           betas=(opt.beta1, opt.beta2), eps=opt.eps,
                                           fused=True if device.type == "cuda" else None)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.channels_last:
            model.visual.to(memory_format=torch.channels_last)
        self.ema = WeightEMA(model, config.ema) if config.ema else None
        self._batches = _epoch_batches(config, pairs, model, dist, self.steps_per_epoch(), device)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.optimizer}

    def steps_per_epoch(self) -> int:
        return self.n_samples // self.config.batch_size

    def batches(self, epoch: int, start: int):
        for batch in self._batches(epoch, start):
            # Pinned on CUDA (see _epoch_batches), so the copies overlap the previous step's kernels.
            yield Batch(batch.indices, batch.images.to(self.device, memory_format=self.memory_format,
                                                       non_blocking=True),
                        batch.tokens.to(self.device, non_blocking=True), batch.skipped) if len(batch) else batch

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        self.model.clamp_logit_scale_()
        if self.ema is not None:
            self.ema.update(self.model, step)
        return {"temperature": 1.0 / self.model.logit_scale.exp().item()}

    def evaluate(self, epoch: int, last: bool) -> dict[str, Any]:
        """The trained weights' metrics; with an EMA, the EMA's (the weights saved at the end), and the
        trained weights' under ``online/``."""
        from clipforge.training.evaluate import evaluate

        online = evaluate(self.model, self.config, progress=False)
        if self.ema is None:
            return online
        return {**evaluate(self.ema.model, self.config, progress=False),
                **{f"online/{k}": v for k, v in online.items()}}

    def save_state(self, folder: Path) -> None:
        save_model(self.model, folder / "model")
        if self.ema is not None:
            self.ema.save(folder / "ema.safetensors")

    def load_state(self, folder: Path) -> None:
        from clipforge.checkpoints.state_dict import load_strict, read_state_dict

        load_strict(self.model, read_state_dict(folder / "model" / "model.safetensors"), str(folder / "model"))
        if self.ema is not None:
            self.ema.load(folder / "ema.safetensors")

    def save_final(self, run_dir: Path) -> Path:
        if self.ema is not None:  # the averaged weights are the run's product
            self.model.load_state_dict(self.ema.model.state_dict())
        save_model(self.model, run_dir / "model")
        return run_dir / "model"


def _epoch_batches(config: Any, pairs: list, model: CLIP, info: DistInfo, per_epoch: int, device: torch.device):
    """A function (epoch, first batch) -> this rank's batches of that epoch, for files or shards."""
    from clipforge.data.shards import is_shard_source

    workers = config.data.workers
    depth, pin = prefetch_depth(config.data.prefetch, workers, device), device.type == "cuda"
    if not is_shard_source(config.data.train):
        dataset = PairDataset(pairs, training_preprocess(config, model.preprocess), model.tokenizer, train=True,
                              seed=config.seed, caption_split=config.data.caption_split)

        def from_files(epoch: int, start: int):
            dataset.set_epoch(epoch)
            batches = epoch_batches(len(pairs), config.batch_size, config.seed, epoch, info.rank, info.world_size,
                                    start=start)
            loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                                pin_memory=pin)
            yield from prefetch(loader, depth)

        return from_files

    if config.batch_size % info.world_size:
        raise ConfigError(f"batch_size={config.batch_size} must be divisible by the number of processes "
                          f"({info.world_size})")
    per_rank = config.batch_size // info.world_size
    if config.data.caption_split:
        raise ConfigError("data.caption_split applies to CSV and folder data; shards hold one caption per sample")
    stream = ShardDataset(config.data.train, training_preprocess(config, model.preprocess), model.tokenizer,
                          train=True, seed=config.seed,
                          shuffle_buffer=config.data.shuffle_buffer, resampled=config.data.resampled,
                          rank=info.rank, world_size=info.world_size, batch_size=per_rank)

    def from_shards(epoch: int, start: int):
        # An epoch is per_epoch batches (train_samples / batch_size), as open_clip counts it; a
        # stream that ends early starts its next pass.
        stream.set_epoch(epoch, start)
        done, passes = start, 0
        while done < per_epoch:
            got = 0
            loader = DataLoader(stream, batch_size=per_rank, num_workers=workers, collate_fn=collate,
                                pin_memory=pin)
            for batch in prefetch(loader, depth):
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


def training_preprocess(config: Any, preprocess: Any) -> Any:
    """The model's preprocessing with the run's training crop (``data.crop_scale`` / ``crop_ratio``)."""
    import dataclasses

    scale, ratio = config.data.crop_scale, config.data.crop_ratio
    if scale is None and ratio is None:
        return preprocess
    return dataclasses.replace(preprocess, train_crop_scale=tuple(scale or preprocess.train_crop_scale),
                               train_crop_ratio=tuple(ratio or preprocess.train_crop_ratio))


def contrastive_backward(model: CLIP, images: torch.Tensor, tokens: torch.Tensor, loss_fn: LossFn,
                         micro_batch_size: int | None = None, precision: str = "fp32",
                         dist_info: DistInfo | None = None) -> torch.Tensor:
    """Forward and backward of the contrastive loss of one (global) batch, exact at any micro-batch size;
    returns the loss. Under torchrun each rank holds its share of the gradient, to be summed with
    :func:`~clipforge.engine.distributed.reduce_gradients`."""
    from clipforge.engine.accumulate import forward_backward
    from clipforge.engine.context import StepContext

    task = ContrastiveStep(model, loss_fn, dist_info)
    ctx = StepContext(task.dist, images.device, precision, micro_batch_size, {}, task)
    return forward_backward(task, (images, tokens), ctx)["loss"]
