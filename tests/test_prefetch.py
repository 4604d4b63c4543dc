"""The background batch maker (clipforge.engine.prefetch): the batches in order, an error raised in
the consumer, a generator closed early stops its thread, and training is the same with and without it."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from clipforge.engine.prefetch import prefetch
from clipforge.training.config import TrainConfig
from clipforge.training.trainer import train
from helpers import tiny_synth, tiny_train_config


def test_batches_come_in_order_at_every_depth() -> None:
    for depth in (0, 1, 2, 5):
        assert list(prefetch(iter(range(20)), depth)) == list(range(20))


def test_an_error_in_the_producer_is_raised_in_the_consumer() -> None:
    def broken():
        yield 1
        raise ValueError("row 7: bad image")

    got = []
    with pytest.raises(ValueError, match="row 7"):
        for x in prefetch(broken(), 2):
            got.append(x)
    assert got == [1]


def test_closing_early_stops_the_thread() -> None:
    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    gen = prefetch(endless(), 2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    time.sleep(0.3)
    assert not any(t.name == "clipforge-prefetch" for t in threading.enumerate())
    assert len(made) <= 3 + 2 + 1  # what was consumed, the queue's depth, one in hand


def test_the_thread_prefetches_only_where_a_core_is_free(monkeypatch) -> None:
    from clipforge.engine import prefetch as module

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(module.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert module.prefetch_depth(2, 0, cpu) == 2  # one thread on two cores: the thread has a core
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert module.prefetch_depth(2, 0, cpu) == 0  # two ranks of one thread each fill both cores
    assert module.prefetch_depth(2, 0, gpu) == 2  # the step runs on the GPU
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert module.prefetch_depth(2, 0, cpu) == 0
    assert module.prefetch_depth(2, 2, gpu) == 0  # worker processes prefetch already


@pytest.mark.slow
def test_training_is_the_same_with_and_without_prefetch(tmp_path, monkeypatch) -> None:
    from safetensors.torch import load_file

    from clipforge.training import task

    monkeypatch.setattr(task, "prefetch_depth", lambda requested, workers, device: requested)  # whatever the cores
    data = tiny_synth(tmp_path / "data", n_train=48, n_val=8)
    for depth in (0, 2):
        cfg = tiny_train_config(data, tmp_path / f"p{depth}", epochs=1)
        cfg["data"]["prefetch"] = depth
        train(TrainConfig.from_dict(cfg), progress=False)
    a, b = (load_file(str(tmp_path / f"p{d}" / "model" / "model.safetensors")) for d in (0, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
