"""Embedding a collection (resumable), indexes (exact and approximate), the HTTP service and client."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

import clipforge
from clipforge.errors import ClipforgeError
from clipforge.search.embed import embed_collection, read_embeddings, skipped_items
from clipforge.search.index import build_faiss, build_index, choose_index, near_duplicate_groups
from clipforge.search.searcher import Searcher

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 210, 30)}


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("coll")
    imgs = root / "imgs"
    imgs.mkdir()
    for i in range(20):  # distinct images: a colour with a white mark at a different place each
        name = list(COLOURS)[i % 4]
        img = Image.new("RGB", (32, 32), COLOURS[name])
        img.paste((255, 255, 255), (i % 5 * 6, i // 5 * 6, i % 5 * 6 + 6, i // 5 * 6 + 6))
        img.save(imgs / f"{i:03d}.png")
        (imgs / f"{i:03d}.txt").write_text(f"a {name} square")
    for j in range(20, 23):  # three byte-identical copies of image 0
        (imgs / f"{j:03d}.png").write_bytes((imgs / "000.png").read_bytes())
        (imgs / f"{j:03d}.txt").write_text("a red square")
    (imgs / "broken.png").write_bytes(b"not an image")
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, root / "model")
    return root


def test_embedding_resumes_to_the_same_files(collection, tmp_path) -> None:
    model = clipforge.load(collection / "model")
    src = str(collection / "imgs")
    full = embed_collection(model, src, tmp_path / "full", part_size=5, captions=True, progress=False)
    part = embed_collection(model, src, tmp_path / "part", part_size=5, captions=True, progress=False, max_parts=2)
    assert len(list(part.glob("part-*.parquet"))) == 2  # interrupted after two parts
    embed_collection(model, src, tmp_path / "part", part_size=5, captions=True, progress=False)
    for f in sorted(p.name for p in full.iterdir()):
        if f.endswith((".npy", ".jsonl")):
            assert (full / f).read_bytes() == (part / f).read_bytes(), f
    vectors, meta, manifest = read_embeddings(full)
    assert vectors.shape == (23, 128) and manifest["items"] == 24
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)  # float16, unit length
    assert set(meta.column_names) >= {"id", "path", "caption", "width", "height", "sha1"}
    assert [s["path"].endswith("broken.png") for s in skipped_items(full)] == [True]
    with pytest.raises(ClipforgeError, match="another run"):
        embed_collection(model, src, full, part_size=7, progress=False)


def test_exact_index_returns_the_exact_top_k(collection, tmp_path) -> None:
    model = clipforge.load(collection / "model")
    emb = embed_collection(model, str(collection / "imgs"), tmp_path / "emb", progress=False)
    build_index(emb, tmp_path / "idx")
    s = Searcher(tmp_path / "idx")
    assert s.info["kind"] == "flat"
    vectors, meta, _ = read_embeddings(emb)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q = vectors[3]
    exact = np.sort(vectors @ q)[::-1][:5]
    results = s.search(q, k=5)[0]
    got = [r.id for r in results]
    ids = meta.column("id").to_pylist()
    assert got[0] == ids[3]
    np.testing.assert_allclose([r.score for r in results], exact, atol=1e-5)  # the exact top-5 scores
    by_id = dict(zip(ids, vectors @ q))
    np.testing.assert_allclose([r.score for r in results], [by_id[i] for i in got], atol=1e-5)
    page2 = [r.id for r in s.search(q, k=5, offset=5)[0]]
    assert not set(page2) & set(got)
    assert all(r.score >= 0.99 for r in s.search(q, k=20, threshold=0.99)[0])


def test_index_build_is_atomic(collection, tmp_path, monkeypatch) -> None:
    model = clipforge.load(collection / "model")
    emb = embed_collection(model, str(collection / "imgs"), tmp_path / "emb", progress=False)
    build_index(emb, tmp_path / "idx")
    before = (tmp_path / "idx" / "index.json").read_text()
    import clipforge.search.index as index_module

    def boom(*a, **k):
        raise RuntimeError("crash while building")

    monkeypatch.setattr(index_module, "build_faiss", boom)
    with pytest.raises(RuntimeError):
        build_index(emb, tmp_path / "idx")
    assert (tmp_path / "idx" / "index.json").read_text() == before  # the good index is untouched
    assert Searcher(tmp_path / "idx").search(read_embeddings(emb)[0][0], k=1)[0]


def test_index_choice_follows_size_and_budget() -> None:
    assert choose_index(10_000, 512)["kind"] == "flat"
    assert choose_index(1_000_000, 512)["kind"] == "hnsw"
    spec = choose_index(1_000_000, 512, memory_budget_mb=1000)
    assert spec["kind"] == "ivfpq" and spec["m"] == 64 and "budget" in spec["reason"]


@pytest.mark.slow
def test_approximate_recall_at_10_on_100k_random_unit_vectors() -> None:
    import faiss

    rng = np.random.default_rng(0)
    data = rng.standard_normal((100_000, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[rng.choice(100_000, 200, replace=False)] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(64)
    exact.add(data)
    _, truth = exact.search(queries, 10)
    hnsw = build_faiss(data, {"kind": "hnsw", "M": 32, "efConstruction": 200, "efSearch": 128})
    _, got = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
    assert recall >= 0.95, recall


def test_near_duplicate_groups() -> None:
    v = np.eye(4, 8, dtype=np.float32)
    v = np.vstack([v, v[1] * 0.999 + 0.001])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    groups = near_duplicate_groups(v, threshold=0.99)
    assert groups[4] == groups[1] and len(set(groups.tolist())) == 4


# --- the HTTP service -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(collection, tmp_path_factory):
    from fastapi.testclient import TestClient

    from clipforge.search.server import create_app

    work = tmp_path_factory.mktemp("srv")
    model = clipforge.load(collection / "model")
    emb = embed_collection(model, str(collection / "imgs"), work / "emb", model_path=str(collection / "model"),
                           progress=False)
    build_index(emb, work / "idx", dedup_threshold=0.999)
    return TestClient(create_app(work / "idx"))


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (30, 30), COLOURS["red"]).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _file_b64(collection, name: str) -> str:
    return base64.b64encode((collection / "imgs" / name).read_bytes()).decode()


def test_search_endpoints(client, collection) -> None:
    assert client.get("/health").json() == {"status": "ok", "items": 23}
    assert client.get("/stats").json()["index"] == "flat"
    by_text = client.post("/search", json={"text": "a red square", "k": 5}).json()["results"]
    assert len(by_text) == 5 and {"id", "score", "image_url", "thumb_url"} <= set(by_text[0])
    query = "data:image/png;base64," + _file_b64(collection, "005.png")
    by_image = client.post("/search", json={"image": query, "k": 3}).json()["results"]
    assert by_image[0]["caption"] == "a green square" and by_image[0]["score"] > 0.999
    by_id = client.post("/search", json={"id": by_image[0]["id"], "k": 1}).json()["results"]
    assert by_id[0]["id"] == by_image[0]["id"]
    vec = [0.0] * 128
    vec[0] = 1.0
    assert len(client.post("/search", json={"vector": vec, "k": 4}).json()["results"]) == 4
    deduped = client.post("/search", json={"text": "a red square", "k": 23, "dedup": True}).json()["results"]
    kept = {r["id"] for r in deduped}
    assert len(kept & {0, 20, 21, 22}) <= 1 and len(deduped) < 23  # byte-identical copies collapse to one
    img = client.get(by_text[0]["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert client.get(by_text[0]["thumb_url"] + "?size=32").status_code == 200
    assert "clipforge search" in client.get("/").text
    assert client.get("/openapi.json").json()["info"]["title"] == "clipforge search"


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"text": "x", "k": 10_000}, 422, "k"),
    ({"text": "x", "k": 0}, 422, "k"),
    ({"image": "%%% not base64 %%%"}, 400, "base64"),
    ({"id": 99_999}, 404, "no item"),
    ({"vector": [1.0, 2.0]}, 400, "dimension"),
    ({}, 400, "exactly one"),
    ({"text": "  "}, 400, "empty"),
    ({"text": "x", "image": _png()}, 400, "exactly one"),
])
def test_bad_requests_get_json_errors(client, body, status, message) -> None:
    r = client.post("/search", json=body)
    assert r.status_code == status and message in r.json()["error"]


def test_bad_json_and_oversized_body(client) -> None:
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = client.post("/search", content=b"x" * 100, headers={"content-length": str(50 * 2**20)})
    assert r.status_code == 413


@pytest.mark.parametrize("path", ["/image/../../etc/passwd", "/image/..%2F..%2Fetc%2Fpasswd",
                                  "/image/%2e%2e/%2e%2e/etc/passwd", "/image/-1", "/image/99999", "/thumb/abc",
                                  "/image/0%00", "/image//etc/passwd"])
def test_no_path_traversal(client, path) -> None:
    r = client.get(path)
    assert r.status_code in (404, 422) and "root:" not in r.text


def test_python_client_against_a_live_server(collection, tmp_path) -> None:
    from clipforge.search import Client
    from clipforge.search.server import BackgroundServer, create_app

    model = clipforge.load(collection / "model")
    emb = embed_collection(model, str(collection / "imgs"), tmp_path / "emb", model_path=str(collection / "model"),
                           progress=False)
    build_index(emb, tmp_path / "idx")
    with BackgroundServer(create_app(tmp_path / "idx")) as url:
        c = Client(url)
        assert c.health()["items"] == 23
        assert len(c.search_text("a blue square", k=3)) == 3
        assert c.search_image(collection / "imgs" / "002.png", k=1)[0]["caption"] == "a blue square"
        with pytest.raises(ClipforgeError, match="422"):
            c.search_text("x", k=100_000)
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["n"] == 23


def test_effort_raises_hnsw_recall(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    data = rng.standard_normal((3000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    emb = tmp_path / "emb"
    emb.mkdir()
    np.save(emb / "part-00000.npy", data.astype(np.float16))
    rows = [{"id": i, "path": f"{i}.png", "caption": "", "width": 1, "height": 1, "sha1": ""} for i in range(3000)]
    pq.write_table(pa.Table.from_pylist(rows), emb / "part-00000.parquet")
    (emb / "manifest.json").write_text(json.dumps({"items": 3000, "dim": 32}))
    build_index(emb, tmp_path / "idx", kind="hnsw")
    s = Searcher(tmp_path / "idx")
    assert s.info["kind"] == "hnsw"
    exact = data @ data[:50].T
    truth = [set(np.argsort(-exact[:, j])[:10]) for j in range(50)]

    def recall(effort):
        got = s.search(data[:50], k=10, effort=effort)
        return np.mean([len({r.id for r in g} & t) / 10 for g, t in zip(got, truth)])

    low, high = recall(10), recall(512)
    assert high >= low and high > 0.95
