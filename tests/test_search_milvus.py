"""The Milvus backend (embedded Milvus Lite started by the test) passes the FAISS kinds' search checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import clipforge
from clipforge.search.embed import embed_collection, read_embeddings, save_embeddings
from clipforge.search.index import build_index
from clipforge.search.searcher import Searcher
from clipforge.search.tuning import exact_top_k, perturbed_queries, recall_at_k, unit_rows

pytest.importorskip("pymilvus", reason="the milvus extra (pip install pymilvus milvus-lite)")
pytest.importorskip("milvus_lite", reason="the milvus extra (pip install pymilvus milvus-lite)")


def test_milvus_flat_is_exact_search(tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((3000, 24)).astype(np.float32)
    save_embeddings(tmp_path / "emb", x, captions=[f"c{i}" for i in range(3000)])
    build_index(tmp_path / "emb", tmp_path / "idx", backend="milvus")
    info = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert info["kind"] == "milvus" and info["milvus"]["index_type"] == "FLAT"
    assert (tmp_path / "idx" / "milvus.db").exists()
    s = Searcher(tmp_path / "idx")
    data = unit_rows(read_embeddings(tmp_path / "emb")[0])
    queries = perturbed_queries(data, 50, seed=3)
    found = np.array([[r.id for r in s.search(q, k=10)[0]] for q in queries])
    assert recall_at_k(exact_top_k(data, queries, 10), found) >= 0.99  # float rounding may swap near-ties
    hits = s.search(data[17], k=3)[0]
    assert hits[0].id == 17 and hits[0].caption == "c17" and abs(hits[0].score - 1) < 1e-3
    np.testing.assert_allclose(s.stored_vector(s.row_of(17)), data[17], atol=2e-3)
    page2 = s.search(data[17], k=3, offset=3)[0]
    assert not {r.id for r in page2} & {r.id for r in hits}


def test_milvus_ivf_reaches_the_recall_target_and_serves(tmp_path) -> None:
    x = np.random.default_rng(1).standard_normal((6000, 32)).astype(np.float32)
    save_embeddings(tmp_path / "emb", x)
    build_index(tmp_path / "emb", tmp_path / "idx", backend="milvus", exact_limit=1000)
    s = Searcher(tmp_path / "idx")
    assert s.info["milvus"]["index_type"] == "IVF_FLAT" and s.info["tuning"]["effort"] == "nprobe"
    assert s.info["effort"] > 1  # tuned on the built IVF index, not on an unindexed (exact) segment
    data = unit_rows(read_embeddings(tmp_path / "emb")[0])
    fresh = perturbed_queries(data, 100, seed=9)
    found = np.array([[r.id for r in s.search(q, k=10)[0]] for q in fresh])
    assert recall_at_k(exact_top_k(data, fresh, 10), found) >= 0.9
    del s
    from clipforge.search.server import create_app

    client = TestClient(create_app(tmp_path / "idx"))
    r = client.post("/search", json={"vector": data[5].tolist(), "k": 4})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == 5
    assert client.post("/search", json={"id": 5, "k": 1}).json()["results"][0]["id"] == 5


def test_milvus_backend_end_to_end_with_images(tmp_path) -> None:
    """embed -> index --backend milvus -> serve: text query, image bytes, the page's stats."""
    from clipforge.cli.main import main

    (tmp_path / "imgs").mkdir()
    for i, colour in enumerate([(220, 30, 30), (30, 180, 60), (30, 60, 220)] * 3):
        img = Image.new("RGB", (32, 32), colour)
        img.paste((255, 255, 255), (i * 3, i * 3, i * 3 + 5, i * 3 + 5))
        img.save(tmp_path / "imgs" / f"{i}.png")
        (tmp_path / "imgs" / f"{i}.txt").write_text(f"image {i}")
    clipforge.save(clipforge.build("tiny-vit-32"), tmp_path / "model")
    embed_collection(clipforge.load(tmp_path / "model"), str(tmp_path / "imgs"), tmp_path / "emb",
                     model_path=str(tmp_path / "model"), progress=False)
    assert main(["index", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"), "--backend", "milvus"]) == 0
    from clipforge.search.server import create_app

    client = TestClient(create_app(tmp_path / "idx"))
    assert client.get("/stats").json()["index"] == "milvus"
    hits = client.post("/search", json={"text": "a red square", "k": 9}).json()["results"]
    assert len(hits) == 9
    assert client.get(hits[0]["image_url"]).content == (tmp_path / "imgs" / f"{hits[0]['id']}.png").read_bytes()
    assert main(["index", str(tmp_path / "emb"), "--out", str(tmp_path / "idx2"), "--backend", "milvus",
                 "--kind", "flat"]) == 2
