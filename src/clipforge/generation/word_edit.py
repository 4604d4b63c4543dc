"""Word edits: does changing one word of the prompt change that attribute and keep the rest?

ControlGAN's claim (Li et al. 2019): with the latent fixed, editing the colour word (or the shape
word) of a prompt changes the drawn colour (or shape) and leaves the other attributes as they were.
For each of the 64 evaluation prompts (:func:`~clipforge.generation.prompts.scene_prompts`) and
each latent, the colour is replaced by the next colour of the synthetic palette, or the shape by the
next shape; original and edited images are drawn from the same latent, and the attribute reader
(a classifier trained on real scenes, never the generator's CLIP) reads both. Reported per edited
attribute: how often the edit is drawn (``changed``), how often the original value was drawn
before it (``before``), how often each other attribute still matches the prompt (``kept``) and
agrees with what the original image showed (``consistent``). Any generator with a latent works
(a GAN's z, ControlGAN's z, a DDPM's x_T under deterministic DDIM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipforge.evaluation.scene_attributes import HEADS, read_attributes
from clipforge.generation.prompts import scene_prompt, scene_prompts


def edited_prompts(attribute: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(original, edited) prompt pairs: ``attribute`` (colour or shape) moved to the next value."""
    values = HEADS[attribute]
    pairs = []
    for p in scene_prompts():
        names = {k: HEADS[k][i] for k, i in p["target"].items()}
        edited = dict(names, **{attribute: values[(values.index(names[attribute]) + 1) % len(values)]})
        pairs.append((p, scene_prompt(**edited)))
    return pairs


@torch.no_grad()
def word_edits(model: Any, classifier: Any, n: int = 2, seed: int = 0, steps: int = 50,
               guidance: float = 3.0) -> dict[str, dict[str, float]]:
    """For ``colour`` and ``shape`` edits: ``changed``, ``before``, ``kept`` and ``consistent`` (see
    the module docstring), over 64 prompts x ``n`` latents."""
    from clipforge.generation.diffusion import to_uint8

    def draw(z: torch.Tensor, prompt: str) -> torch.Tensor:  # quantised as saved images are
        image = model.render(z, model.condition([prompt]), steps=steps, guidance=guidance)
        return to_uint8(image).cpu().float() / 127.5 - 1

    g = torch.Generator().manual_seed(seed)
    prompts = scene_prompts()
    latents = [model.draw_latents(n, g) for _ in prompts]
    read_before = read_attributes(classifier, torch.cat([draw(z, p["prompt"]) for z, p in zip(latents, prompts)]))
    target_before = {k: torch.tensor([p["target"][k] for p in prompts]).repeat_interleave(n) for k in HEADS}
    out = {}
    for attribute in ("colour", "shape"):
        pairs = edited_prompts(attribute)
        read_after = read_attributes(classifier, torch.cat([draw(z, q["prompt"]) for z, (_, q) in zip(latents, pairs)]))
        target_after = {k: torch.tensor([q["target"][k] for _, q in pairs]).repeat_interleave(n) for k in HEADS}
        others = [k for k in HEADS if k != attribute]
        out[attribute] = {
            "changed": float((read_after[attribute] == target_after[attribute]).float().mean()),
            "before": float((read_before[attribute] == target_before[attribute]).float().mean()),
            "kept": float(torch.stack([(read_after[k] == target_after[k]).float() for k in others]).mean()),
            "consistent": float(torch.stack([(read_after[k] == read_before[k]).float() for k in others]).mean()),
            "n_images": len(read_after[attribute]),
        }
    return out


def word_edit_classifier(data_dir: str | Path, size: int) -> Any:
    """The attribute reader ``eval generation`` uses (cached beside the data)."""
    from clipforge.evaluation.scene_attributes import VERSION, train_attribute_classifier

    data_dir = Path(data_dir)
    return train_attribute_classifier(data_dir, size,
                                      cache=data_dir / f".attribute_classifier_v{VERSION}_{size}px.safetensors")
