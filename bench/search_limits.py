"""Per-request time and memory of the search service at its limits, each case in a fresh process.

A 200k x 512 pq-rerank index (uniformly random vectors: the kind and data where a request's work
grows with k, offset and effort) and the tiny ViT as the index's model. Each case runs in its own
process: the resident memory after loading (baseline), the peak during the requests (VmHWM, which
counts the pages of the memory-mapped index a request reads) and the anonymous memory (heap) still
held after them, through the same ``SearchService`` the HTTP routes call.

Cases: the issue's amplifying request (refused now), the heaviest accepted vector request, four of
them at once, a 16-megapixel PNG query (the default pixel limit), eight such uploads at once (two
decode at a time, the rest wait), and the 88-megapixel PNG (refused before decoding).

    .venv/bin/python bench/search_limits.py
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

CASES = {
    "amplifying request (k 200, offset 10000, effort 4096)": ("vector", dict(k=200, offset=10000, effort=4096), 1),
    "heaviest accepted vector request (k 200, offset 800, effort 50)":
        ("vector", dict(k=200, offset=800, effort=50), 1),
    "4 heaviest accepted at once": ("vector", dict(k=200, offset=800, effort=50), 4),
    "16 Mpx PNG query": ("png16", dict(k=20), 1),
    "8 x 16 Mpx PNG queries at once": ("png16", dict(k=20), 8),
    "88 Mpx PNG query (9400 x 9400)": ("png88", dict(k=20), 1),
}


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_case(index: str, name: str) -> dict:
    import numpy as np
    from PIL import Image

    from clipforge.errors import ClipforgeError
    from clipforge.search.service import SearchService

    kind, options, parallel = CASES[name]
    service = SearchService(index)
    payload = None
    if kind.startswith("png"):
        side = 4000 if kind == "png16" else 9400
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (120, 40, 200)).save(buf, format="PNG")
        payload = buf.getvalue()
    vector = list(np.random.default_rng(0).standard_normal(512).astype(float))
    service.search(vector=vector, k=10)  # warm: memory maps, threads, the model
    base, base_anon = _kb("VmRSS"), _kb("RssAnon")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    outcomes: list[str] = []

    def one(_: int) -> None:
        try:
            if payload is None:
                service.search(vector=vector, **options)
            else:
                service.search(image=payload, **options)
            outcomes.append("ok")
        except ClipforgeError as e:
            outcomes.append(f"refused ({getattr(e, 'status', 400)})")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(parallel)))
    seconds = time.perf_counter() - t0
    return {"case": name, "seconds": round(seconds, 3), "peak_mb": round((_kb("VmHWM") - base) / 1024, 1),
            "after_mb": round((_kb("RssAnon") - base_anon) / 1024, 1), "png_kb": len(payload) // 1024 if payload else 0,
            "outcomes": sorted(set(outcomes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.index, args.case)))
        return
    import dataclasses

    import numpy as np

    import clipforge
    from clipforge.search.embed import save_embeddings
    from clipforge.search.index import build_index
    from common import machine, markdown_table

    print(f"machine: {machine()}\n")
    work = Path(tempfile.mkdtemp(prefix="clipforge-bench-limits-"))
    # The index's model: the tiny ViT with a 512-d joint space, so image queries meet 512-d vectors.
    model = clipforge.CLIP(dataclasses.replace(clipforge.get_config("tiny-vit-32"), embed_dim=512))
    clipforge.save(model, work / "model")
    dim = 512
    vectors = np.random.default_rng(0).standard_normal((args.n, dim), dtype=np.float32)
    save_embeddings(work / "emb", vectors, model_path=str(work / "model"))
    build_index(work / "emb", work / "idx", kind="pq-rerank")
    rows = []
    for name in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", name, "--index", str(work / "idx")],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append([r["case"], ", ".join(r["outcomes"]), f"{r['seconds']:.2f}", f"{r['peak_mb']:.0f}",
                     f"{r['after_mb']:.0f}", r["png_kb"] or "-"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print(f"\n{args.n} vectors of d={dim}, pq-rerank, default limits (max_k 200, offset + k <= 1000, "
          "50,000 candidates, 2 heavy at once, 16 Mpx)\n")
    print(markdown_table(["case", "outcome", "seconds", "peak RSS MB over baseline (incl. index pages read)",
                          "anonymous MB kept after",
                          "PNG KB"], rows))


if __name__ == "__main__":
    main()
