"""The evaluation prompts of the synthetic scenes: one per (colour, shape) combination, "a {size}
{colour} {shape} {where}" with a size and position fixed per combination, split into combinations
seen in training and held-out ones, each with its attribute targets."""

from __future__ import annotations

from typing import Any

import numpy as np

from clipforge.data.synthetic import COLOURS, POSITION_PHRASES, POSITIONS, SHAPES, SIZES, heldout_combinations
from clipforge.evaluation.scene_attributes import HEADS


def scene_prompt(size: str, colour: str, shape: str, position: str) -> dict[str, Any]:
    """A prompt's text ("a large red circle in the top left") and its attribute targets (indices)."""
    text = f"{'an' if size[0] in 'aeiou' else 'a'} {size} {colour} {shape} {POSITION_PHRASES[position]}"
    return {"prompt": text, "target": {"colour": HEADS["colour"].index(colour), "shape": HEADS["shape"].index(shape),
                                       "size": HEADS["size"].index(size),
                                       "position": HEADS["position"].index(position)}}


def scene_prompts(seed: int = 0) -> list[dict[str, Any]]:
    """One prompt per (colour, shape): its text, split and attribute targets."""
    rng = np.random.default_rng(seed)
    held = set(heldout_combinations())
    out = []
    for shape in SHAPES:
        for colour in COLOURS:
            size = str(rng.choice(list(SIZES)))
            position = POSITIONS[int(rng.integers(len(POSITIONS)))]
            out.append({**scene_prompt(size, colour, shape, position),
                        "split": "heldout" if (shape, colour) in held else "seen"})
    return out
