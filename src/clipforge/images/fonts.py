"""System fonts by name (Debian's DejaVu and Liberation live under /usr/share/fonts)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts"))


@lru_cache(maxsize=1)
def system_fonts() -> dict[str, str]:
    """Lower-case file stem -> path of every .ttf/.otf under the system's font folders."""
    found: dict[str, str] = {}
    for root in FONT_DIRS:
        base = Path(root)
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.suffix.lower() in (".ttf", ".otf"):
                    found.setdefault(p.stem.lower(), str(p))
    return found


def font_file(name: str) -> str | None:
    """``name`` as a path, else the system font whose file stem is ``name`` (``DejaVuSans-Bold``)."""
    if Path(name).is_file():
        return name
    return system_fonts().get(Path(name).stem.lower())


def load_font(name: str, pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """``name`` at ``pixels`` high; Pillow's built-in font (it scales too) when no file is found.
    A name that is a .ttf/.otf path that does not exist raises FileNotFoundError."""
    path = font_file(name)
    if path is None:
        if Path(name).suffix.lower() in (".ttf", ".otf"):
            raise FileNotFoundError(name)
        return ImageFont.load_default(size=pixels)
    return ImageFont.truetype(path, pixels)
