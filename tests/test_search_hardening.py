"""The search service on real collections and against hostile clients (issue 15's defects)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import clipforge
from clipforge.errors import ClipforgeError
from clipforge.search.embed import embed_collection, read_embeddings, save_embeddings
from clipforge.search.index import build_index
from clipforge.search.server import create_app
from clipforge.search.service import Limits, RequestRefused, SearchService

COLOURS = [(220, 30, 30), (30, 180, 60), (30, 60, 220), (230, 210, 30)]


@pytest.fixture(scope="module")
def csv_collection(tmp_path_factory):
    """A CSV beside its images (relative paths, as `clipforge data synth` writes), and a model."""
    root = tmp_path_factory.mktemp("csvcoll")
    (root / "data" / "images").mkdir(parents=True)
    rows = []
    for i in range(12):
        img = Image.new("RGB", (32, 32), COLOURS[i % 4])
        img.paste((255, 255, 255), (i % 4 * 7, i // 4 * 7, i % 4 * 7 + 6, i // 4 * 7 + 6))
        img.save(root / "data" / "images" / f"{i:03d}.png")
        rows.append([f"images/{i:03d}.png", f"scene {i}"])
    with open(root / "data" / "val.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    clipforge.save(clipforge.build("tiny-vit-32"), root / "model")
    return root


def _embed_from(cwd, root, out, monkeypatch, **kw):
    monkeypatch.chdir(cwd)
    model = clipforge.load(root / "model")
    return embed_collection(model, os.path.relpath(root / "data" / "val.csv"), out, progress=False,
                            model_path=str(root / "model"), **kw)


def test_readme_path_serves_from_anywhere(csv_collection, tmp_path, monkeypatch) -> None:
    """Defect 1: embed with a relative CSV path, serve from another folder: thumbnails work."""
    root = csv_collection
    emb = _embed_from(root, root, tmp_path / "emb", monkeypatch)
    build_index(emb, tmp_path / "idx")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    client = TestClient(create_app(tmp_path / "idx"))
    r = client.get("/image/3")
    assert r.status_code == 200 and r.content == (root / "data" / "images" / "003.png").read_bytes()
    assert client.get("/thumb/3").status_code == 200
    # The same CSV by its absolute path is the same run (resumes, no "another run").
    model = clipforge.load(root / "model")
    embed_collection(model, str(root / "data" / "val.csv"), emb, progress=False, model_path=str(root / "model"))


def test_only_the_embedded_file_is_served(csv_collection, tmp_path, monkeypatch) -> None:
    """Defect 4: a file replaced by a symlink out of the collection, or changed, is 410 with no path."""
    root = tmp_path / "copy"
    (root / "data").mkdir(parents=True)
    import shutil

    shutil.copytree(csv_collection / "data" / "images", root / "data" / "images")
    shutil.copy(csv_collection / "data" / "val.csv", root / "data" / "val.csv")
    os.symlink(csv_collection / "model", root / "model")
    emb = _embed_from(tmp_path, root, tmp_path / "emb", monkeypatch)
    build_index(emb, tmp_path / "idx")
    client = TestClient(create_app(tmp_path / "idx"))
    assert client.get("/image/1").status_code == 200
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    target = root / "data" / "images" / "001.png"
    target.unlink()
    os.symlink(secret, target)
    r = client.get("/image/1")
    assert r.status_code == 410 and str(tmp_path) not in r.text and "secret" not in r.text
    assert set(r.json()) == {"error"}
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "data" / "images" / "002.png")  # same path, new content
    assert client.get("/image/2").status_code == 410
    assert client.get("/thumb/2").status_code == 410


def test_open_clip_style_csv_and_missing_fields(tmp_path, csv_collection) -> None:
    """Defects 7 and 8: filepath,title headers are detected; a row without its caption field is skipped."""
    images = csv_collection / "data" / "images"
    (tmp_path / "oc.csv").write_text("filepath,title\n" + "".join(f"{images}/{i:03d}.png,scene {i}\n"
                                                                  for i in range(4)) + f"{images}/004.png\n")
    model = clipforge.load(csv_collection / "model")
    out = embed_collection(model, str(tmp_path / "oc.csv"), tmp_path / "emb", progress=False)
    vectors, meta, _ = read_embeddings(out)
    assert len(vectors) == 4 and meta.column("caption").to_pylist()[2] == "scene 2"
    skipped = [json.loads(line) for line in (out / "skipped-rows.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and "oc.csv:6" in skipped[0]["row"] and "title" in skipped[0]["reason"]
    (tmp_path / "two.csv").write_text(f"image,filepath,caption\n{images}/000.png,{images}/001.png,x\n")
    with pytest.raises(ClipforgeError, match="several image columns"):
        embed_collection(model, str(tmp_path / "two.csv"), tmp_path / "emb2", progress=False)
    out3 = embed_collection(model, str(tmp_path / "two.csv"), tmp_path / "emb3", progress=False,
                            image_column="filepath")
    assert read_embeddings(out3)[1].column("path").to_pylist() == [str((images / "001.png").resolve())]
    with pytest.raises(ClipforgeError, match="no image column 'img'"):
        embed_collection(model, str(tmp_path / "two.csv"), tmp_path / "emb4", progress=False, image_column="img")


def test_index_refuses_an_unfinished_embedding(csv_collection, tmp_path, monkeypatch) -> None:
    """Defect 5: 2 of 6 parts are not an index unless --partial."""
    emb = _embed_from(tmp_path, csv_collection, tmp_path / "emb", monkeypatch, part_size=2, max_parts=2)
    with pytest.raises(ClipforgeError, match="4 of 6 embedding parts are missing.*--partial"):
        build_index(emb, tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
    build_index(emb, tmp_path / "idx", partial=True)
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["n"] == 4


def test_a_killed_embed_keeps_its_work_within_a_part(csv_collection, tmp_path, monkeypatch) -> None:
    """Defect 6: progress inside a part is saved, and resuming gives the uninterrupted run's files."""
    import clipforge.search.embed as embed_module

    full = _embed_from(tmp_path, csv_collection, tmp_path / "full", monkeypatch, batch_size=2, captions=True)
    real_flush_state = embed_module._PartProgress.save
    saves = []

    def save_then_die(self):
        real_flush_state(self)
        saves.append(self.next)
        if len(saves) == 3:
            raise KeyboardInterrupt  # killed after 3 saved batches

    monkeypatch.setattr(embed_module._PartProgress, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _embed_from(tmp_path, csv_collection, tmp_path / "killed", monkeypatch, batch_size=2, captions=True,
                    checkpoint_seconds=1e-9)
    assert saves == [2, 4, 6]
    state = json.loads((tmp_path / "killed" / "partial-00000.json").read_text())
    assert state["next"] == 6 and len(state["rows"]) == 6
    monkeypatch.setattr(embed_module._PartProgress, "save", real_flush_state)
    encoded = []
    real_encode = clipforge.CLIP.encode_image
    monkeypatch.setattr(clipforge.CLIP, "encode_image", lambda self, x, **k: encoded.append(len(x)) or
                        real_encode(self, x, **k))
    _embed_from(tmp_path, csv_collection, tmp_path / "killed", monkeypatch, batch_size=2, captions=True)
    assert sum(encoded) == 6  # only the 6 images not saved before the kill
    for name in ("part-00000.npy", "text-00000.npy", "skipped-00000.jsonl"):
        assert (tmp_path / "killed" / name).read_bytes() == (full / name).read_bytes(), name
    assert not list((tmp_path / "killed").glob("partial-*"))


def _pq_index(tmp_path, n=4000, d=32):
    rng = np.random.default_rng(0)
    save_embeddings(tmp_path / "emb", rng.standard_normal((n, d)).astype(np.float32))
    return build_index(tmp_path / "emb", tmp_path / "idx", kind="pq-rerank")


def test_request_work_is_bounded(tmp_path) -> None:
    """Defect 2: k, offset and effort are bounded together, with a 422 that says what to lower."""
    client = TestClient(create_app(_pq_index(tmp_path), limits=Limits(max_candidates=2000)))
    vector = [0.1] * 32
    r = client.post("/search", json={"vector": vector, "k": 200, "offset": 10000, "effort": 4096})
    assert r.status_code == 422 and "offset + k" in r.json()["error"]
    r = client.post("/search", json={"vector": vector, "k": 200, "offset": 700, "effort": 4096})
    assert r.status_code == 422 and "candidates" in r.json()["error"] and "lower k, offset or effort" in r.text
    r = client.post("/search", json={"vector": vector, "k": 10, "offset": 20})
    assert r.status_code == 200 and len(r.json()["results"]) == 10
    assert client.post("/search", json={"vector": vector, "k": 201}).status_code == 422


def test_heavy_requests_wait_then_get_503(tmp_path) -> None:
    service = SearchService(_pq_index(tmp_path), limits=Limits(max_heavy=1, queue_seconds=0.05))
    with service.heavy():
        with pytest.raises(RequestRefused, match="busy") as e:
            service.search(vector=[1.0] * 32, k=1)
        assert e.value.status == 503
    assert len(service.search(vector=[1.0] * 32, k=3)) == 3
    app = create_app(tmp_path / "idx", limits=Limits(max_heavy=1, queue_seconds=0.05))
    client = TestClient(app)
    with app.state.service.heavy():
        r = client.post("/search", json={"vector": [1.0] * 32})
    assert r.status_code == 503 and r.headers["retry-after"] and set(r.json()) == {"error"}


def test_query_images_have_a_pixel_budget(csv_collection, tmp_path, monkeypatch) -> None:
    """Defect 3: a huge (but small-file) PNG query is refused; a big JPEG is reduced while decoding."""
    from clipforge.images.decode import open_image

    emb = _embed_from(tmp_path, csv_collection, tmp_path / "emb", monkeypatch)
    build_index(emb, tmp_path / "idx")
    client = TestClient(create_app(tmp_path / "idx", limits=Limits(max_query_pixels=1_000_000)))
    buf = io.BytesIO()
    Image.new("RGB", (2000, 2000), (10, 10, 10)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 100_000
    r = client.post("/search", json={"image": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 400 and "pixels" in r.json()["error"] and "limit 1000000" in r.json()["error"]
    jpeg = io.BytesIO()
    Image.new("RGB", (900, 900), COLOURS[0]).save(jpeg, format="JPEG")
    assert open_image(jpeg.getvalue(), draft_size=100).size == (113, 113)  # decoded at 1/8 scale
    r = client.post("/search", json={"image": base64.b64encode(jpeg.getvalue()).decode(), "k": 1})
    assert r.status_code == 200 and len(r.json()["results"]) == 1


def test_every_error_is_json_and_hosts_are_checked(tmp_path) -> None:
    """Defect 8: unknown routes and unparsable bodies answer {"error"}; Host allow-list; offline /docs."""
    index = _pq_index(tmp_path)
    client = TestClient(create_app(index))
    r = client.get("/no/such/route")
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and set(r.json()) == {"error"}
    r = client.get("/search")
    assert r.status_code == 405 and set(r.json()) == {"error"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    local = TestClient(create_app(index, allowed_hosts=["127.0.0.1", "localhost", "::1"]),
                       base_url="http://127.0.0.1:8000")
    assert local.get("/health").status_code == 200
    assert local.get("/health", headers={"host": "localhost:8000"}).status_code == 200
    r = local.get("/health", headers={"host": "evil.example:8000"})
    assert r.status_code == 400 and r.json() == {"error": "invalid Host header"}


def test_slow_clients_are_cut_off(tmp_path) -> None:
    """Defect 8: a connection that does not send its request head in time is closed."""
    import socket
    import time

    from clipforge.search.server import BackgroundServer

    app = create_app(_pq_index(tmp_path))
    server = BackgroundServer(app)
    server.server.config.http = type("H", (server.server.config.http,), {"header_timeout": 0.5})
    with server as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes the head
            t0 = time.monotonic()
            assert s.recv(1024) == b""  # closed by the server
            assert time.monotonic() - t0 < 3


@pytest.mark.slow
def test_embed_under_torchrun_equals_one_process(csv_collection, tmp_path) -> None:
    """Two gloo ranks each embed their share of the parts; the folder equals one process's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPFORGE_THREADS": "1"}
    outs = {}
    for world in (1, 2):
        outs[world] = tmp_path / f"emb{world}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
               str(29700 + os.getpid() % 200 + world), "-m", "clipforge.cli.main", "embed", "--model",
               str(csv_collection / "model"), "--images", str(csv_collection / "data" / "val.csv"), "--out",
               str(outs[world]), "--part-size", "3", "--captions", "--device", "cpu"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in outs[1].iterdir())
    assert names == sorted(p.name for p in outs[2].iterdir()) and "part-00003.parquet" in names
    for name in names:
        if name.endswith((".npy", ".jsonl")):
            assert (outs[1] / name).read_bytes() == (outs[2] / name).read_bytes(), name


def test_concurrent_searches_stay_correct(tmp_path) -> None:
    service = SearchService(_pq_index(tmp_path), limits=Limits(max_heavy=2, queue_seconds=30))
    q = np.random.default_rng(1).standard_normal(32).astype(np.float32)
    expected = [r.id for r in service.search(vector=list(q), k=5)]
    got: list = []
    threads = [threading.Thread(target=lambda: got.append([r.id for r in service.search(vector=list(q), k=5)]))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [expected] * 6


def test_cli_embed_index_search(csv_collection, tmp_path, capsys) -> None:
    """The README's commands: embed (with captions), index, search by text, image, both, and by caption."""
    from clipforge.cli.main import main

    root = csv_collection
    assert main(["embed", "--model", str(root / "model"), "--images", str(root / "data" / "val.csv"), "--out",
                 str(tmp_path / "emb"), "--captions"]) == 0
    assert main(["index", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    assert (tmp_path / "idx" / "captions" / "index.json").is_file()
    capsys.readouterr()
    image = str(root / "data" / "images" / "005.png")
    assert main(["search", str(tmp_path / "idx"), "--image", image, "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[1].endswith("005.png") and float(lines[0].split()[0]) > 0.99
    assert main(["search", str(tmp_path / "idx"), "in blue", "--image", image, "-k", "2"]) == 0
    combined = capsys.readouterr().out.splitlines()
    assert len(combined) == 2 and float(combined[0].split()[0]) < 0.99
    assert main(["search", str(tmp_path / "idx"), "scene 7", "--match", "caption", "-k", "3", "--offset", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["search", str(tmp_path / "idx"), "x", "--image", str(tmp_path / "none.png")]) == 2
    assert "--image" in capsys.readouterr().err
