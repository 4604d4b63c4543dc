"""Training DALL-E and DALL-E mini (:mod:`~clipforge.generation.dalle`,
:mod:`~clipforge.generation.dalle_mini`) as tasks of the engine.

The image tokenizer named by ``tokenizer=`` (trained first, frozen) turns every training image into
its grid of ids once; a BPE is learned from the captions. A step is then the transformer's
cross-entropy on a batch of (caption ids, image ids) rows. The tokenizer's weights are copied into
the model, so its folder is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipforge.engine import distributed as D
from clipforge.errors import ConfigError
from clipforge.generation.caption_tokens import caption_ids, train_caption_tokenizer
from clipforge.generation.config import GenerationTrainConfig
from clipforge.generation.dalle import DALLE, DALLEConfig
from clipforge.generation.dalle_mini import DALLEMini, DALLEMiniConfig
from clipforge.generation.image_tokenizer import ImageTokenizer
from clipforge.generation.rows_task import RowsTask, engine_config, fit_rows


class TokenTransformerTask(RowsTask):
    def training_step(self, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        with ctx.autocast():
            return self.model.loss(batch["text"], batch["image"])


def load_image_tokenizer(path: str, image_size: int, device: torch.device) -> ImageTokenizer:
    """The tokenizer folder ``path``, checked to be one and to draw ``image_size`` images."""
    from clipforge.checkpoints import load

    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"tokenizer={path}: not a model folder (train one with generate train --method dvae|vqvae)")
    tok = load(path)
    if not isinstance(tok, ImageTokenizer):
        raise ConfigError(f"tokenizer={path}: a {getattr(tok, 'arch', type(tok).__name__)}, not an image tokenizer "
                          "(dvae or vqvae)")
    if tok.config.image_size != image_size:
        raise ConfigError(f"tokenizer={path}: it was trained at {tok.config.image_size} px, the generator draws "
                          f"{image_size} px (set image_size={tok.config.image_size})")
    return tok.to(device).eval()


@torch.no_grad()
def tokenize_images(tokenizer: ImageTokenizer, images: torch.Tensor, device: torch.device,
                    batch_size: int = 256) -> torch.Tensor:
    """Image ids [N, g^2] of uint8 ``images``."""
    out = [tokenizer.encode(images[i:i + batch_size].to(device).float() / 127.5 - 1).flatten(1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def train_transformer(cfg: GenerationTrainConfig, clip: Any, images: torch.Tensor, captions: list[str],
                      link: dict, info: D.DistInfo, device: torch.device, resume: str | None,
                      progress: bool) -> DALLE | DALLEMini:
    """Train ``dalle`` or ``dalle-mini`` on uint8 ``images`` and ``captions``; saved to ``OUT_DIR/model``."""

    tok = load_image_tokenizer(cfg.tokenizer, cfg.image_size, device)
    image_ids = tokenize_images(tok, images, device)
    text_tok = train_caption_tokenizer(captions, cfg.text_vocab, cfg.text_length)
    text_ids, _ = caption_ids(text_tok, captions)
    o = cfg.transformer
    shared = {"image_size": cfg.image_size, "vocab_size": text_tok.vocab_size, "text_length": cfg.text_length,
              "width": o.width, "heads": o.heads, "tokenizer_arch": tok.arch, "tokenizer_config": tok.config.to_dict(),
              "tokenizer_path": str(Path(cfg.tokenizer).resolve()),
              **link}
    if cfg.method == "dalle":
        model: DALLE | DALLEMini = DALLE(DALLEConfig(**shared, layers=o.layers, attention=o.attention,
                                                     text_loss_weight=o.text_loss_weight))
    else:
        model = DALLEMini(DALLEMiniConfig(**shared, encoder_layers=o.encoder_layers, decoder_layers=o.layers))
    model.image_tokenizer.load_state_dict(tok.state_dict())
    model.tokenizer = text_tok
    model.to(device)
    D.broadcast_parameters(model, info)
    rows = {"text": text_ids, "image": image_ids, "row": torch.arange(len(images))}
    task = TokenTransformerTask(model, rows, cfg, info, device, cfg.ema)

    fit_rows(task, model, engine_config(cfg, Path(cfg.out_dir), cfg.epochs, cfg.minutes, f"generate {cfg.method}",
                                        grad_clip=1.0), info, device, resume, progress)
    model.attach_clip(clip)
    return model
