"""Search latency and recall, and a bounded HTTP load test on 127.0.0.1.

1. Synthetic collections of uniformly random unit vectors (d = 512): the hardest case for
   approximate search, since nothing is clustered. Each index kind is built with ``build_index`` (its
   effort tuned at build time to recall@10 >= 0.95 where it can reach it) and queried through
   ``Searcher.search``, one query at a time: p50/p99 latency, and recall@10 against exact search for
   300 fresh queries near collection vectors (a collection vector plus noise, cosine ~0.71) and 100
   uniformly random ones. The exact index, measured the same way, is the baseline.
2. Real embeddings (``--demo-model``): the demo model's image embeddings of the demo scenes, queried
   by their caption embeddings (text -> image, the service's use), for each kind.
3. ``clipforge serve`` on 127.0.0.1 over the largest synthetic index: 8 concurrent clients posting
   vector queries for 30 s; requests/s and error count. Clients and server share this machine.
4. ``--choice N``: the automatic index choice on N clustered vectors (1000 clusters, cosine ~0.9 to
   their centre, like real embeddings) and on N uniformly random ones, side by side: every kind
   that fits (plain FAISS exact, IVF-Flat, IVF-PQ, HNSW up to 100k, and pq-rerank) tuned to the
   same recall@10 target on the same queries and timed one query at a time; which one the build
   kept; and the kept index measured again through ``Searcher`` on fresh queries.

    .venv/bin/python bench/search.py                                  # 10k, 100k, 1M
    .venv/bin/python bench/search.py --sizes 10000 --load-seconds 5   # a quick look
    .venv/bin/python bench/search.py --sizes --load-seconds 0 --choice 200000   # the index choice only
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


def measure(searcher, queries: np.ndarray) -> tuple[float, float, np.ndarray]:
    """p50 and p99 ms of one-query searches, and the ids found."""
    times, found = [], []
    searcher.search(queries[0], k=10)  # warm the memory map and thread pools
    for q in queries:
        t0 = time.perf_counter()
        hits = searcher.search(q, k=10)[0]
        times.append(time.perf_counter() - t0)
        found.append([h.id for h in hits] + [-1] * (10 - len(hits)))
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000), np.array(found)


def kinds_for(n: int, hnsw_max: int) -> list[tuple[str, int | None]]:
    kinds: list[tuple[str, int | None]] = [("flat", None), ("pq-rerank", 1), ("pq-rerank", 2)]
    if n <= hnsw_max:
        kinds.append(("hnsw", None))
    if n >= 100_000:
        kinds.append(("ivfpq", None))
    return kinds


def load_test(index_dir: Path, dim: int, seconds: float, clients: int) -> tuple[float, int, int]:
    from clipforge.search.server import BackgroundServer, create_app

    server = BackgroundServer(create_app(index_dir))
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


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def choice_tables(n: int, dim: int, n_queries: int, work: Path) -> None:
    from clipforge.search.embed import save_embeddings
    from clipforge.search.index import build_index
    from clipforge.search.searcher import Searcher
    from clipforge.search.tuning import exact_top_k, perturbed_queries, recall_at_k, unit_rows
    from common import markdown_table

    rows, kept = [], []
    for name, vectors in (("clustered (1000 clusters)", clustered(n, dim, 1000, seed=1)),
                          ("uniform", np.random.default_rng(2).standard_normal((n, dim), dtype=np.float32))):
        emb = save_embeddings(work / f"emb-choice-{name.split()[0]}", vectors)
        out = work / f"idx-choice-{name.split()[0]}"
        t0 = time.perf_counter()
        build_index(emb, out, verbose=True)
        build_s = time.perf_counter() - t0
        info = json.loads((out / "index.json").read_text())
        exact = next(r for r in info["choice"]["candidates"] if r["kind"] == "flat")
        for r in info["choice"]["candidates"]:
            rows.append([name, r["kind"] + (" (kept)" if r["kind"] == info["kind"] else ""), f"{r['memory_mb']:.0f}",
                         f"{r['build_s']:.1f}", r["effort"] if r["effort"] is not None else "-",
                         f"{r['recall_at_10']:.3f}", f"{r['p50_ms']:.2f}", f"{exact['p50_ms'] / r['p50_ms']:.1f}x"])
        data = unit_rows(np.load(emb / "part-00000.npy").astype(np.float32))
        fresh = perturbed_queries(data, n_queries, seed=7)  # the build tuned on seed 0
        s = Searcher(out)
        p50, p99, found = measure(s, fresh)
        kept.append([name, info["kind"], info["effort"], f"{build_s:.0f}", f"{p50:.2f}", f"{p99:.2f}",
                     f"{recall_at_k(exact_top_k(data, fresh, 10), found):.3f}"])
    print(f"\nindex choice on {n} vectors (d={dim}): every candidate tuned to recall@10 >= 0.95 on the same "
          "200 queries (half collection vectors plus noise, half random directions), median of one-query "
          "searches for 10 results\n")
    print(markdown_table(["data", "index", "memory MB", "build s", "effort", "recall@10", "p50 ms",
                          "speed vs exact"], rows))
    print(f"\nthe kept index through Searcher, {n_queries} fresh queries near the collection\n")
    print(markdown_table(["data", "kept", "effort", "whole build s (all candidates)", "p50 ms", "p99 ms",
                          "recall@10 vs exact"], kept))


def main() -> None:
    from clipforge.search.embed import save_embeddings
    from clipforge.search.index import build_index
    from clipforge.search.searcher import Searcher
    from clipforge.search.tuning import exact_top_k, perturbed_queries, recall_at_k, unit_rows
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--choice", type=int, default=0, help="vectors for the clustered/uniform index-choice table")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--hnsw-max", type=int, default=100_000,
                        help="largest size to build HNSW for (its build is slow on few cores)")
    parser.add_argument("--demo-model", default=None, help="a model to embed the demo scenes with")
    parser.add_argument("--demo-images", default="outputs/demo/data/train.csv")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    work = Path(args.work or tempfile.mkdtemp(prefix="clipforge-bench-search-"))
    headers = ["vectors", "index", "threads", "build s", "effort", "tuned recall", "p50 ms", "p99 ms",
               "recall@10 (near)", "recall@10 (random)", "p50 vs exact"]
    rows, largest = [], None
    for n in args.sizes:
        rng = np.random.default_rng(n)
        emb = save_embeddings(work / f"emb-{n}", rng.standard_normal((n, args.dim), dtype=np.float32))
        data = unit_rows(np.load(emb / "part-00000.npy").astype(np.float32))  # what the index holds
        near = perturbed_queries(data, args.queries, seed=7)  # the build tunes on seed 0
        rand = unit_rows(rng.standard_normal((100, args.dim), dtype=np.float32))
        truth_near, truth_rand = exact_top_k(data, near, 10), exact_top_k(data, rand, 10)
        exact_p50 = None
        for kind, threads in kinds_for(n, args.hnsw_max):
            out = work / f"idx-{n}-{kind}-{threads}"
            t0 = time.perf_counter()
            build_index(emb, out, kind=kind, threads=threads)
            build_s = time.perf_counter() - t0
            s = Searcher(out)
            p50, p99, found = measure(s, near)
            _, _, found_rand = measure(s, rand)
            exact_p50 = exact_p50 or p50
            info = s.info
            rows.append([n, kind, threads or "-", f"{build_s:.1f}", info.get("effort", "-"),
                         f"{info['recall_at_10']:.3f}" if "recall_at_10" in info else "-", f"{p50:.2f}",
                         f"{p99:.2f}", f"{recall_at_k(truth_near, found):.3f}",
                         f"{recall_at_k(truth_rand, found_rand):.3f}", f"{exact_p50 / p50:.1f}x"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
            if kind == "pq-rerank" and threads == 2:
                largest = out
    if rows:
        print()
        print(markdown_table(headers, rows))
    if args.choice:
        choice_tables(args.choice, args.dim, args.queries, work)
    if args.demo_model:
        import clipforge
        from clipforge.search.embed import embed_collection, read_caption_embeddings, read_embeddings

        emb = embed_collection(clipforge.load(args.demo_model), args.demo_images, work / "emb-demo",
                               captions=True, progress=False)
        data = unit_rows(read_embeddings(emb)[0])
        queries = unit_rows(read_caption_embeddings(emb)[:args.queries])
        truth = exact_top_k(data, queries, 10)
        real = []
        for kind in ("flat", "pq-rerank", "hnsw", "ivfpq"):
            out = work / f"idx-demo-{kind}"
            build_index(emb, out, kind=kind)
            s = Searcher(out)
            p50, p99, found = measure(s, queries)
            real.append([len(data), kind, s.info.get("effort", "-"), f"{p50:.2f}", f"{p99:.2f}",
                         f"{recall_at_k(truth, found):.3f}"])
        print(f"\nreal embeddings: the demo model's image embeddings of {args.demo_images}, queried by "
              f"{len(queries)} of their caption embeddings (d={data.shape[1]})\n")
        print(markdown_table(["images", "index", "effort", "p50 ms", "p99 ms", "recall@10 vs exact"], real))
    if largest is not None and args.load_seconds > 0:
        info = json.loads((largest / "index.json").read_text())
        rps, ok, errors = load_test(largest, args.dim, args.load_seconds, args.clients)
        print(f"\nload test: {args.clients} clients, {args.load_seconds:.0f} s, {info['kind']} index of {info['n']} "
              f"vectors: {rps:.1f} requests/s, {ok} answered, {errors} errors")


if __name__ == "__main__":
    main()
