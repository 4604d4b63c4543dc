"""Batches made by a background thread while the model computes on the previous one.

Decoding PNGs and resizing (Pillow) and torch's kernels release the GIL, so one thread overlaps most
of the data loading with the step without the start-up and memory of worker processes. The batches
and their order are the iterable's own: exact resume and determinism are unchanged.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

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
