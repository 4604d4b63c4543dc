"""Shared test helpers: tiny models and tiny datasets."""

from __future__ import annotations

from pathlib import Path

from clipforge.data.synthetic import SynthConfig, write_dataset
from clipforge.models import CLIPConfig, TextConfig, ViTConfig


def micro_config(vocab: int = 300, context: int = 16) -> CLIPConfig:
    """A CLIP small enough for gradient checks: 2-layer towers, width 32."""
    return CLIPConfig(
        embed_dim=16,
        vision=ViTConfig(image_size=16, patch_size=8, width=32, layers=2, head_width=16),
        text=TextConfig(context_length=context, vocab_size=vocab, width=32, heads=2, layers=2),
        activation="gelu",
    )


def tiny_synth(root: Path, n_train: int = 96, n_val: int = 24) -> Path:
    return write_dataset(root, SynthConfig(seed=1, image_size=32, n_train=n_train, n_val=n_val,
                                           n_zeroshot_per_class=1), progress=False)


def tiny_train_config(data: Path, out: Path, **extra) -> dict:
    cfg = {
        "data": {"train": str(data / "train.csv")},
        "model": {"name": "tiny-vit-32", "tokenizer": "train", "vocab_size": 300, "context_length": 16,
                  "overrides": {"vision": {"width": 32, "layers": 1, "head_width": 16, "patch_size": 8},
                                "text": {"width": 32, "layers": 1, "heads": 2}, "embed_dim": 16}},
        "optim": {"warmup_steps": 2, "lr": 1e-3},
        "epochs": 2, "batch_size": 16, "out_dir": str(out), "eval_every_epochs": 0, "tensorboard": False,
        "log_every_steps": 1, "threads": 1,
    }
    for k, v in extra.items():
        cfg[k] = v
    return cfg
