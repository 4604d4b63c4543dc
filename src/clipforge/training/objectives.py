"""Which objective learns fastest: the CLIP paper's Figure 2 on a user's data.

Radford et al. (2021, section 2.3, Figure 2) trained the same image encoder with three objectives
and plotted zero-shot ImageNet accuracy against images processed: predicting the caption with a
transformer (slowest), predicting its bag of words (3x faster), and the contrastive objective
(4x faster again). :func:`compare_objectives` reruns that comparison: each objective is a
``clipforge train`` run on the same pairs, the same image tower, batch, optimiser and schedule, for
the same minutes of training (evaluation pauses the clock), evaluated zero-shot on the same images
every ``eval_every_steps`` steps:

* ``contrastive``: the CLIP loss; classes scored by cosine to the prompt embeddings;
* ``bag_of_words``: the image tower predicts the caption's bag of words
  (:mod:`clipforge.models.bag_of_words`); classes scored by their prompts' bag likelihood;
* ``caption``: a CoCa with contrastive weight 0, i.e. a transformer captioner over the image
  tower's tokens; classes scored by their prompts' teacher-forced likelihood.

With a CoCa model config (the default, ``coca-tiny``) the three share the image tower exactly (a
ViT and its attentional pooler): the contrastive run is the CoCa with captioning weight 0 and the
bag-of-words run uses that tower with a linear head. The efficiency ratio of two objectives is
how many more images the slower one needs to reach the accuracy both reach (the lower of their best
accuracies), read off the best-so-far curves by linear interpolation.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipforge.config import build_config, opt
from clipforge.errors import ConfigError
from clipforge.io import atomic_write_text

log = logging.getLogger(__name__)

OBJECTIVES = ("contrastive", "bag_of_words", "caption")
LABELS = {"contrastive": "contrastive (CLIP loss)", "bag_of_words": "bag-of-words prediction",
          "caption": "caption prediction (transformer)"}
PAPER = "the paper: contrastive about 4x more efficient than bag-of-words, bag-of-words 3x more than captions"


@dataclass
class ObjectivesConfig:
    """The comparison's setup (JSON round trip: :meth:`to_dict` / :meth:`from_dict`)."""

    train: str = opt("", "training pairs (any source clipforge train reads)")
    zeroshot: str = opt("", "labelled images for zero-shot evaluation (CSV with image and label columns)")
    classes: list[str] = opt([], "class names (default: the sorted labels of the zero-shot CSV)")
    templates: list[str] = opt(["a photo of a {}."], "prompt templates; {} is the class name")
    eval_per_class: int = opt(5, "zero-shot images per class used for the curve (0: all)")
    objectives: list[str] = opt(list(OBJECTIVES), "which objectives to train")
    model: str = opt("coca-tiny", "named model config (a CoCa's shares its tower exactly across objectives)")
    overrides: dict[str, Any] = opt({}, "changes to the model config, e.g. {vision: {image_size: 64}}")
    budget_minutes: float = opt(5.0, "training minutes per objective (evaluation not counted)")
    eval_every_steps: int = opt(20, "evaluate every N steps (the curve's points)")
    batch_size: int = opt(128, "pairs per step")
    lr: float = opt(1e-3, "peak learning rate (AdamW, cosine schedule sized to the budget)")
    weight_decay: float = opt(0.1, "decoupled weight decay")
    warmup_steps: int = opt(50, "warm-up steps (at most a fifth of the budgeted schedule)")
    vocab_size: int = opt(512, "size of the BPE learned on the captions (the bag-of-words vocabulary)")
    context_length: int = opt(32, "text positions")
    seeds: list[int] = opt([0], "one run per objective and seed (initialisation and data order); the curves "
                           "compared are the seeds' mean")
    threads: int | None = opt(None, "torch CPU threads")
    out_dir: str = opt("runs/objectives", "where the runs, objectives.json/.md and objectives.png go")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectivesConfig:
        return build_config(cls, d, "")

    def check(self) -> None:
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise ConfigError(f"objectives: expected some of {', '.join(OBJECTIVES)}, got {self.objectives}")
        if not self.budget_minutes > 0:
            raise ConfigError(f"budget_minutes must be positive, got {self.budget_minutes}")
        for name in ("eval_every_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if self.eval_per_class < 0:
            raise ConfigError(f"eval_per_class must be at least 0, got {self.eval_per_class}")
        for name in ("train", "zeroshot"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: no file given")


def eval_subset(zeroshot: str, per_class: int, out: Path, classes: list[str] | None = None) -> tuple[str, list[str]]:
    """(CSV, class names): the first ``per_class`` images of each label of ``zeroshot`` as a CSV in
    ``out`` (absolute image paths), or ``zeroshot`` itself when ``per_class`` is 0."""
    from clipforge.data.datasets import load_classification

    ds = load_classification(zeroshot, classes=classes or None)
    if per_class == 0:
        return zeroshot, ds.classes
    taken: dict[int, int] = defaultdict(int)
    rows = []
    for image, label in zip(ds.images, ds.labels):
        if taken[label] < per_class:
            taken[label] += 1
            rows.append({"image": str(Path(image).resolve()), "label": ds.classes[label]})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "zeroshot_eval.csv"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["image", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(text.getvalue(), path)
    return str(path), ds.classes


def train_config(config: ObjectivesConfig, objective: str, zeroshot_csv: str, classes: list[str],
                 seed: int = 0) -> Any:
    """The ``clipforge train`` config of one objective's run (everything else equal)."""
    from clipforge.training.config import TrainConfig

    overrides = json.loads(json.dumps(config.overrides))
    loss = "bag_of_words" if objective == "bag_of_words" else "clip"
    is_coca = _is_coca(config.model)
    if objective == "caption":
        if not is_coca:
            raise ConfigError(f"model={config.model}: the caption objective needs a CoCa config (e.g. coca-tiny), "
                              "whose decoder predicts the caption")
        overrides["contrastive_weight"] = 0.0
    elif objective == "contrastive" and is_coca:
        overrides["caption_weight"] = 0.0
    scoring = "likelihood" if objective == "caption" else "embedding"
    return TrainConfig.from_dict({
        "data": {"train": config.train, "zeroshot": [{"name": "zeroshot", "csv": zeroshot_csv, "classes": classes,
                                                       "templates": config.templates, "scoring": scoring}]},
        "model": {"name": config.model, "overrides": overrides, "tokenizer": "train", "vocab_size": config.vocab_size,
                  "context_length": config.context_length},
        "optim": {"lr": config.lr, "weight_decay": config.weight_decay, "warmup_steps": config.warmup_steps},
        "loss": loss, "epochs": 10_000, "minutes": config.budget_minutes, "batch_size": config.batch_size,
        "eval_every_epochs": 0, "eval_every_steps": config.eval_every_steps, "budget_counts_eval": False,
        "seed": seed, "threads": config.threads,
        "out_dir": str(Path(config.out_dir) / (objective if len(config.seeds) == 1 else f"{objective}-seed{seed}")),
        "save_every_steps": 0, "keep_checkpoints": 1, "tensorboard": False,
    })


def _is_coca(name: str) -> bool:
    from clipforge.checkpoints.load import model_config
    from clipforge.models.coca import CoCaConfig

    return isinstance(model_config(name), CoCaConfig)


def compare_objectives(config: ObjectivesConfig, progress: bool = True) -> dict[str, Any]:
    """Train each objective for the budget and write ``objectives.json``, ``objectives.md`` and
    ``objectives.png`` to ``config.out_dir``; returns the JSON's content."""
    from clipforge.training.trainer import train

    config.check()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(config.to_dict(), indent=2), out / "objectives_config.json")
    zeroshot, classes = eval_subset(config.zeroshot, config.eval_per_class, out, list(config.classes))
    curves: dict[str, list[dict[str, float]]] = {}
    runs: dict[str, dict[str, Any]] = {}
    jobs = [(o, seed) for seed in config.seeds for o in config.objectives]
    per_seed: dict[str, list[list[dict[str, float]]]] = defaultdict(list)
    for i, (objective, seed) in enumerate(jobs):
        cfg = train_config(config, objective, zeroshot, classes, seed)
        run_dir = Path(cfg.out_dir)
        state = finished_run(cfg)
        if state is None:
            resume = "latest" if any((run_dir / "checkpoints").glob("step_*")) else None
            log.info(f"[{i + 1}/{len(jobs)}] {LABELS[objective]}, seed {seed}: {config.budget_minutes:g} min"
                     + (" (resuming)" if resume else ""))
            state = train(cfg, resume=resume, progress=progress).state
        else:
            log.info(f"[{i + 1}/{len(jobs)}] {LABELS[objective]}, seed {seed}: finished before in {run_dir}, reused")
        per_seed[objective].append(curve(state.evals, config.batch_size))
        run = runs.setdefault(objective, {"steps": [], "images_seen": [], "train_seconds": [], "models": []})
        run["steps"].append(state.step)
        run["images_seen"].append(state.samples_seen)
        run["train_seconds"].append(round(state.train_seconds, 1))
        run["models"].append(str(run_dir / "model"))
    for objective, seed_curves in per_seed.items():
        curves[objective] = mean_curve(seed_curves)
        runs[objective]["seed_curves"] = seed_curves
    return write_summary(config.to_dict(), runs, curves, len(classes), out)


def finished_run(cfg: Any) -> Any:
    """The state of a run of ``cfg`` already finished in its folder (an experiment re-run after an
    interruption keeps what is done), or ``None``. A folder holding a run of other settings is refused."""
    from clipforge.engine.checkpoint import TrainState

    run_dir = Path(cfg.out_dir)
    saved = run_dir / "train_config.json"
    if not saved.is_file():
        return None
    if json.loads(saved.read_text()) != json.loads(json.dumps(cfg.to_dict())):
        raise ConfigError(f"{run_dir} holds a run with other settings; give the experiment another out_dir")
    summary, evals = run_dir / "summary.json", run_dir / "evals.jsonl"
    if not (summary.is_file() and (run_dir / "model" / "config.json").is_file() and evals.is_file()):
        return None
    done = json.loads(summary.read_text())
    return TrainState(step=done["steps"], samples_seen=done["samples_seen"], train_seconds=done["train_seconds"],
                      evals=[json.loads(line) for line in evals.read_text().splitlines() if line.strip()])


def mean_curve(seed_curves: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """The seeds' mean accuracy at the points every seed has (same cadence; budgets end at different
    steps), with its spread (``sd``, 0 for one seed)."""
    common = set.intersection(*({p["images"] for p in c} for c in seed_curves))
    out = []
    for images in sorted(common):
        accs = [next(p["acc1"] for p in c if p["images"] == images) for c in seed_curves]
        out.append({"images": images, "acc1": statistics.fmean(accs),
                    "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0})
    return out


def write_summary(config: dict[str, Any], runs: dict[str, dict[str, Any]], curves: dict[str, list[dict[str, float]]],
                  n_classes: int, out: Path) -> dict[str, Any]:
    """``objectives.json``, ``.md`` and ``.png`` in ``out`` from the runs' curves; returns the JSON's content."""
    summary = {"config": config, "chance": 1.0 / n_classes, "n_classes": n_classes,
               "runs": runs, "curves": curves, "best": {k: best(v) for k, v in curves.items()},
               "ratios": efficiency_ratios(curves, 1.0 / n_classes), "paper": PAPER}
    atomic_write_text(json.dumps(summary, indent=2), out / "objectives.json")
    atomic_write_text(objectives_markdown(summary), out / "objectives.md")
    objectives_plot(summary, out / "objectives.png")
    return summary


def curve(evals: list[dict[str, Any]], batch_size: int) -> list[dict[str, float]]:
    """``[{"images": steps * batch_size, "acc1": ...}]`` from a run's evaluations (one point per step)."""
    points: dict[int, float] = {}
    for e in evals:
        if "zeroshot/acc1" in e:
            points[int(e["step"])] = float(e["zeroshot/acc1"])
    return [{"images": step * batch_size, "acc1": acc} for step, acc in sorted(points.items())]


def best(points: list[dict[str, float]]) -> float:
    return max((p["acc1"] for p in points), default=0.0)


def images_to_reach(points: list[dict[str, float]], target: float) -> float | None:
    """Images at which the best-so-far accuracy first reaches ``target`` (linear between points;
    from (0 images, 0 accuracy) before the first); ``None`` if it never does."""
    prev_images, prev_best = 0.0, 0.0
    for p in points:
        acc = max(prev_best, p["acc1"])
        if acc >= target:
            if acc == prev_best:
                return prev_images
            return prev_images + (target - prev_best) / (acc - prev_best) * (p["images"] - prev_images)
        prev_images, prev_best = p["images"], acc
    return None


def efficiency_ratios(curves: dict[str, list[dict[str, float]]], chance: float,
                      levels: tuple[float, ...] = (0.5, 0.75, 1.0)) -> list[dict[str, Any]]:
    """For each pair of objectives: the accuracy both reach (the lower best), and at ``levels`` of it
    the images each needs and ``ratio`` = the slower's images / the faster's (how many times more
    efficient the faster one is). A level under twice chance has no ratio (``None``). The pair's
    ``ratio`` and ``faster`` are those at the common accuracy itself (level 1)."""
    out = []
    names = [n for n in OBJECTIVES if n in curves]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = min(best(curves[a]), best(curves[b]))
            rows = []
            for level in levels:
                target = level * common
                row: dict[str, Any] = {"level": level, "target_acc1": target, "ratio": None, "faster": None}
                if target >= 2 * chance:
                    na, nb = images_to_reach(curves[a], target), images_to_reach(curves[b], target)
                    row.update(images_a=na, images_b=nb)
                    if na and nb:
                        row["faster"] = a if na <= nb else b
                        row["ratio"] = max(na, nb) / min(na, nb)
                rows.append(row)
            top = rows[-1]
            out.append({"a": a, "b": b, "target_acc1": common, "ratio": top["ratio"], "faster": top["faster"],
                        "levels": rows})
    return out


def objectives_markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["# Which objective learns fastest (the CLIP paper's Figure 2)", "",
             f"Model `{cfg['model']}`, batch {cfg['batch_size']}, {cfg['budget_minutes']:g} training minutes per "
             f"objective, zero-shot top-1 on {summary['n_classes']} classes (chance {pct(summary['chance'])}%), "
             f"seeds {', '.join(map(str, cfg['seeds']))} (accuracies: the seeds' mean at the steps all reached; "
             "steps and images per seed).", "",
             "| objective | steps | images seen | best zero-shot top-1 % | final % |", "|---|---|---|---|---|"]
    for name, run in summary["runs"].items():
        points = summary["curves"][name]
        final = pct(points[-1]["acc1"]) if points else "-"
        if points and points[-1].get("sd"):
            final += f" ± {pct(points[-1]['sd'])}"
        steps = "/".join(str(n) for n in run["steps"])
        images = "/".join(f"{n:,}" for n in run["images_seen"])
        lines.append(f"| {LABELS[name]} | {steps} | {images} | {pct(summary['best'][name])} | {final} |")
    levels = [lv["level"] for lv in summary["ratios"][0]["levels"]] if summary["ratios"] else []
    lines += ["", "Efficiency: images the slower objective needs over the faster's, to reach the accuracy both "
              "reach (the lower best) and fractions of it; the faster objective is named.", "",
              "| pair | common accuracy % | " + " | ".join(f"at {lv:g} of it" for lv in levels) + " |",
              "|---|---|" + "---|" * len(levels)]

    def cell(row: dict[str, Any]) -> str:
        if not row["ratio"]:
            return "n/a"
        return f"{row['ratio']:.1f}x {row['faster'].replace('_', '-')} ({pct(row['target_acc1'])}%)"

    for r in summary["ratios"]:
        lines.append(f"| {r['a']} vs {r['b']} | {pct(r['target_acc1'])} | " +
                     " | ".join(cell(lv) for lv in r["levels"]) + " |")
    lines += ["", f"For comparison, {summary['paper']}.", ""]
    return "\n".join(lines)


def objectives_plot(summary: dict[str, Any], path: str | Path) -> None:
    """Zero-shot top-1 against images seen, one line per objective, chance dashed (the paper's style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"contrastive": "tab:blue", "bag_of_words": "tab:orange", "caption": "tab:green"}
    for name, points in summary["curves"].items():
        if points:
            x, y = [p["images"] for p in points], [100 * p["acc1"] for p in points]
            ax.plot(x, y, marker="o", markersize=3, color=colours[name], label=LABELS[name])
            sd = [100 * p.get("sd", 0.0) for p in points]
            if any(sd):
                ax.fill_between(x, [a - s for a, s in zip(y, sd)], [a + s for a, s in zip(y, sd)],
                                color=colours[name], alpha=0.15, linewidth=0)
    ax.axhline(100 * summary["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("images seen")
    ax.set_ylabel("zero-shot top-1 accuracy (%)")
    ax.set_title(f"Objectives at {summary['config']['budget_minutes']:g} min each ({summary['config']['model']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["OBJECTIVES", "ObjectivesConfig", "compare_objectives", "curve", "efficiency_ratios", "images_to_reach"]
