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
    # Re-running reuses the dataset.
    run_demo(tmp_path / "demo", synth, epochs=1, progress=False, command="test", caption_epochs=0)
    assert "reusing the synthetic dataset" in capsys.readouterr().err


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
