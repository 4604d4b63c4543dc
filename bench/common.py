"""Small helpers shared by the benchmark scripts: timing, machine description, tables."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores available, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def timeit(fn: Callable[[], object], min_time: float = 1.0, min_reps: int = 2, warmup: int = 1) -> float:
    """Median seconds per call, over at least ``min_reps`` calls and ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def in_fresh_process(target: Callable, *args: object) -> object:
    """What ``target(*args, queue)`` puts on the queue, run in a new (spawned) Python process, so each
    measurement has its own memory peak and no warm caches."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
