"""Generated token ids back to text, for any decoder (captioners, a CoCa, a bound model's decoder re-use)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def ids_to_text(tokenizer: Any, ids: Sequence[int], start: int, end: int, pad: int = 0) -> str:
    """The text of one row of generated ids: after the start token, up to the end token."""
    out = []
    for i in list(ids)[1:] if ids and ids[0] == start else list(ids):
        if i == end:
            break
        if i not in (pad, start):
            out.append(int(i))
    return tokenizer.decode(out).strip()
