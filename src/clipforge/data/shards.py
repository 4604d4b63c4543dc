"""WebDataset tar shards, as img2dataset and open_clip write them (``jpg``/``png``/``webp`` + ``txt``).

:func:`pack_shards` writes shards from any pairs (CSV or folder), so every dataset can be streamed.
:class:`ShardDataset` streams them with the ``webdataset`` library: brace-expanded shard lists
(``data/shard-{000000..000099}.tar``), several sources joined with ``::``, a shuffle buffer, and
optional resampling of shards with replacement for multi-epoch / multi-source mixing. Shards are
split across ranks, then across data-loader workers, so no sample is read twice per pass.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info

from clipforge.data.pairs import DataError, Pair, Sample, Skipped, sample_seed
from clipforge.errors import ImageReadError
from clipforge.images.decode import open_image
from clipforge.images.preprocess import Preprocess

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt", "caption")


def is_shard_source(source: str) -> bool:
    return ".tar" in source


def expand_urls(source: str) -> list[str]:
    """``a/{000..009}.tar::b/x.tar`` -> the list of shard paths."""
    urls = [u for part in source.split("::") for u in braceexpand(part.strip())]
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise DataError(f"{len(missing)} shard file(s) not found, e.g. {missing[0]}")
    return urls


def count_samples(source: str) -> int | None:
    """Total samples from the ``shards.json`` that :func:`pack_shards` writes, when every shard has one."""
    total = 0
    for url in expand_urls(source):
        meta = Path(url).parent / "shards.json"
        if not meta.is_file():
            return None
        counts = json.loads(meta.read_text()).get("shards", {})
        if Path(url).name not in counts:
            return None
        total += counts[Path(url).name]
    return total


def pack_shards(pairs: list[Pair], out_dir: str | Path, shard_size: int = 1000,
                progress: bool = True) -> tuple[list[Path], list[Skipped]]:
    """Write pairs as ``out_dir/shard-000000.tar`` ... plus ``shards.json`` (samples per shard).

    Images are stored as their original bytes (jpg/png/webp); other formats are re-encoded to PNG.
    Unreadable images and empty captions are left out and returned as skipped.
    """
    from clipforge.utils.progress import progress_bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[Skipped] = []
    counts: dict[str, int] = {}
    written = 0
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=shard_size, verbose=0) as sink, \
            progress_bar("pack", total=len(pairs), enabled=progress) as bar:
        for pair in pairs:
            bar.advance()
            if not pair.caption.strip():
                skipped.append(Skipped("empty caption", pair.image))
                continue
            try:
                img = open_image(pair.image)
            except ImageReadError as e:
                skipped.append(Skipped("unreadable image", pair.image, str(e)))
                continue
            ext = Path(pair.image).suffix.lower().lstrip(".")
            ext = "jpg" if ext == "jpeg" else ext
            if ext in IMAGE_KEYS:
                data = Path(pair.image).read_bytes()
            else:
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                ext, data = "png", buf.getvalue()
            sink.write({"__key__": f"{written:09d}", ext: data, "txt": pair.caption})
            name = Path(sink.fname).name  # read after write: the writer opens a new shard on write
            counts[name] = counts.get(name, 0) + 1
            written += 1
    (out / "shards.json").write_text(json.dumps({"total": written, "shards": counts}, indent=2))
    return sorted(out / n for n in counts), skipped


def iter_captions(source: str) -> Iterator[str]:
    """Every caption in the shards, without decoding images (to train a tokenizer)."""
    pipeline = wds.DataPipeline(wds.SimpleShardList(expand_urls(source)),
                                wds.tarfile_to_samples(handler=wds.warn_and_continue))
    for sample in pipeline:
        key = next((k for k in CAPTION_KEYS if k in sample), None)
        if key:
            yield sample[key].decode("utf-8", errors="replace")


class ShardDataset(IterableDataset):
    """Streams (image, tokens) samples from shards; a bad sample comes back as :class:`Skipped`.

    Args:
        source: shard paths, brace-expanded, sources joined with ``::``.
        preprocess, tokenizer, train: as for :class:`~clipforge.data.pairs.PairDataset`.
        seed: seeds shard order, the shuffle buffer and augmentation (with the epoch).
        shuffle_buffer: samples held for shuffling (0: stream order).
        resampled: draw shards with replacement, endlessly (multi-epoch / multi-source mixing).
        rank, world_size: this process's share of the shards.
        batch_size: this rank's batch size, used to skip ``start_batch`` batches exactly on resume.
    """

    def __init__(self, source: str, preprocess: Preprocess, tokenizer: Callable, train: bool = False, seed: int = 0,
                 shuffle_buffer: int = 1000, resampled: bool = False, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1) -> None:
        self.urls = expand_urls(source)
        self.preprocess, self.tokenizer, self.train = preprocess, tokenizer, train
        self.seed, self.shuffle_buffer, self.resampled = seed, shuffle_buffer, resampled
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch = 0
        self.start_batch = 0
        self.tar_errors = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _pipeline(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        seed = self.seed + 1000 * self.epoch
        if self.resampled:
            shards: Any = wds.ResampledShards(self.urls, seed=seed, deterministic=True)
        else:
            shards = wds.SimpleShardList(self.urls, seed=seed if self.train else None)
        stride, offset = self.world_size * workers, self.rank * workers + worker

        def mine(src: Iterator[dict]) -> Iterator[dict]:
            for i, s in enumerate(src):
                if i % stride == offset:
                    yield s

        def on_error(exn: Exception) -> bool:
            self.tar_errors += 1
            return True  # keep going: a broken tar member costs one sample, not the run

        stages: list[Any] = [shards, mine, wds.tarfile_to_samples(handler=on_error)]
        if self.train and self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer),
                                      rng=random.Random(seed * 7919 + offset)))
        return iter(wds.DataPipeline(*stages))

    def __iter__(self) -> Iterator[Sample | Skipped]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader deals batches round-robin over workers: skip this worker's share of the
        # batches consumed before a resume, undecoded.
        skip_batches = len(range(worker, self.start_batch, workers))
        stream = self._pipeline(worker, workers)
        for _ in range(skip_batches * self.batch_size):
            if next(stream, None) is None:
                return
        for n, sample in enumerate(stream):
            yield self._decode(sample, n)

    def _decode(self, sample: dict[str, Any], n: int) -> Sample | Skipped:
        key = f"{sample.get('__url__', '?')}#{sample.get('__key__', '?')}"
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        caption_key = next((k for k in CAPTION_KEYS if k in sample), None)
        if image_key is None:
            return Skipped("missing image", key, f"no {'/'.join(IMAGE_KEYS)} entry")
        caption = sample[caption_key].decode("utf-8", errors="replace") if caption_key else ""
        if not caption.strip():
            return Skipped("empty caption", key)
        try:
            gen = None
            if self.train:
                gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, key))
            image = self.preprocess(open_image(sample[image_key], name=key), train=self.train, generator=gen)
        except ImageReadError as e:
            return Skipped("unreadable image", key, str(e).removeprefix(f"{key}: "))
        return Sample(-1, image, self.tokenizer([caption])[0])
