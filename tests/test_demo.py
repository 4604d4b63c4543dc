"""The main job end to end on a tiny synthetic dataset: data, training, evaluation, report."""

from __future__ import annotations

import json

import pytest

from clipforge.data.synthetic import SynthConfig
from clipforge.demo import demo_summary, run_demo


@pytest.mark.slow
def test_demo_writes_report(tmp_path, capsys) -> None:
    synth = SynthConfig(seed=0, image_size=64, n_train=256, n_val=32, n_zeroshot_per_class=1)
    results = run_demo(tmp_path / "demo", synth, epochs=1, progress=False, command="test")
    html = (tmp_path / "demo" / "report" / "index.html").read_text()
    for part in ("Training", "Zero-shot classification", "Similarity matrix", "Text -> image search",
                 "data:image/png;base64,", "&#9998;"):  # the last: generated captions under the images
        assert part in html, part
    assert len(results["captions"]) == 12 and all(c["generated"] for c in results["captions"])
    saved = json.loads((tmp_path / "demo" / "report" / "results.json").read_text())
    assert saved["zeroshot_heldout"]["acc1"] == results["zeroshot_heldout"]["acc1"]
    assert 0 <= results["retrieval_val"]["image_retrieval_recall@10"] <= 1
    summary = demo_summary(results)
    assert "report:" in summary and "zero-shot acc1" in summary and "captions (ClipCap" in summary
    assert results["zeroshot_heldout_last_epochs"]["values"] == [results["zeroshot_heldout"]["acc1"]]
    # Re-running reuses the dataset.
    run_demo(tmp_path / "demo", synth, epochs=1, progress=False, command="test", caption_epochs=0)
    assert "reusing the synthetic dataset" in capsys.readouterr().err


def test_the_held_out_figure_comes_with_its_spread_over_the_last_epochs() -> None:
    from clipforge.demo import last_epochs_spread

    evals = [{"heldout/acc1": v, "seen/acc1": 0.9} for v in (0.1, 0.31, 0.65, 0.5)] + [{"seen/acc1": 0.9}]
    s = last_epochs_spread(evals, "heldout/acc1")
    assert s["values"] == [0.31, 0.65, 0.5] and s["mean"] == pytest.approx(0.4866667, rel=1e-6)
    assert s["sd"] == pytest.approx(0.1703917, rel=1e-6)  # the sample standard deviation
    results = {"report": "r", "zeroshot_seen": {"acc1": 0.9}, "zeroshot_heldout": {"acc1": 0.5},
               "retrieval_val": {f"{d}_retrieval_recall@{k}": 0.5 for d in ("image", "text") for k in (1, 5, 10)},
               "zeroshot_heldout_last_epochs": s, "train_seconds": 60, "captioner_train_seconds": 6,
               "total_seconds": 90, "epochs": 18, "precision": "bf16"}
    assert "held-out combinations 50.0% (last 3 epochs: 48.7% ± 17.0%)" in demo_summary(results)
    assert "(18 epochs, bf16;" in demo_summary(results)


@pytest.mark.slow
def test_generation_demo_reuses_the_demo_and_writes_a_judged_report(tmp_path) -> None:
    from clipforge.demo import run_generation_demo
    from clipforge.generation.sample import SampleOptions

    synth = SynthConfig(seed=0, image_size=64, n_train=256, n_val=32, n_zeroshot_per_class=1)
    m = run_generation_demo(tmp_path / "demo", minutes=0.05, judge_epochs=1, progress=False, synth=synth,
                            samples=SampleOptions(n=1, steps=2))
    for folder in ("run/model", "judge/model", "generator/model", "generation/report.html"):
        assert (tmp_path / "demo" / folder).exists(), folder
    assert 0 <= m["heldout"]["colour_and_shape_acc"] <= 1 and m["report"].endswith("report.html")
