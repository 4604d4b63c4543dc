"""Data sources: CSV, folder and shards give the same samples; bad rows and files are reported."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from clipforge.cli.main import main
from clipforge.data.pairs import DataError, PairDataset, Sample, read_csv_pairs, read_pairs
from clipforge.data.shards import ShardDataset, count_samples, pack_shards
from clipforge.data.synthetic import SynthConfig, generate, heldout_combinations
from clipforge.images import Preprocess
from clipforge.tokenizer import BPETokenizer
from clipforge.training.config import TrainConfig
from clipforge.training.trainer import train
from helpers import tiny_synth, tiny_train_config


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tiny_synth(tmp_path_factory.mktemp("synth"), n_train=40, n_val=8)


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer(context_length=32)


def _as_folder(synth, root):
    """The same pairs as a folder of x.png + x.txt."""
    rows = list(csv.DictReader(open(synth / "train.csv")))  # noqa: SIM115
    root.mkdir()
    for i, r in enumerate(rows):
        shutil.copy(synth / r["image"], root / f"{i:04d}.png")
        (root / f"{i:04d}.txt").write_text(r["caption"])
    return root


def _samples(dataset) -> dict[str, torch.Tensor]:
    """caption tokens (as a key) -> image tensor, for every sample of a dataset."""
    out = {}
    for s in dataset:
        assert isinstance(s, Sample)
        out[str(s.tokens.tolist())] = s.image
    return out


def test_csv_folder_and_shards_give_the_same_samples(synth, tmp_path, tok) -> None:
    pre = Preprocess(image_size=32)
    csv_pairs, _ = read_pairs(synth / "train.csv")
    folder_pairs, _ = read_pairs(_as_folder(synth, tmp_path / "folder"))
    assert len(csv_pairs) == len(folder_pairs) == 40
    shards, skipped = pack_shards(csv_pairs, tmp_path / "shards", shard_size=16, progress=False)
    assert len(shards) == 3 and not skipped
    assert count_samples(str(tmp_path / "shards" / "shard-{000000..000002}.tar")) == 40
    a = _samples(PairDataset(csv_pairs, pre, tok))
    b = _samples(PairDataset(folder_pairs, pre, tok))
    c = _samples(ShardDataset(str(tmp_path / "shards" / "shard-{000000..000002}.tar"), pre, tok))
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k])


def test_shards_split_across_ranks_and_workers_without_repeats(synth, tmp_path, tok) -> None:
    pairs, _ = read_pairs(synth / "train.csv")
    pack_shards(pairs, tmp_path / "s", shard_size=5, progress=False)  # 8 shards
    url = str(tmp_path / "s" / "shard-{000000..000007}.tar")
    pre = Preprocess(image_size=32)
    seen = []
    for rank in range(2):
        ds = ShardDataset(url, pre, tok, train=True, rank=rank, world_size=2, shuffle_buffer=10)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        seen += [str(s.tokens.tolist()) + str(s.image.sum().item()) for s in loader]
    assert len(seen) == 40 == len(set(seen))


def test_csv_errors_name_file_and_column(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("path,text\nx.png,hello\n")
    with pytest.raises(DataError, match=r"a.csv: no image column 'image'; the header has \['path', 'text'\]"):
        read_csv_pairs(tmp_path / "a.csv")
    pairs, skipped = read_csv_pairs(tmp_path / "a.csv", "path", "text")
    assert pairs[0].image == str(tmp_path / "x.png")
    (tmp_path / "b.tsv").write_text("image\tcaption\nx.png\thello\n\tno image\ny.png\n")
    pairs, skipped = read_csv_pairs(tmp_path / "b.tsv")
    assert len(pairs) == 1 and [s.source for s in skipped] == [f"{tmp_path / 'b.tsv'}:3", f"{tmp_path / 'b.tsv'}:4"]


def test_pack_cli_reports_skips(synth, tmp_path, capsys) -> None:
    rows = (synth / "train.csv").read_text().splitlines()
    (tmp_path / "d.csv").write_text("\n".join(rows[:5] + ["missing.png,a missing image", "x.png,"]) + "\n")
    shutil.copytree(synth / "images", tmp_path / "images")
    assert main(["data", "pack", str(tmp_path / "d.csv"), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote 4 samples in 1 shards" in out and "unreadable image: 1" in out and "empty caption: 1" in out


@pytest.mark.slow
def test_training_on_shards_resumes_exactly(synth, tmp_path) -> None:
    from safetensors.torch import load_file

    pairs, _ = read_pairs(synth / "train.csv")
    pack_shards(pairs, tmp_path / "s", shard_size=10, progress=False)
    url = str(tmp_path / "s" / "shard-{000000..000003}.tar")
    base = tiny_train_config(synth, tmp_path / "a", batch_size=8, epochs=2)
    base["data"] = {"train": url, "shuffle_buffer": 16}
    full = train(TrainConfig.from_dict(base), progress=False)
    assert full.state.step == 10  # 40 samples / 8 per batch x 2 epochs
    b = dict(base, out_dir=str(tmp_path / "b"), max_steps=7)
    train(TrainConfig.from_dict(b), progress=False)
    b.pop("max_steps")
    train(TrainConfig.from_dict(b), resume="latest", progress=False)
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_synthetic_split_never_shows_heldout_combinations() -> None:
    cfg = SynthConfig(n_train=300, n_val=10, n_zeroshot_per_class=1, image_size=32)
    heldout = {f"{c} {s}" for s, c in heldout_combinations()}
    for _, caption, _ in generate("train", cfg):
        assert not any(h in caption for h in heldout), caption
    labels = {label for _, _, label in generate("zeroshot_heldout", cfg)}
    assert labels == heldout


def test_synthetic_is_deterministic() -> None:
    cfg = SynthConfig(n_train=5, image_size=32)
    a = [(im.tobytes(), c) for im, c, _ in generate("train", cfg)]
    b = [(im.tobytes(), c) for im, c, _ in generate("train", cfg)]
    assert a == b
