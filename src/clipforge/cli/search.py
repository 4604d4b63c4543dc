"""``clipforge embed``, ``clipforge index`` and ``clipforge search``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.inference.options import add_inference_options
    from clipforge.search.index import KINDS

    e = sub.add_parser("embed", help="embed an image collection (resumable) into EMB_DIR")
    e.add_argument("--model", required=True)
    e.add_argument("--images", required=True, help="folder of images, CSV (image[,caption]) or shards")
    e.add_argument("--image-column", default=None,
                   help="CSV column of image paths (default: the one of image, filepath, image_path, path, file, "
                        "filename the header has)")
    e.add_argument("--caption-column", default=None,
                   help="CSV column of captions (default: the one of caption, title, text the header has, if any)")
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: this rank's GPU when there is one)")
    e.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="save progress within a part this often, so a kill loses at most this much (default: 60)")
    e.add_argument("--out", required=True, help="embeddings folder (re-run to resume)")
    e.add_argument("--part-size", type=int, default=10000)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--captions", action="store_true",
                   help="also embed the captions (clipforge index then measures recall on them as queries)")
    add_inference_options(e)
    e.add_argument("--workers", type=int, default=None,
                   help="threads decoding images while the model encodes (default: the cores torch's threads "
                        "leave free, at least 1)")
    e.set_defaults(func=run_embed)

    i = sub.add_parser("index", help="build a FAISS index from an embeddings folder")
    i.add_argument("emb_dir")
    i.add_argument("--out", required=True, help="index folder (replaced atomically)")
    i.add_argument("--memory-mb", type=float, default=None, help="memory budget that decides the index kind")
    i.add_argument("--kind", choices=KINDS, default=None,
                   help="force an index kind (default: exact up to 50k vectors, else the fastest of the kinds within "
                        "--memory-mb that reaches --target-recall, measured on the collection; see index.json)")
    i.add_argument("--target-recall", type=float, default=0.95,
                   help="approximate kinds: the least search effort reaching this recall@10 against exact search, "
                        "measured at build time, becomes the default (default: 0.95)")
    i.add_argument("--threads", type=int, default=None,
                   help="pq-rerank: threads one query's scan is split over (default: CPUs here, at most 8)")
    i.add_argument("--dedup-threshold", type=float, default=None, help="compute near-duplicate groups (cosine)")
    i.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                   help="faiss (default: files in the index folder) or milvus (vectors and metadata in a Milvus "
                        "collection: an embedded Milvus Lite file in the index folder, or --milvus-uri)")
    i.add_argument("--milvus-uri", default=None,
                   help="a Milvus server or cluster, e.g. http://milvus:19530 (default: Milvus Lite in the index "
                        "folder)")
    i.add_argument("--milvus-collection", default="clipforge", help="the Milvus collection to write (replaced)")
    i.add_argument("--partial", action="store_true",
                   help="index an embeddings folder whose embed has not finished (default: refuse)")
    i.set_defaults(func=run_index)

    s = sub.add_parser("search", help="search an index by text (or --image / --vector)")
    s.add_argument("index_dir")
    s.add_argument("query", nargs="?", help="text query")
    s.add_argument("--image", default=None, help="search by this image instead")
    s.add_argument("--speech", default=None, help="search by this WAV file (an index embedded with a bound model: "
                   "clipforge bind train)")
    s.add_argument("--depth", default=None, help="search by this depth map (16-bit PNG; a bound model's index)")
    s.add_argument("--model", default=None, help="the model (default: the one recorded in index.json)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--offset", type=int, default=0, help="skip this many results (paging)")
    s.add_argument("--match", choices=("image", "caption"), default="image",
                   help="rank items by their images (default) or by their captions (indexes built with --captions)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    s.add_argument("--text-weight", type=float, default=1.0,
                   help="with both a text and --image: the text's weight in the combined query (default: 1)")
    s.add_argument("--threshold", type=float, default=None)
    s.add_argument("--dedup", action="store_true")
    s.add_argument("--effort", type=int, default=None,
                   help="approximate indexes: more is slower and finds more (pq-rerank: candidates per result; "
                        "HNSW: efSearch; IVF: nprobe); default: the one measured at build time")
    s.set_defaults(func=run_search)

    v = sub.add_parser("serve", help="serve an index over HTTP, with a web page (http://127.0.0.1:8000/)")
    v.add_argument("index_dir")
    v.add_argument("--model", default=None, help="the model (default: the one recorded in index.json)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--max-k", type=int, default=200, help="most results one request may ask for (default: 200)")
    v.add_argument("--max-candidates", type=int, default=50_000,
                   help="most vectors an approximate index may examine for one request (default: 50000)")
    v.add_argument("--max-query-pixels", type=int, default=16_000_000,
                   help="largest query image accepted, in pixels (default: 16000000)")
    v.add_argument("--max-heavy", type=int, default=2,
                   help="queries encoded or images decoded at once; more wait, then get a 503 (default: 2)")
    v.add_argument("--max-connections", type=int, default=64, help="open connections; more get a 503 (default: 64)")
    v.add_argument("--device", default=None, help="where queries are encoded: cpu, cuda, cuda:N (default: CUDA when "
                   "present)")
    add_inference_options(v)
    v.set_defaults(func=run_serve)


def run_embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipforge.checkpoints import load
    from clipforge.engine.distributed import barrier, default_device, init_distributed
    from clipforge.errors import ConfigError
    from clipforge.inference.choice import prepare_for_inference
    from clipforge.search.embed import embed_collection, skipped_items

    if args.part_size < 1 or args.batch_size < 1:
        raise ConfigError("--part-size and --batch-size must be at least 1")
    if args.checkpoint_seconds < 0:
        raise ConfigError(f"--checkpoint-seconds must be 0 (never) or more, got {args.checkpoint_seconds}")
    info = init_distributed()  # under torchrun, each rank embeds its share of the parts
    device = default_device(info, args.device)
    if not info.is_main:
        barrier(info)  # rank 0 measures the inference paths (and exports) first; the others read its cache
    model = prepare_for_inference(load(args.model), device, args.backend, args.precision)
    if info.is_main:
        barrier(info)
    out = embed_collection(model, args.images, args.out, model_path=str(Path(args.model).resolve()),
                           part_size=args.part_size, batch_size=args.batch_size, captions=args.captions,
                           workers=args.workers, image_column=args.image_column, caption_column=args.caption_column,
                           checkpoint_seconds=args.checkpoint_seconds, info=info, device=device)
    if info.is_main:
        skipped = skipped_items(out)
        note = f"; {len(skipped)} unreadable image(s) listed in skipped-*.jsonl" if skipped else ""
        print(f"embeddings in {out}{note}")
    return 0


def run_index(args: argparse.Namespace) -> int:
    import json

    from clipforge.search.index import build_index

    out = build_index(args.emb_dir, args.out, args.memory_mb, args.kind, args.dedup_threshold, args.target_recall,
                      threads=args.threads, verbose=True, partial=args.partial, backend=args.backend,
                      milvus_uri=args.milvus_uri, milvus_collection=args.milvus_collection)
    info = json.loads((out / "index.json").read_text())
    tuned = (f"; effort {info['effort']} ({info['tuning']['effort']}) measured recall@10 {info['recall_at_10']:.3f}"
             if "tuning" in info else "")
    print(f"{info['kind']} index of {info['n']} vectors in {out}: {info['reason']}{tuned}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipforge.errors import ClipforgeError
    from clipforge.search.service import Limits, SearchService

    if not args.query and not (args.image or args.speech or args.depth):
        raise ClipforgeError("give a text query, --image (or --speech/--depth), or both (the image plus the text)")
    for flag in ("image", "speech", "depth"):
        if getattr(args, flag) and not Path(getattr(args, flag)).is_file():
            raise ClipforgeError(f"--{flag} {getattr(args, flag)}: no such file")
    modality = next(((m, getattr(args, m)) for m in ("speech", "depth") if getattr(args, m)), None)
    # The command line is trusted: no request limits beyond what the index can answer.
    service = SearchService(args.index_dir, args.model,
                            Limits(max_k=10**9, max_depth=10**9, max_candidates=10**12, max_query_pixels=89_478_485),
                            device=args.device)
    results = service.search(text=args.query, image=Path(args.image).read_bytes() if args.image else None,
                             k=args.k, offset=args.offset, threshold=args.threshold, dedup=args.dedup,
                             effort=args.effort, text_weight=args.text_weight, match=args.match, modality=modality)
    for r in results:
        if r.path:
            print(f"{r.score:.3f}  {r.path}" + (f"  ({r.caption})" if r.caption else ""))
        else:  # an index of texts (clipforge text embed): the text is the result
            text = r.caption if len(r.caption) <= 200 else r.caption[:199] + "…"
            print(f"{r.score:.3f}  {text}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from clipforge.errors import ConfigError
    from clipforge.search.server import serve
    from clipforge.search.service import Limits

    for name in ("max_k", "max_candidates", "max_query_pixels", "max_heavy", "max_connections"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    limits = Limits(max_k=args.max_k, max_candidates=args.max_candidates, max_query_pixels=args.max_query_pixels,
                    max_heavy=args.max_heavy)
    print(f"serving {args.index_dir} on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    serve(args.index_dir, args.model, args.host, args.port, limits, max_connections=args.max_connections,
          device=args.device, backend=args.backend, precision=args.precision)
    return 0
