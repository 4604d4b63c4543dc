"""The main job, end to end: synthetic data -> CLIP training on the CPU -> evaluation -> report.

``clipforge demo --out outputs/demo`` (what ``make demo`` runs) writes:

* ``data/`` -- the synthetic captioned scenes (kept and reused when re-run with the same sizes);
* ``run/`` -- checkpoints, metrics, TensorBoard logs, ``train_config.json`` and the trained ``model/``;
* ``captioner/`` -- a ClipCap captioner trained on that CLIP's embeddings (its ``model/``), whose
  captions the report shows under the validation images;
* ``report/index.html`` -- the self-contained report, and ``report/results.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clipforge.data.synthetic import SynthConfig, class_names, write_dataset
from clipforge.training.config import TrainConfig

log = logging.getLogger(__name__)

TEMPLATES = ["{article} {}", "there is {article} {}", "a picture of {article} {}",
             "{article} {} on a textured background"]


# The small modified ResNet learns shapes from 10k scenes far better than a ViT of the same cost
# (64-way zero-shot on seen combinations: 90% vs 51% after 12 and 10 epochs; docs/benchmarks.md).
DEMO_MODEL = {"name": "tiny-rn-64", "overrides": {"vision": {"width": 16, "head_width": 16}}}
DEMO_MODELS = {
    "resnet": DEMO_MODEL,
    "vit": {"name": "tiny-vit-32", "overrides": {"vision": {"image_size": 64, "patch_size": 8}}},
}


# What issue 21's levers kept (bench/learning.py, docs/benchmarks.md): a phrasing of each scene drawn
# per epoch from the grammar's true ones, and bf16 with channels-last where the CPU computes bf16
# natively. `recipe=[]` gives the recipe before them.
DEMO_RECIPE = ["data.caption_column=phrasings", "data.caption_split=' | '", "precision=auto", "channels_last=true"]
# 15 bf16 epochs take about 0.84 of the minutes of 12 fp32 ones on a CPU with AVX512-BF16
# (docs/benchmarks.md); without native bf16 the demo trains them in fp32, about a quarter longer.
DEMO_EPOCHS = 15


def demo_config(data_dir: Path, run_dir: Path, epochs: int = DEMO_EPOCHS, model: dict | None = None,
                recipe: list[str] | None = None) -> TrainConfig:
    """The demo's training setup: a small CLIP on 64x64 scenes with a BPE learned on the captions;
    ``recipe``: options changed from the base (``key=value``; default :data:`DEMO_RECIPE`)."""
    from clipforge.config import apply_overrides

    zs = [{"name": split, "csv": str(data_dir / f"zeroshot_{split}.csv"), "classes": class_names(),
           "templates": TEMPLATES} for split in ("seen", "heldout")]
    return TrainConfig.from_dict(apply_overrides({
        "data": {"train": str(data_dir / "train.csv"), "val": str(data_dir / "val.csv"), "zeroshot": zs},
        "model": {"tokenizer": "train", "vocab_size": 512, "context_length": 32, **(model or DEMO_MODEL)},
        "optim": {"lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 50},
        "epochs": epochs, "batch_size": 128, "out_dir": str(run_dir), "log_every_steps": 10, "seed": 0,
    }, DEMO_RECIPE if recipe is None else recipe))


def reusable_data(data_dir: Path, synth: SynthConfig) -> bool:
    """Whether ``data_dir`` holds the scenes ``synth`` makes, in today's layout (with the phrasings)."""
    meta, train = data_dir / "meta.json", data_dir / "train.csv"
    if not (meta.is_file() and train.is_file() and json.loads(meta.read_text()).get("config") == asdict(synth)):
        return False
    with open(train) as f:
        return "phrasings" in f.readline()


