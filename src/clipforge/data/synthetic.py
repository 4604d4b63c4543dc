"""The embedded default dataset: synthetic captioned scenes, deterministic by seed, no download.

Each scene is 1 to 3 objects on a textured background. An object has a shape (8), a colour (8),
a size (small/large) and a position on a 3x3 grid; the caption describes it in one of several
natural phrasings. A fixed set of (shape, colour) combinations -- one per shape and one per
colour -- never appears in training, so zero-shot accuracy on single-object images of those
combinations measures compositional generalisation (the model has seen every shape and every
colour, but never together).

Splits written by :func:`write_dataset`:

* ``train.csv`` -- scenes without held-out combinations; its ``phrasings`` column holds the caption
  and every other phrasing of the scene, separated by `` | `` (``data.caption_split``);
* ``val.csv`` -- scenes from the same distribution, for retrieval recall (the same columns);
* ``zeroshot_seen.csv`` / ``zeroshot_heldout.csv`` -- single-object images with a ``label``
  column (``"red circle"``) of seen / held-out combinations, for zero-shot classification, and the
  object's ``size`` and ``position`` (groups for ``clipforge eval audit``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "ring", "hexagon")
COLOURS = {
    "red": (215, 35, 35), "orange": (245, 135, 15), "yellow": (240, 215, 25), "green": (35, 160, 55),
    "cyan": (25, 195, 210), "blue": (35, 70, 215), "purple": (135, 50, 185), "pink": (245, 115, 185),
}
SIZES = {"small": 0.1, "large": 0.155}  # radius as a fraction of the side; fits a 3x3 cell
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
SPLITS = ("train", "val", "zeroshot_seen", "zeroshot_heldout")


def heldout_combinations() -> list[tuple[str, str]]:
    """(shape, colour) pairs never seen in training: each shape and each colour exactly once."""
    colours = list(COLOURS)
    return [(shape, colours[(3 * i + 1) % len(colours)]) for i, shape in enumerate(SHAPES)]


def class_names() -> list[str]:
    """All 64 (colour, shape) classes as ``"red circle"``, in a fixed order."""
    return [f"{c} {s}" for s in SHAPES for c in COLOURS]


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str

    def phrase(self, with_size: bool) -> str:
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"


@dataclass
class SynthConfig:
    """Sizes of the generated splits.

    Attributes:
        seed: everything generated is a function of the seed and the sample index.
        image_size: side of the square images in pixels.
        n_train, n_val: scenes in the train and validation splits.
        n_zeroshot_per_class: single-object images per (shape, colour) class in the zero-shot splits.
    """

    seed: int = 0
    image_size: int = 64
    n_train: int = 10000
    n_val: int = 1000
    n_zeroshot_per_class: int = 20


def _cell_centre(position: str, size: int, rng: np.random.Generator) -> tuple[float, float]:
    idx = POSITIONS.index(position)
    row, col = divmod(idx, 3)
    jitter = size * 0.04
    return ((col + 0.5) * size / 3 + rng.uniform(-jitter, jitter),
            (row + 0.5) * size / 3 + rng.uniform(-jitter, jitter))


def _polygon(cx: float, cy: float, r: float, n: int, rotation: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(rotation + 2 * math.pi * k / n), cy + r * math.sin(rotation + 2 * math.pi * k / n))
            for k in range(n)]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, size: int, rng: np.random.Generator,
                 outline: bool = False, depth: tuple[ImageDraw.ImageDraw, int] | None = None) -> None:
    """``outline``: the "outline" drawing style (a shift the training data never shows): each shape
    drawn as its contour, the ring as a thin one. ``depth``: a (canvas, value) on which the same
    geometry is drawn with that value (the scene's depth map); the colour image is unchanged."""
    cx, cy = _cell_centre(obj.position, size, rng)
    r = SIZES[obj.size] * size * rng.uniform(0.9, 1.1)
    rgb = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in COLOURS[obj.colour])
    box = (cx - r, cy - r, cx + r, cy + r)
    line = max(1, round(r * 0.22))

    def paint(method: str, shape, fill: bool = True, width: int | None = None) -> None:
        for canvas, value in ((draw, rgb), *([depth] if depth else [])):
            kw = {"outline": value, "width": width if width is not None else line} if (outline or not fill) \
                else {"fill": value}
            getattr(canvas, method)(shape, **kw)

    if obj.shape == "circle":
        paint("ellipse", box)
    elif obj.shape == "ring":
        paint("ellipse", box, fill=False, width=max(1, round(r * 0.12)) if outline else max(2, int(r * 0.4)))
    elif obj.shape == "square":
        paint("polygon", _polygon(cx, cy, r * 1.15, 4, math.pi / 4))
    elif obj.shape == "diamond":
        paint("polygon", _polygon(cx, cy, r * 1.1, 4, 0.0))
    elif obj.shape == "triangle":
        paint("polygon", _polygon(cx, cy + r * 0.15, r * 1.15, 3, -math.pi / 2))
    elif obj.shape == "hexagon":
        paint("polygon", _polygon(cx, cy, r * 1.05, 6, 0.0))
    elif obj.shape == "star":
        pts = []
        for k in range(10):
            rad = r * 1.2 if k % 2 == 0 else r * 0.5
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        paint("polygon", pts)
    elif obj.shape == "cross":
        t = r * 0.38
        if outline:
            pts = [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                   (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                   (cx - r, cy - t), (cx - t, cy - t)]
            paint("polygon", pts)
        else:
            paint("rectangle", (cx - r, cy - t, cx + r, cy + t))
            paint("rectangle", (cx - t, cy - r, cx + t, cy + r))
    else:  # pragma: no cover - SHAPES is fixed
        raise ValueError(obj.shape)


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    """A muted, low-contrast texture: noise, stripes, checks or a gradient."""
    base = rng.uniform(90, 170) + rng.uniform(-20, 20, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:
        tex = rng.normal(0, 12, size=(size, size, 1))
    elif kind == 1:
        period = rng.uniform(4, 12)
        angle = rng.uniform(0, math.pi)
        tex = 14 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)[..., None]
    elif kind == 2:
        cell = int(rng.integers(4, 12))
        tex = 12 * (((xx // cell + yy // cell) % 2) * 2 - 1)[..., None]
    else:
        angle = rng.uniform(0, 2 * math.pi)
        tex = 30 * ((xx * math.cos(angle) + yy * math.sin(angle)) / size - 0.5)[..., None]
    arr = np.clip(base + tex + rng.normal(0, 4, size=(size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption_forms(objs: list[SceneObject], with_size: bool) -> list[str]:
    """Every phrasing the grammar has for the scene ``objs`` (a caption is one of them)."""
    if len(objs) == 1:
        o = objs[0]
        p = o.phrase(with_size)
        where = POSITION_PHRASES[o.position]
        return [f"{_a(p)} {where}", _a(p), f"there is {_a(p)} {where}", f"a picture of {_a(p)}",
                f"{where}, {_a(p)}", f"{_a(p)} on a textured background"]
    phrases = [o.phrase(with_size) for o in objs]
    if len(objs) == 2:
        a, b = objs
        (ar, ac), (br, bc) = divmod(POSITIONS.index(a.position), 3), divmod(POSITIONS.index(b.position), 3)
        forms = [f"{_a(phrases[0])} and {_a(phrases[1])}"]
        if ac != bc:
            rel = "to the left of" if ac < bc else "to the right of"
            forms.append(f"{_a(phrases[0])} {rel} {_a(phrases[1])}")
        if ar != br:
            rel = "above" if ar < br else "below"
            forms.append(f"{_a(phrases[0])} {rel} {_a(phrases[1])}")
        return forms
    return [f"{_a(phrases[0])}, {_a(phrases[1])} and {_a(phrases[2])}"]


PHRASING_SEPARATOR = " | "


def phrasings(objs: list[SceneObject], caption: str) -> list[str]:
    """``caption`` first, then every other true phrasing of the scene the grammar has: objects in any
    order, with and without their sizes (the ``phrasings`` column; ``data.caption_split`` trains on them)."""
    import itertools

    out = {caption: None}
    for order in itertools.permutations(objs):
        for with_size in (True, False):
            out.update(dict.fromkeys(caption_forms(list(order), with_size)))
    return list(out)


def _caption(objs: list[SceneObject], rng: np.random.Generator) -> str:
    forms = caption_forms(objs, with_size=bool(rng.random() < 0.6))
    if len(objs) > 2:
        return forms[0]
    return forms[int(rng.integers(len(forms)))]


def _sample_objects(rng: np.random.Generator, n: int, combos: list[tuple[str, str]]) -> list[SceneObject]:
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    objs = []
    for cell in cells:
        shape, colour = combos[int(rng.integers(len(combos)))]
        objs.append(SceneObject(shape, colour, str(rng.choice(list(SIZES))), POSITIONS[int(cell)]))
    return objs


def _dark_background(size: int, rng: np.random.Generator) -> Image.Image:
    """The "background" shift: dark, high-contrast blotches (smooth noise), a texture the training
    scenes never have."""
    side = max(2, size // 8)
    coarse = rng.normal(0, 1, size=(side, side, 1)) + 0.3 * rng.normal(0, 1, size=(side, side, 3))  # mostly grey
    blotch = np.asarray(Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-8) * 255).astype(np.uint8))
                        .resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    arr = np.clip(rng.uniform(25, 55) + 0.35 * blotch + rng.normal(0, 6, size=(size, size, 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


SHIFTS = ("background", "outline")  # re-rendered variants of the zero-shot splits (eval robustness)


def render(objs: list[SceneObject], size: int, rng: np.random.Generator, shift: str | None = None) -> Image.Image:
    """The scene; ``shift`` (one of :data:`SHIFTS`) draws it on a new background or in a new style."""
    return render_with_depth(objs, size, rng, shift)[0]


def render_with_depth(objs: list[SceneObject], size: int, rng: np.random.Generator, shift: str | None = None,
                      depth_rng: np.random.Generator | None = None) -> tuple[Image.Image, np.ndarray | None]:
    """The scene and, given ``depth_rng``, its depth map in millimetres (uint16 [size, size]): the
    background a tilted plane 3-5 m away, each object a flat cut-out 0.9-2.8 m away, later (drawn
    on top) objects nearer, plus 5 mm of sensor noise. The image is the same with or without it."""
    img = _dark_background(size, rng) if shift == "background" else _background(size, rng)
    draw = ImageDraw.Draw(img)
    depth_img = None
    if depth_rng is not None:
        base, tilt, angle = depth_rng.uniform(3500, 5000), depth_rng.uniform(0, 800), depth_rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size - 0.5
        plane = base + tilt * (xx * math.cos(angle) + yy * math.sin(angle))
        depth_img = Image.fromarray(plane.astype(np.int32), mode="I")
        nearer = sorted(depth_rng.uniform(900, 2800, size=len(objs)), reverse=True)
    depth_draw = ImageDraw.Draw(depth_img) if depth_img is not None else None
    for k, obj in enumerate(objs):
        _draw_object(draw, obj, size, rng, outline=shift == "outline",
                     depth=(depth_draw, int(nearer[k])) if depth_draw is not None else None)
    if depth_img is None:
        return img, None
    assert depth_rng is not None
    depth = np.asarray(depth_img, dtype=np.float64) + depth_rng.normal(0, 5, size=(size, size))
    return img, np.clip(depth, 1, 65535).astype(np.uint16)


def shifted_split(split: str, config: SynthConfig, shift: str) -> Iterator[tuple[Image.Image, str]]:
    """(image, label) of a zero-shot split's objects re-rendered under ``shift`` (same objects,
    labels and order as :func:`generate`; the random draws of positions and textures differ)."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; known: {', '.join(SHIFTS)}")
    if not split.startswith("zeroshot"):
        raise ValueError(f"shifted variants exist for the zero-shot splits, not {split!r}")
    for i, objs in enumerate(scene_objects(split, config)):
        rng = np.random.default_rng([config.seed, SPLITS.index(split), i, 1 + SHIFTS.index(shift)])
        yield render(objs, config.image_size, rng, shift), f"{objs[0].colour} {objs[0].shape}"


def generate(split: str, config: SynthConfig) -> Iterator[tuple[Image.Image, str, str]]:
    """Yield (image, caption, label) for one split; label is "" outside the zero-shot splits."""
    for img, caption, label, _ in generate_with_depth(split, config, depth=False):
        yield img, caption, label


def generate_with_depth(split: str, config: SynthConfig, depth: bool = True
                        ) -> Iterator[tuple[Image.Image, str, str, np.ndarray | None]]:
    """:func:`generate` plus each scene's depth map (see :func:`render_with_depth`), or ``None``."""
    heldout = set(heldout_combinations())
    seen = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in heldout]
    split_id = SPLITS.index(split)

    def depth_rng(i: int) -> np.random.Generator | None:
        return np.random.default_rng([config.seed, split_id, i, 7]) if depth else None

    if split in ("train", "val"):
        n = config.n_train if split == "train" else config.n_val
        for i in range(n):
            rng = np.random.default_rng([config.seed, split_id, i])
            objs = _sample_objects(rng, int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])), seen)
            img, dmap = render_with_depth(objs, config.image_size, rng, depth_rng=depth_rng(i))
            yield img, _caption(objs, rng), "", dmap
        return
    combos = sorted(heldout) if split == "zeroshot_heldout" else seen
    for i in range(config.n_zeroshot_per_class * len(combos)):
        rng = np.random.default_rng([config.seed, split_id, i])
        objs = _sample_objects(rng, 1, [combos[i % len(combos)]])
        img, dmap = render_with_depth(objs, config.image_size, rng, depth_rng=depth_rng(i))
        yield img, _caption(objs, rng), f"{objs[0].colour} {objs[0].shape}", dmap


def scene_objects(split: str, config: SynthConfig) -> list[list[SceneObject]]:
    """The objects of every image of ``split``, as :func:`generate` draws them (no rendering):
    the ground truth a caption of a scene is checked against."""
    heldout = set(heldout_combinations())
    seen = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in heldout]
    split_id = SPLITS.index(split)
    out = []
    if split in ("train", "val"):
        for i in range(config.n_train if split == "train" else config.n_val):
            rng = np.random.default_rng([config.seed, split_id, i])
            out.append(_sample_objects(rng, int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])), seen))
        return out
    combos = sorted(heldout) if split == "zeroshot_heldout" else seen
    for i in range(config.n_zeroshot_per_class * len(combos)):
        rng = np.random.default_rng([config.seed, split_id, i])
        out.append(_sample_objects(rng, 1, [combos[i % len(combos)]]))
    return out


MODALITIES = ("speech", "depth")  # extra files a dataset can carry (clipforge bind)
WORD_VOICES = 4  # spoken clips of each colour and shape word


def write_dataset(out_dir: str | Path, config: SynthConfig | None = None, progress: bool = True,
                  modalities: tuple[str, ...] = ()) -> Path:
    """Write every split as PNG images plus a CSV (``image,caption[,label]``) and ``meta.json``.

    ``modalities``: also ``speech`` (the caption spoken, ``speech/SPLIT/N.wav``, and each colour and
    shape word alone in ``speech_words.csv``) and/or ``depth`` (the scene's depth map in millimetres,
    ``depth/SPLIT/N.png``, 16-bit), each in a CSV column of its name.
    """
    from clipforge.utils.progress import progress_bar

    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        from clipforge.errors import ConfigError

        raise ConfigError(f"unknown modalities {', '.join(sorted(unknown))}; known: {', '.join(MODALITIES)}")
    if "speech" in modalities:
        from clipforge.data.synthetic_speech import require_espeak

        require_espeak()
    config = config or SynthConfig()
    out = Path(out_dir)
    counts = {}
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        if "depth" in modalities:
            (out / "depth" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        single = split.startswith("zeroshot")
        objects = scene_objects(split, config)
        with progress_bar(f"synth {split}", total=_split_size(split, config), enabled=progress) as bar:
            for i, (img, caption, label, dmap) in enumerate(generate_with_depth(split, config, "depth" in modalities)):
                rel = f"images/{split}/{i:06d}.png"
                img.save(out / rel, optimize=False, compress_level=1)
                rows.append({"image": rel, "caption": caption, "label": label})
                if dmap is not None:
                    rows[-1]["depth"] = f"depth/{split}/{i:06d}.png"
                    Image.fromarray(dmap).save(out / rows[-1]["depth"], compress_level=1)
                if single:  # the object's other attributes: groups for analyses (eval audit --group-column)
                    rows[-1].update(size=objects[i][0].size, position=objects[i][0].position)
                else:
                    rows[-1]["phrasings"] = PHRASING_SEPARATOR.join(phrasings(objects[i], caption))
                bar.advance()
        if "speech" in modalities:
            _write_speech(out, split, rows, config.seed, progress)
        fields = (["image", "caption", "label", "size", "position"] if single
                  else ["image", "caption", "phrasings"]) + \
            [m for m in MODALITIES if m in modalities]
        tmp = out / f".{split}.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(out / f"{split}.csv")
        counts[split] = len(rows)
    if "speech" in modalities:
        _write_words(out, config.seed)
    meta = {
        "dataset": "clipforge-synthetic-scenes",
        "config": asdict(config),
        "shapes": list(SHAPES),
        "colours": list(COLOURS),
        "heldout_combinations": [f"{c} {s}" for s, c in heldout_combinations()],
        "classes": class_names(),
        "counts": counts,
        "modalities": [m for m in MODALITIES if m in modalities],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def _write_speech(out: Path, split: str, rows: list[dict], seed: int, progress: bool) -> None:
    from clipforge.data.synthetic_speech import write_clips
    from clipforge.utils.progress import progress_bar

    split_id = SPLITS.index(split)
    for i, row in enumerate(rows):
        row["speech"] = f"speech/{split}/{i:06d}.wav"
    with progress_bar(f"speech {split}", total=len(rows), enabled=progress) as bar:
        write_clips([r["caption"] for r in rows], [out / r["speech"] for r in rows],
                    [[seed, split_id, i, 11] for i in range(len(rows))], progress=bar)


def _write_words(out: Path, seed: int) -> None:
    """Each colour and shape word spoken alone by :data:`WORD_VOICES` voices: ``speech_words.csv``
    (word, kind, speech)."""
    from clipforge.data.synthetic_speech import write_clips

    rows = [{"word": w, "kind": kind, "speech": f"speech/words/{w}_{k}.wav"}
            for kind, words in (("colour", list(COLOURS)), ("shape", list(SHAPES))) for w in words
            for k in range(WORD_VOICES)]
    from clipforge.io import atomic_file

    write_clips([r["word"] for r in rows], [out / r["speech"] for r in rows],
                [[seed, 99, i, 11] for i in range(len(rows))])
    with atomic_file(out / "speech_words.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["word", "kind", "speech"])
        writer.writeheader()
        writer.writerows(rows)


def _split_size(split: str, config: SynthConfig) -> int:
    if split == "train":
        return config.n_train
    if split == "val":
        return config.n_val
    n_heldout = len(heldout_combinations())
    combos = n_heldout if split == "zeroshot_heldout" else len(SHAPES) * len(COLOURS) - n_heldout
    return combos * config.n_zeroshot_per_class
