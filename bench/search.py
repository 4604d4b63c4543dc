"""Search latency and recall, and a bounded HTTP load test on 127.0.0.1.

1. Index latency (one query at a time; p50/p99 over 300 queries) and recall@10 against exact search
   for synthetic unit vectors (d = 512; queries are database vectors plus a little noise), for the
   exact index and the approximate kinds clipforge chooses at larger sizes.
2. Recall@10 of HNSW against exact on real embeddings (the demo model's embeddings of the demo's
   validation scenes, when ``--demo-model`` is given).
3. ``clipforge serve`` on 127.0.0.1 with an index of 10k vectors: 8 concurrent clients posting
   vector queries for 30 s; requests/s and error count. Bounded in time, local only.

    .venv/bin/python bench/search.py                          # 10k and 100k
    .venv/bin/python bench/search.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def latency_and_recall(index, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = index.search(q[None], 10)
        times.append(time.perf_counter() - t0)
        found.append(ids[0])
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)]))
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000), recall


def load_test(n: int, dim: int, seconds: float, clients: int) -> tuple[float, int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipforge.search.index import build_index
    from clipforge.search.server import BackgroundServer, create_app

    work = Path(tempfile.mkdtemp(prefix="clipforge-load-"))
    emb = work / "emb"
    emb.mkdir()
    rng = np.random.default_rng(1)
    np.save(emb / "part-00000.npy", unit(rng.standard_normal((n, dim))).astype(np.float16))
    rows = [{"id": i, "path": f"/nonexistent/{i}.png", "caption": "", "width": 1, "height": 1, "sha1": ""}
            for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), emb / "part-00000.parquet")
    (emb / "manifest.json").write_text(json.dumps({"items": n, "dim": dim, "model": ""}))
    build_index(emb, work / "idx")
    server = BackgroundServer(create_app(work / "idx"))
    url = server.__enter__() + "/search"
    counts, errors = [0] * clients, [0] * clients
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        r = np.random.default_rng(100 + i)
        while time.perf_counter() < stop:
            body = json.dumps({"vector": r.standard_normal(dim).tolist(), "k": 10}).encode()
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
                counts[i] += 1
            except Exception:
                errors[i] += 1

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    server.__exit__(None, None, None)
    return sum(counts) / elapsed, sum(counts), sum(errors)


def main() -> None:
    import faiss

    from clipforge.search.index import build_faiss, choose_index
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--demo-model", default=None, help="a model to embed the demo's validation scenes with")
    parser.add_argument("--demo-images", default="outputs/demo/data/val.csv")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    print(f"machine: {machine()}\n")
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        data = unit(rng.standard_normal((n, args.dim)))
        picks = rng.choice(n, args.queries, replace=False)
        queries = unit(data[picks] + 0.05 * rng.standard_normal((args.queries, args.dim)))
        exact = build_faiss(data, {"kind": "flat"})
        _, truth = exact.search(queries, 10)
        kinds = ["flat", "hnsw"] + (["ivfpq"] if n >= 100_000 else [])
        for kind in kinds:
            spec = choose_index(n, args.dim, 0 if kind == "ivfpq" else None, exact_limit=n if kind == "flat" else 0)
            t0 = time.perf_counter()
            index = exact if kind == "flat" else build_faiss(data, spec)
            build_s = 0.0 if kind == "flat" else time.perf_counter() - t0
            p50, p99, recall = latency_and_recall(index, queries, truth)
            rows.append([n, kind, f"{build_s:.1f}", f"{p50:.2f}", f"{p99:.2f}", f"{recall:.3f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(markdown_table(["vectors", "index", "build s", "p50 ms", "p99 ms", "recall@10 vs exact"], rows))
    if args.demo_model:
        import clipforge
        from clipforge.search.embed import embed_collection, read_embeddings

        work = Path(tempfile.mkdtemp(prefix="clipforge-real-"))
        embed_collection(clipforge.load(args.demo_model), args.demo_images, work / "emb", progress=False)
        real = unit(read_embeddings(work / "emb")[0])
        exact = build_faiss(real, {"kind": "flat"})
        _, truth = exact.search(real[:300], 10)
        hnsw = build_faiss(real, choose_index(len(real), real.shape[1], exact_limit=0))
        p50, p99, recall = latency_and_recall(hnsw, real[:300], truth)
        print(f"\nreal embeddings ({len(real)} demo validation scenes, d={real.shape[1]}): HNSW recall@10 "
              f"{recall:.3f}, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    rps, ok, errors = load_test(10_000, args.dim, args.load_seconds, args.clients)
    print(f"\nload test: {args.clients} clients, {args.load_seconds:.0f} s, 10k-vector index: {rps:.1f} requests/s, "
          f"{ok} answered, {errors} errors")


if __name__ == "__main__":
    main()