def demo_captioner_config(data_dir: Path, clip_dir: Path, out_dir: Path, epochs: int = 2) -> Any:
    """ClipCap (MLP mapper, a small LM tuned with it) on the demo CLIP: the recipe of the captioning
    table in docs/benchmarks.md, for fewer epochs."""
    from clipforge.captioning.config import CaptionTrainConfig

    return CaptionTrainConfig.from_dict({
        "method": "clipcap", "clip": str(clip_dir), "data": str(data_dir / "train.csv"), "epochs": epochs,
        "batch_size": 64, "lr": 1e-3, "out_dir": str(out_dir), "tensorboard": False, "seed": 0,
    })


def run_demo(out: str | Path, synth: SynthConfig | None = None, epochs: int = DEMO_EPOCHS, progress: bool = True,
             command: str = "make demo", model: dict | None = None, caption_epochs: int = 2) -> dict[str, Any]:
    """``caption_epochs``: of the captioner shown in the report (0: no captioner)."""
    import torch

    from clipforge.captioning.train import train_captioner
    from clipforge.checkpoints import load
    from clipforge.engine.checkpoint import TrainState
    from clipforge.engine.precision import resolve_precision
    from clipforge.report.demo_report import build_demo_report
    from clipforge.training.trainer import train

    out = Path(out)
    synth = synth or SynthConfig()
    data_dir, run_dir, report_dir, caption_dir = out / "data", out / "run", out / "report", out / "captioner"
    steps = 4 if caption_epochs else 3
    t0 = time.perf_counter()
    if not reusable_data(data_dir, synth):
        log.info(f"[1/{steps}] generating the synthetic dataset in {data_dir}")
        write_dataset(data_dir, synth, progress=progress)
    else:
        log.info(f"[1/{steps}] reusing the synthetic dataset in {data_dir}")
    for folder in (run_dir, caption_dir):
        if folder.exists():
            shutil.rmtree(folder)
    config = demo_config(data_dir, run_dir, epochs, model)
    precision = resolve_precision(config.precision, torch.device("cpu"))
    log.info(f"[2/{steps}] training a {config.model.name}-based CLIP for {epochs} epochs on the CPU ({precision})")
    t1 = time.perf_counter()
    result = train(config, progress=progress)
    train_s = time.perf_counter() - t1
    captioner, caption_s = None, 0.0
    if caption_epochs:
        log.info(f"[3/{steps}] training a ClipCap captioner on the CLIP's embeddings for {caption_epochs} epochs")
        t2 = time.perf_counter()
        captioner = train_captioner(demo_captioner_config(data_dir, run_dir / "model", caption_dir, caption_epochs),
                                    progress=progress).eval()
        caption_s = time.perf_counter() - t2
    log.info(f"[{steps}/{steps}] evaluating and writing the report")
    model = load(run_dir / "model")
    state: TrainState = result.state
    results = build_demo_report(model, data_dir, state, report_dir, TEMPLATES, command, captioner,
                                str(caption_dir / "model"))
    results["zeroshot_heldout_last_epochs"] = last_epochs_spread(state.evals, "heldout/acc1")
    results["epochs"] = epochs
    results["precision"] = precision
    results["train_seconds"] = round(train_s, 1)
    results["captioner_train_seconds"] = round(caption_s, 1)
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    (report_dir / "results.json").write_text(json.dumps(results, indent=2))
    results["report"] = str((report_dir / "index.html").resolve())
    return results


