"""Text cleaning shared by the tokenizers (as OpenAI's CLIP and open_clip clean)."""

from __future__ import annotations

import html

import ftfy
import regex as re

_WS = re.compile(r"\s+")


def basic_clean(text: str) -> str:
    """Fix mojibake with ftfy and unescape HTML entities (twice: captions are often double-escaped)."""
    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def whitespace_clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def clean_lower(text: str) -> str:
    return whitespace_clean(basic_clean(text)).lower()
