"""The inference paths (clipforge.inference) against open_clip eager fp32 on the same weights, and the
demo model's retrieval under each path; run through ``bench/encode.py --paths``.

Each model is built by open_clip with random weights and loaded into clipforge from its state dict,
so both encode with the same weights (features equal up to float error). Images are 224 px, texts
77 tokens with the end token last (nothing to trim). Batch 16, one thread, the median of calls over
``min_time`` seconds each; the rows of one model run alternately in one process. The torch.compile
paths (``--backend compile``, never auto's) are measured after their first call, which compiles:
its seconds are the last column.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clipforge.inference.choice import apply_paths, candidates, choose_paths
from common import markdown_table, timeit

BATCH = 16


def _open_clip(name: str):
    try:
        import open_clip
    except ImportError:
        return None, None
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained=None).eval(), open_clip.__version__


def _clipforge_twin(name: str, oc_model):
    """clipforge's model with open_clip's weights (or its own random ones without open_clip)."""
    from clipforge.checkpoints.openclip import state_dict_from_openclip
    from clipforge.models import CLIP, get_config
    from clipforge.tokenizer import BPETokenizer

    torch.manual_seed(0)
    model = CLIP(get_config(name)).eval()
    if oc_model is not None:
        model.load_state_dict(state_dict_from_openclip(oc_model.state_dict()))
    model.tokenizer = BPETokenizer()
    return model


def speed_table(names: list[str], min_time: float) -> str:
    rows = []
    for name in names:
        oc_model, oc_version = _open_clip(name)
        model = _clipforge_twin(name, oc_model)
        size = model.config.vision.image_size
        g = torch.Generator().manual_seed(0)
        inputs = {"images": torch.randn(BATCH, 3, size, size, generator=g),
                  "texts (77 tokens)": torch.randint(1, 49406, (BATCH, 77), generator=g)}
        inputs["texts (77 tokens)"][:, -1] = 49407
        auto, _ = choose_paths(copy.deepcopy(model), torch.device("cpu"), use_cache=False)
        paths = candidates(torch.device("cpu")) + candidates(torch.device("cpu"), "compile")
        runners = {p.label: apply_paths(copy.deepcopy(model), {"image": p, "text": p}) for p in paths}
        for kind, x in inputs.items():
            tower = "image" if kind == "images" else "text"
            fns = {}
            if oc_model is not None:
                fns[f"open_clip {oc_version} eager fp32"] = (oc_model.encode_image if tower == "image"
                                                             else oc_model.encode_text)
            for label, m in runners.items():
                fns[f"clipforge {label}"] = m.encode_image if tower == "image" else m.encode_text
            with torch.inference_mode():
                ref = F.normalize(next(iter(fns.values()))(x).float(), dim=-1)
                rates = {}
                for label, fn in fns.items():
                    t0 = time.perf_counter()
                    out = F.normalize(fn(x).float(), dim=-1)  # torch.compile compiles on this first call
                    first = time.perf_counter() - t0
                    sec = timeit(lambda fn=fn, x=x: fn(x), min_time=min_time)
                    rates[label] = (BATCH / sec, float((out - ref).abs().max()),
                                    float(F.cosine_similarity(out, ref).min()), first)
            base = next(iter(rates.values()))[0]
            for label, (rate, diff, cos, first) in rates.items():
                chosen = " (auto's choice)" if label == f"clipforge {auto[tower].label}" else ""
                rows.append([name, kind, label + chosen, f"{rate:.1f}", f"{rate / base:.2f}x", f"{diff:.1e}",
                             f"{cos:.5f}", f"{first:.1f}"])
                print(" | ".join(rows[-1]), flush=True)
    return markdown_table(["model", "input", "path", "items/s", "vs first row", "max |diff|", "min cosine",
                           "first call s"], rows)


def retrieval_table(model_dir: str, data_dir: str) -> str:
    """The demo model's validation retrieval (R@1, R@5 both ways) under each path."""
    import clipforge
    from clipforge.data.datasets import load_retrieval
    from clipforge.evaluation.tasks import retrieval_task

    if not Path(model_dir).is_dir():
        return f"(no {model_dir}: run make demo for the retrieval table)"
    base = clipforge.load(model_dir).eval()
    ds = load_retrieval(str(Path(data_dir) / "val.csv"))
    auto, _ = choose_paths(copy.deepcopy(base), torch.device("cpu"), use_cache=False)
    rows, ref = [], None
    paths = candidates(torch.device("cpu")) + candidates(torch.device("cpu"), "compile")
    settings = [(p.label, {"image": p, "text": p}) for p in paths]
    settings.append((f"auto ({auto['image'].label} / {auto['text'].label})", auto))
    for label, paths in settings:
        model = apply_paths(copy.deepcopy(base), paths)
        metrics, _, _ = retrieval_task(model, ds)
        keys = ("text_retrieval_recall@1", "image_retrieval_recall@1", "text_retrieval_recall@5",
                "image_retrieval_recall@5")
        ref = ref or metrics
        worst = max(abs(metrics[k] - ref[k]) for k in keys) * 100
        rows.append([label, *(f"{100 * metrics[k]:.2f}" for k in keys), f"{worst:.2f}"])
        print(" | ".join(rows[-1]), flush=True)
    return markdown_table(["path", "image->text R@1", "text->image R@1", "image->text R@5", "text->image R@5",
                           "largest change (points)"], rows)


def paths_tables(names: list[str], min_time: float, demo: str, demo_data: str) -> str:
    torch.set_num_threads(1)
    return speed_table(names, min_time) + "\n\n" + retrieval_table(demo, demo_data)

