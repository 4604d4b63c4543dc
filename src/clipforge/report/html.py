"""Building blocks for self-contained HTML reports: figures and images inlined as base64."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 0.25em 0.7em; border: 1px solid #ddd; }
th { background: #f4f4f4; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
.card { font-size: 0.8em; text-align: center; width: 96px; }
.card img { width: 96px; height: 96px; image-rendering: pixelated; }
.hit { outline: 3px solid #2a2; } .miss { outline: 3px solid #ccc; } .muted { color: #777; }
img.figure { max-width: 100%; height: auto; }
.headline { font-size: 1.1em; background: #f7f7f2; padding: 0.6em 1em; border-left: 4px solid #884; }
"""


def figure_tag(fig: plt.Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="figure" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def image_tag(path: str | Path, alt: str = "", css: str = "", size: int = 96) -> str:
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    cls = f' class="{css}"' if css else ""
    return (f'<img{cls} alt="{html.escape(alt)}" title="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')


def pil_tag(img: Image.Image, alt: str = "", css: str = "") -> str:
    """An image held in memory (a generated grid), inlined at its own size."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    cls = f' class="{css}"' if css else ""
    return (f'<img{cls} alt="{html.escape(alt)}" title="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')


class Raw(str):
    """A table cell that is already HTML (an image tag): written as it is, not escaped."""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(c: object) -> str:
    if isinstance(c, Raw):
        return f"<td>{c}</td>"
    if isinstance(c, float):
        return f'<td class="num">{c:.3f}</td>'
    if isinstance(c, int):
        return f'<td class="num">{c}</td>'
    return f"<td>{html.escape(str(c))}</td>"


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
