"""A clipforge diffusion generator as a diffusers folder, and back.

The denoiser has diffusers' ``UNet2DModel`` layout (class embedding ``identity``), so its weights go
unchanged to ``unet/`` (``config.json``, ``diffusion_pytorch_model.safetensors``); the schedule goes
to ``scheduler/scheduler_config.json`` as a ``DDIMScheduler`` (the same betas; a
``DDPMScheduler`` reads the same file). What diffusers has no place for, the projection of the CLIP
embedding into the timestep embedding and which CLIP it reads, goes to
``clipforge_condition.safetensors`` and ``clipforge.json``. In diffusers::

    unet = UNet2DModel.from_pretrained(folder, subfolder="unet")
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    class_labels = condition @ W.T + b   # W, b from clipforge_condition.safetensors ("weight", "bias");
                                         # condition: the unit CLIP embedding (zeros: unconditional)
    out = unet(x, t, class_labels=class_labels).sample   # eps, or v (the scheduler's prediction_type)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipforge.checkpoints.state_dict import atomic_save_safetensors, read_state_dict
from clipforge.errors import CheckpointError
from clipforge.generation.diffusion import CLIPDiffusion, DiffusionConfig
from clipforge.generation.schedule import ScheduleConfig
from clipforge.generation.unet import UNetConfig
from clipforge.io import atomic_write_text


def export_diffusers(model: CLIPDiffusion, out_dir: str | Path) -> Path:
    """Write ``model`` (a CLIPDiffusion, or an unCLIP's decoder) as a diffusers folder."""
    out = Path(out_dir)
    cfg = model.config
    (out / "unet").mkdir(parents=True, exist_ok=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(cfg.unet.diffusers_config(cfg.image_size), indent=2), out / "unet" / "config.json")
    atomic_save_safetensors(model.unet.state_dict(), out / "unet" / "diffusion_pytorch_model.safetensors",
                            metadata={"format": "pt"})
    atomic_write_text(json.dumps({"_class_name": "DDIMScheduler", **cfg.schedule.diffusers_config()}, indent=2),
                      out / "scheduler" / "scheduler_config.json")
    if model.cond_proj is not None:
        atomic_save_safetensors(model.cond_proj.state_dict(), out / "clipforge_condition.safetensors")
    extra = {k: v for k, v in cfg.to_dict().items() if k not in ("unet", "schedule")}
    atomic_write_text(json.dumps({"format": "clipforge-diffusers", **extra}, indent=2), out / "clipforge.json")
    return out


def load_diffusers(folder: str | Path) -> CLIPDiffusion:
    """A diffusers folder (``unet/`` of a ``UNet2DModel`` with an identity class embedding,
    ``scheduler/``, and clipforge's ``clipforge.json``) as a CLIPDiffusion."""
    folder = Path(folder)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder}: not a diffusers folder with unet/ and scheduler/ ({e})") from None
    extra: dict[str, Any] = json.loads((folder / "clipforge.json").read_text()) \
        if (folder / "clipforge.json").is_file() else {"condition": "none"}
    extra.pop("format", None)
    _check(unet, folder)
    n = len(unet["block_out_channels"])
    config = DiffusionConfig(
        unet=UNetConfig(in_channels=unet.get("in_channels", 3), channels=tuple(unet["block_out_channels"]),
                        layers_per_block=unet.get("layers_per_block", 2),
                        attention_levels=tuple(i for i, b in enumerate(unet["down_block_types"]) if "Attn" in b),
                        norm_groups=unet.get("norm_num_groups", 32), head_dim=unet.get("attention_head_dim", 8),
                        mid_attention=unet.get("add_attention", True)),
        schedule=ScheduleConfig(timesteps=sched.get("num_train_timesteps", 1000),
                                beta_start=sched.get("beta_start", 1e-4), beta_end=sched.get("beta_end", 0.02),
                                kind="cosine" if sched.get("beta_schedule") == "squaredcos_cap_v2" else "linear",
                                clip_sample=sched.get("clip_sample", True),
                                prediction=_prediction(sched, folder)),
        **{"image_size": unet.get("sample_size", 2 ** n * 4), **extra})
    model = CLIPDiffusion(config)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    from clipforge.checkpoints.state_dict import load_strict

    load_strict(model.unet, read_state_dict(weights), str(weights))
    if model.cond_proj is not None:
        cond = folder / "clipforge_condition.safetensors"
        load_strict(model.cond_proj, read_state_dict(cond), str(cond))
    return model


def _prediction(sched: dict[str, Any], folder: Path) -> str:
    kind = sched.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        raise CheckpointError(f"{folder}/scheduler: prediction_type={kind!r}; clipforge reads epsilon or v_prediction")
    return "epsilon" if kind == "epsilon" else "v"


def _check(unet: dict[str, Any], folder: Path) -> None:
    """Only the UNet2DModel variants this denoiser reproduces."""
    fixed = {"act_fn": "silu", "time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 0,
             "resnet_time_scale_shift": "default", "center_input_sample": False, "downsample_type": "conv",
             "upsample_type": "conv", "mid_block_scale_factor": 1}
    bad = [f"{k}={unet[k]!r}" for k, v in fixed.items() if k in unet and unet[k] != v]
    if unet.get("class_embed_type") not in (None, "identity"):
        bad.append(f"class_embed_type={unet['class_embed_type']!r}")
    blocks = set(unet.get("down_block_types", [])) | set(unet.get("up_block_types", []))
    bad += [b for b in blocks - {"DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"}]
    if bad:
        raise CheckpointError(f"{folder}/unet: a UNet2DModel clipforge does not reproduce ({', '.join(bad)})")
