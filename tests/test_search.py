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
from clipforge.search.index import build_index
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

    monkeypatch.setattr(index_module, "build_backend", boom)
    with pytest.raises(RuntimeError):
        build_index(emb, tmp_path / "idx")
    assert (tmp_path / "idx" / "index.json").read_text() == before  # the good index is untouched
    assert Searcher(tmp_path / "idx").search(read_embeddings(emb)[0][0], k=1)[0]


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
    ({}, 400, "give a text, an image, a vector or an id"),
    ({"text": "  "}, 400, "empty"),
    ({"vector": [1.0] * 128, "image": _png()}, 400, "at most one of image, vector or id"),
    ({"text": "x", "match": "caption"}, 400, "no caption embeddings"),
    ({"text": "x", "match": "both"}, 422, "match"),
])
def test_bad_requests_get_json_errors(client, body, status, message) -> None:
    r = client.post("/search", json=body)
    assert r.status_code == status and message in r.json()["error"]


def test_bad_json_and_oversized_body(client) -> None:
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = client.post("/search", content=b"x" * 100, headers={"content-length": str(50 * 2**20)})
    assert r.status_code == 413


def test_chunked_upload_without_length_is_bounded(collection, tmp_path) -> None:
    import http.client
    from urllib.parse import urlparse

    from clipforge.search.server import BackgroundServer, create_app

    model = clipforge.load(collection / "model")
    emb = embed_collection(model, str(collection / "imgs"), tmp_path / "emb", progress=False)
    build_index(emb, tmp_path / "idx")
    with BackgroundServer(create_app(tmp_path / "idx", max_body_mb=0.01)) as url:
        u = urlparse(url)

        def post_chunked(chunks):
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
            conn.request("POST", "/search", body=iter(chunks), headers={"Content-Type": "application/json"},
                         encode_chunked=True)
            r = conn.getresponse()
            return r.status, json.loads(r.read())

        status, body = post_chunked([b'{"vector": [', b"0.0, " * 4000, b"1.0]}"])  # ~20 kB, no Content-Length
        assert status == 413 and "over" in body["error"]
        vec = json.dumps({"vector": [1.0] + [0.0] * 127, "k": 2}).encode()
        status, body = post_chunked([vec[:10], vec[10:]])  # small chunked bodies still work
        assert status == 200 and len(body["results"]) == 2


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


def test_shards_are_embedded_and_served_without_extraction(collection, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from clipforge.data.pairs import Pair
    from clipforge.data.shards import pack_shards
    from clipforge.search.server import create_app

    imgs = collection / "imgs"
    pairs = [Pair(str(imgs / f"{i:03d}.png"), (imgs / f"{i:03d}.txt").read_text()) for i in range(20)]
    pack_shards(pairs, tmp_path / "shards", shard_size=8, progress=False)
    model = clipforge.load(collection / "model")
    source = str(tmp_path / "shards" / "shard-{000000..000002}.tar")
    emb = embed_collection(model, source, tmp_path / "emb", model_path=str(collection / "model"), captions=True,
                           progress=False)
    vectors, meta, _ = read_embeddings(emb)
    assert len(vectors) == 20 and meta.column("caption").to_pylist()[5] == "a green square"
    assert meta.column("member").to_pylist()[0].endswith(".png")
    from_files = read_embeddings(embed_collection(model, str(imgs), tmp_path / "emb-files", progress=False))[0]
    np.testing.assert_array_equal(vectors, from_files[:20])  # same images, same embeddings
    build_index(emb, tmp_path / "idx")
    client = TestClient(create_app(tmp_path / "idx"))
    served = client.get("/image/7")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == (imgs / "007.png").read_bytes()  # the member's bytes, straight from the tar
    assert client.get("/thumb/7?size=16").status_code == 200
    hits = client.post("/search", json={"id": 7, "k": 1}).json()["results"]
    assert hits[0]["id"] == 7 and hits[0]["score"] > 0.999  # the stored vector, no re-embedding


def test_embedding_is_the_same_with_any_number_of_workers(collection, tmp_path) -> None:
    model = clipforge.load(collection / "model")
    src = str(collection / "imgs")
    one = embed_collection(model, src, tmp_path / "one", progress=False, workers=1)
    three = embed_collection(model, src, tmp_path / "three", progress=False, workers=3)
    for name in ("part-00000.npy", "skipped-00000.jsonl"):
        assert (one / name).read_bytes() == (three / name).read_bytes()


def test_embedding_skips_a_too_elongated_image(collection, tmp_path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "000.png").write_bytes((collection / "imgs" / "000.png").read_bytes())
    Image.new("RGB", (2_000_000, 1)).save(imgs / "sliver.png")  # ~300 bytes; 448 Gpx once resized
    out = embed_collection(clipforge.load(collection / "model"), str(imgs), tmp_path / "emb", progress=False)
    vectors, _, _ = read_embeddings(out)
    assert vectors.shape[0] == 1
    (skip,) = skipped_items(out)
    assert skip["path"].endswith("sliver.png") and "too elongated" in json.dumps(skip)
