"""Typographic attacks: the name of a wrong class written onto the image (Goh et al. 2021,
"Multimodal neurons"; Radford et al. 2021 on CLIP reading text in images).

Each image gets the name of a class other than its own, drawn with a configurable font, size,
position and opacity; the zero-shot accuracy drop and the attack success rate (the prediction
becomes the written class) are measured. A control draws a nonsense word of the same length at the
same place, so that what the text *says* is separated from what it *hides*: a model that does not
read loses as much accuracy to the control as to the attack, and its "success" stays at the
control's rate (how often the prediction lands on that class anyway).
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, ImageDraw, ImageFont

from clipforge.errors import ConfigError

Position = Literal["centre", "top", "bottom", "random"]


@dataclass(frozen=True)
class TextStyle:
    """How the text is drawn. ``size``: text height as a fraction of the image's shorter side."""

    font: str = "DejaVuSans-Bold"  # a .ttf/.otf path or a font file name found under the system's font folders
    size: float = 0.22
    position: Position = "centre"
    opacity: float = 1.0
    colour: str = "white"
    outline: str = "black"  # a thin outline keeps the text legible on any background ("" for none)

    def __post_init__(self) -> None:
        if not 0 < self.size <= 1:
            raise ConfigError(f"text size is a fraction of the image side, in (0, 1]; got {self.size}")
        if not 0 <= self.opacity <= 1:
            raise ConfigError(f"opacity must be in [0, 1], got {self.opacity}")
        if self.position not in ("centre", "top", "bottom", "random"):
            raise ConfigError(f"position must be centre, top, bottom or random; got {self.position!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_font(name: str, pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A system font by name or path (:mod:`clipforge.images.fonts`); a missing font file is a
    ConfigError, an unknown name falls back to Pillow's own font."""
    from clipforge.images.fonts import load_font as load

    try:
        return load(name, pixels)
    except FileNotFoundError:
        raise ConfigError(f"font {name}: file not found") from None


def render_text(image: Image.Image, text: str, style: TextStyle = TextStyle(),
                rng: random.Random | None = None) -> Image.Image:
    """``image`` with ``text`` drawn on it (a new RGB image). The font shrinks until the text fits
    in 95% of the width, but not below 6 px (smaller is illegible): on a small image a long name
    runs past the edges. ``random`` positions come from ``rng``."""
    img = image.convert("RGB")
    w, h = img.size
    px = max(6, round(style.size * min(w, h)))
    stroke = max(1, px // 12) if style.outline else 0
    while True:
        font = load_font(style.font, px)
        left, top, right, bottom = ImageDraw.Draw(img).textbbox((0, 0), text, font=font, stroke_width=stroke)
        if right - left <= 0.95 * w or px <= 6:
            break
        px = max(6, int(px * 0.9))
    tw, th = right - left, bottom - top
    x = (w - tw) / 2
    if style.position == "centre":
        y = (h - th) / 2
    elif style.position == "top":
        y = 0.04 * h
    elif style.position == "bottom":
        y = h - th - 0.04 * h
    else:
        rng = rng or random.Random(0)
        x, y = rng.uniform(0, max(0, w - tw)), rng.uniform(0, max(0, h - th))
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((x - left, y - top), text, font=font, fill=style.colour,
                               stroke_width=stroke, stroke_fill=style.outline or None)
    if style.opacity < 1:
        alpha = layer.getchannel("A").point(lambda a: round(a * style.opacity))
        layer.putalpha(alpha)
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def nonsense_word(length: int, rng: random.Random, avoid: Sequence[str] = ()) -> str:
    """Lowercase letters of ``length`` (at least 3) that spell none of ``avoid``."""
    taken = {a.lower() for a in avoid}
    while True:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(max(3, length)))
        if word not in taken:
            return word


def attack_plan(targets: Sequence[int], classes: Sequence[str], seed: int = 0) -> list[tuple[int, str]]:
    """Per image: the wrong class written on it (uniform over the others) and the control word."""
    if len(classes) < 2:
        raise ConfigError("a typographic attack needs at least two classes")
    rng = random.Random(seed)
    plan = []
    for t in targets:
        wrong = rng.choice([c for c in range(len(classes)) if c != t])
        plan.append((wrong, nonsense_word(len(classes[wrong]), rng, classes)))
    return plan


def attack_metrics(pred_clean: torch.Tensor, pred_attack: torch.Tensor, pred_control: torch.Tensor,
                   targets: torch.Tensor, written: torch.Tensor) -> dict[str, float]:
    """Accuracies with no text, the class name and the nonsense word; the attack's success (prediction
    = the written class) over all images and over the images it got right without text; the
    control's rate of landing on that same class."""
    right = pred_clean == targets
    rate = lambda m: float(m.float().mean()) if len(m) else 0.0  # noqa: E731
    return {
        "acc1_clean": rate(right), "acc1_attacked": rate(pred_attack == targets),
        "acc1_control": rate(pred_control == targets),
        "drop": rate(right) - rate(pred_attack == targets),
        "drop_control": rate(right) - rate(pred_control == targets),
        "attack_success": rate(pred_attack == written),
        "attack_success_on_correct": rate((pred_attack == written)[right]),
        "control_success": rate(pred_control == written),
    }


@torch.no_grad()
def typographic_attack(model: Any, images: Sequence[str], targets: Sequence[int], classes: Sequence[str],
                       templates: Sequence[str] | Sequence[Sequence[str]], style: TextStyle = TextStyle(),
                       seed: int = 0, batch_size: int = 64, keep: int = 16,
                       progress: bool = False) -> dict[str, Any]:
    """Zero-shot predictions on each readable image as it is, with a wrong class's name written on it,
    and with a nonsense word instead. Returns ``metrics`` (:func:`attack_metrics`, plus ``n_images``),
    ``skipped`` (unreadable files, counted and left out) and ``examples``: the first ``keep``
    (clean, attacked, control) PIL images with their labels and predictions."""
    from clipforge.evaluation.embed import embed_pil
    from clipforge.evaluation.zero_shot import zero_shot_classifier
    from clipforge.images.decode import open_image
    from clipforge.utils.progress import progress_bar

    weights = zero_shot_classifier(model, classes, templates)
    plan = attack_plan(targets, classes, seed)
    rng = random.Random(seed + 1)

    def predict(pil: list[Image.Image]) -> torch.Tensor:
        return (embed_pil(model, pil, batch_size) @ weights.T).argmax(1)

    preds: dict[str, list[torch.Tensor]] = {"clean": [], "attack": [], "control": []}
    kept_targets, written, skipped, examples = [], [], [], []
    with progress_bar("typographic attack", total=len(images), enabled=progress) as bar:
        for start in range(0, len(images), batch_size):
            views: dict[str, list[Image.Image]] = {"clean": [], "attack": [], "control": []}
            for i in range(start, min(start + batch_size, len(images))):
                try:
                    img = open_image(images[i])
                except Exception as e:  # a bad file is counted and left out, never the end of the run
                    skipped.append(f"{images[i]}: {str(e).splitlines()[0][:120]}")
                    continue
                wrong, word = plan[i]
                state = rng.getstate()  # the attack and its control at the same random position
                views["clean"].append(img)
                views["attack"].append(render_text(img, classes[wrong], style, rng))
                rng.setstate(state)
                views["control"].append(render_text(img, word, style, rng))
                kept_targets.append(int(targets[i]))
                written.append(wrong)
                if len(examples) < keep:
                    examples.append({"image": images[i], "label": classes[int(targets[i])], "written": classes[wrong],
                                     "control_word": word, "pil": (img, views["attack"][-1], views["control"][-1])})
            if views["clean"]:
                for k in preds:
                    preds[k].append(predict(views[k]))
            bar.advance(min(batch_size, len(images) - start))
    if not kept_targets:
        from clipforge.errors import DataError

        example = f" (e.g. {skipped[0]})" if skipped else ""
        raise DataError(f"none of the {len(images)} images could be read{example}")
    p = {k: torch.cat(v) for k, v in preds.items()}
    t, w = torch.tensor(kept_targets), torch.tensor(written)
    metrics = attack_metrics(p["clean"], p["attack"], p["control"], t, w)
    metrics["n_images"] = len(t)
    for i, e in enumerate(examples):
        e["pred"] = [classes[int(p[k][i])] for k in ("clean", "attack", "control")]
    return {"metrics": metrics, "skipped": skipped, "examples": examples}


def attack_report(result: dict[str, Any], out_dir: str | Path, title: str) -> dict[str, Path]:
    """``typographic.png`` (accuracy and success bars), ``typographic.md`` and ``typographic.html``
    (the metrics and the examples: image, with the class name, with the nonsense word, and what the
    model predicted for each), and the attacked examples as PNGs under ``attacked/``."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipforge.io import atomic_write_text
    from clipforge.report.html import Raw, page, pil_tag, table

    out = Path(out_dir)
    (out / "attacked").mkdir(parents=True, exist_ok=True)
    m = result["metrics"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.4))
    acc = [100 * m[k] for k in ("acc1_clean", "acc1_control", "acc1_attacked")]
    a.bar(["no text", "nonsense\nword", "wrong class\nname"], acc, color=["#8ab", "#bbb", "#c55"])
    a.set(ylabel="zero-shot acc1 (%)", ylim=(0, 100), title="accuracy")
    succ = [100 * m["control_success"], 100 * m["attack_success"]]
    b.bar(["nonsense\nword", "wrong class\nname"], succ, color=["#bbb", "#c55"])
    b.set(ylabel="prediction = the written class (%)", ylim=(0, 100), title="attack success")
    for ax, vals in ((a, acc), (b, succ)):
        for i, v in enumerate(vals):
            ax.text(i, v + 1, f"{v:.1f}", ha="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out / "typographic.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    rows = [["no text", pct(m["acc1_clean"]), "-", "-"],
            ["nonsense word (control)", pct(m["acc1_control"]), f"{-100 * m['drop_control']:+.1f}",
             pct(m["control_success"])],
            ["wrong class name (attack)", pct(m["acc1_attacked"]), f"{-100 * m['drop']:+.1f}",
             pct(m["attack_success"])]]
    headers = ["text on the image", "acc1 %", "change (points)", "prediction = written class %"]
    md = [f"# Typographic attack: {title}", "", f"{m['n_images']} images. Attack success on the images the model "
          f"got right without text: {pct(m['attack_success_on_correct'])}%.", "",
          "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    atomic_write_text("\n".join(md) + "\n", out / "typographic.md")
    example_rows = []
    for i, e in enumerate(result["examples"]):
        clean, attacked, control = e["pil"]
        attacked.save(out / "attacked" / f"{i:03d}.png")
        example_rows.append([e["label"], *(Raw(f"{pil_tag(im.resize((96, 96)), e['label'])}<br>{html.escape(pred)}")
                                           for im, pred in zip((clean, attacked, control), e["pred"]))])
    with Image.open(out / "typographic.png") as plot:
        plot_tag = pil_tag(plot.copy(), "accuracy and attack success")
    body = (plot_tag
            + table(headers, rows)
            + "<h2>Examples (predictions under each image)</h2>"
            + table(["true class", "no text", "wrong class written", "nonsense word"], example_rows))
    atomic_write_text(page(f"Typographic attack: {title}", body), out / "typographic.html")
    return {"plot": out / "typographic.png", "markdown": out / "typographic.md", "html": out / "typographic.html"}