def run_generation_demo(out: str | Path, minutes: float = 10.0, judge_epochs: int = 6, progress: bool = True,
                        synth: SynthConfig | None = None, samples: Any = None) -> dict[str, Any]:
    """``clipforge demo --generation``: a text-to-image DDPM over the demo's CLIP, judged by a
    separate CLIP. Reuses the demo's data and CLIP when ``make demo`` made them (otherwise trains
    them first); the judge is the demo's ViT variant with another seed."""
    import dataclasses

    from clipforge.engine.distributed import DistInfo, default_device
    from clipforge.evaluation.judge import load_judge
    from clipforge.generation.config import GenerationTrainConfig
    from clipforge.generation.evaluate import evaluate_generator
    from clipforge.generation.sample import SampleOptions
    from clipforge.generation.train import train_generator
    from clipforge.training.trainer import train

    out = Path(out)
    synth = synth or SynthConfig()
    data_dir = out / "data"
    if not reusable_data(data_dir, synth):
        log.info(f"[1/4] generating the synthetic dataset in {data_dir}")
        write_dataset(data_dir, synth, progress=progress)
    clip_dir = out / "run" / "model"
    if not (clip_dir / "config.json").is_file():
        log.info("[1/4] training the demo's CLIP first (make demo does the same)")
        train(demo_config(data_dir, out / "run"), progress=progress)
    judge_dir = out / "judge" / "model"
    if not (judge_dir / "config.json").is_file():
        log.info(f"[2/4] training the judge: the demo's ViT variant, seed 1, {judge_epochs} epochs")
        d = dataclasses.asdict(demo_config(data_dir, out / "judge", judge_epochs, DEMO_MODELS["vit"]))
        d.update(seed=1, eval_every_epochs=judge_epochs)
        train(TrainConfig.from_dict(d), progress=progress)
    log.info(f"[3/4] training a text-conditioned DDPM over the demo's CLIP for {minutes:g} minutes")
    gen_dir = out / "generator"
    cfg = GenerationTrainConfig.from_dict({"method": "ddpm", "clip": str(clip_dir), "data": str(data_dir / "train.csv"),
                                           "out_dir": str(gen_dir), "epochs": 1000, "minutes": minutes,
                                           "batch_size": 64, "lr": 5e-4, "tensorboard": False})
    model = train_generator(cfg, progress=progress)
    log.info("[4/4] judging it and writing the report")
    judge = load_judge(judge_dir, default_device(DistInfo()))
    metrics = evaluate_generator(model, data_dir, judge, samples or SampleOptions(n=4, guidance=3.0),
                                 out_dir=out / "generation", progress=progress)
    metrics["report"] = str((out / "generation" / "report.html").resolve())
    return metrics


def last_epochs_spread(evals: list[dict[str, Any]], key: str, n: int = 3) -> dict[str, Any] | None:
    """Mean and spread of ``key`` over the last ``n`` evaluations: the held-out figure moves by tens of
    points from one epoch to the next, so one epoch's value is not the headline alone."""
    values = [float(e[key]) for e in evals if key in e][-n:]
    if not values:
        return None
    return {"epochs": len(values), "values": values, "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def demo_summary(results: dict[str, Any]) -> str:
    """The lines ``clipforge demo`` prints at the end."""
    zs_h, zs_s, ret = results["zeroshot_heldout"], results["zeroshot_seen"], results["retrieval_val"]
    spread = results.get("zeroshot_heldout_last_epochs")
    last = (f" (last {spread['epochs']} epochs: {spread['mean']:.1%} ± {spread['sd']:.1%})"
            if spread and spread["epochs"] > 1 else "")
    return "\n".join([
        f"report: {results['report']}",
        f"zero-shot acc1 (64 classes): held-out combinations {zs_h['acc1']:.1%}{last}, seen combinations "
        f"{zs_s['acc1']:.1%}  (chance 1.6%)",
        f"retrieval R@1/5/10 text->image: {ret['image_retrieval_recall@1']:.1%} / "
        f"{ret['image_retrieval_recall@5']:.1%} / {ret['image_retrieval_recall@10']:.1%};  image->text: "
        f"{ret['text_retrieval_recall@1']:.1%} / {ret['text_retrieval_recall@5']:.1%} / "
        f"{ret['text_retrieval_recall@10']:.1%}",
        *(["captions (ClipCap on this CLIP) of validation images: "
           + "; ".join(f"'{c['generated']}'" for c in results["captions"][:3])] if results.get("captions") else []),
        f"training took {results['train_seconds'] / 60:.1f} min ({results['epochs']} epochs, "
        f"{results['precision']}; captioner "
        f"{results['captioner_train_seconds'] / 60:.1f} min); whole demo {results['total_seconds'] / 60:.1f} min",
    ])
