"""Batches made by a background thread while the model computes on the previous one.

Decoding PNGs and resizing (Pillow) and torch's kernels release the GIL, so one thread overlaps most
of the data loading with the step without the start-up and memory of worker processes. The batches
and their order are the iterable's own: exact resume and determinism are unchanged.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")
_DONE = object()


def prefetch(batches: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``batches`` in order, up to ``depth`` made ahead by a daemon thread; an exception in the
    thread is raised here, and closing the generator stops the thread."""
    if depth < 1:
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Hand ``item`` over, waiting while the queue is full; False once the consumer has gone."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which raises it
            put(e)

    thread = threading.Thread(target=produce, name="clipforge-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def prefetch_depth(requested: int, workers: int, device: torch.device) -> int:
    """``requested`` where a background thread has a core to itself (the step runs on a GPU, or
    torch's threads in this machine's processes leave a core free), else 0: with every core busy the
    thread would compete with the step instead of filling its gaps. Worker processes prefetch already."""
    if workers:
        return 0
    if device.type == "cuda":
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return requested if cores > torch.get_num_threads() * local_processes else 0
