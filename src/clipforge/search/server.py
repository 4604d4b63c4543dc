"""``clipforge serve``: the HTTP service (FastAPI) over a :class:`~clipforge.search.searcher.Searcher`.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

* ``POST /search`` -- JSON ``{"text" | "image" (base64) | "vector" | "id", "k", "threshold", "dedup",
  "offset"}`` -> ``{"results": [{"id", "score", "caption", "width", "height", "image_url", "thumb_url"}]}``
* ``GET /image/{id}``, ``GET /thumb/{id}`` -- only files that are in the index, looked up by id (no
  path ever comes from the request, so no traversal is possible)
* ``GET /health``, ``GET /stats``; ``GET /`` -- the web page

Requests are bounded (body size, ``k``); a bad request gets a 4xx with a JSON ``{"error": ...}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import mimetypes
import threading
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from clipforge.errors import ClipforgeError
from clipforge.search.collection import read_item_bytes
from clipforge.search.query import image_query, load_index_model, text_query
from clipforge.search.searcher import Searcher

MAX_K = 200


class SearchRequest(BaseModel):
    text: str | None = Field(None, max_length=1000, description="search by this text")
    image: str | None = Field(None, description="search by this image (base64, optionally a data: URL)")
    vector: list[float] | None = Field(None, description="search by this embedding")
    id: int | None = Field(None, ge=0, description="search by the indexed image with this id")
    k: int = Field(20, ge=1, le=MAX_K)
    threshold: float | None = Field(None, ge=-1, le=1)
    dedup: bool = False
    offset: int = Field(0, ge=0, le=10_000)
    effort: int | None = Field(None, ge=1, le=4096,
                               description="approximate indexes: candidates per result (pq-rerank), efSearch "
                                           "(HNSW) or nprobe (IVF); default: measured at build time")


def create_app(index_dir: str | Path, model_path: str | None = None, max_body_mb: float = 10.0) -> FastAPI:
    searcher = Searcher(index_dir)
    models: list = []

    def model():  # loaded on the first text or image query: vector search needs none
        if not models:
            models.append(load_index_model(searcher.info, model_path))
        return models[0]

    if model_path or searcher.info.get("model"):
        model()  # fail at start-up, not on the first request, when the recorded model is unusable

    def item(item_id: int) -> dict | None:
        row = searcher.row_of(item_id)
        return None if row is None else searcher.item(row)

    def item_bytes(m: dict) -> bytes:
        return read_item_bytes(m["path"], m.get("member") or "", m.get("offset", -1), m.get("size", -1))

    app = FastAPI(title="clipforge search", version="1", description="Search an image collection by text or image.")
    max_body = int(max_body_mb * 2**20)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    app.add_middleware(BodyLimit, max_bytes=max_body)

    @app.middleware("http")
    async def json_errors(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as e:  # never a bare 500 page: a JSON error instead
            return error(500, f"internal error: {type(e).__name__}")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "items": len(searcher)}

    @app.get("/stats")
    def stats() -> dict:
        i = searcher.info
        return {"items": len(searcher), "dim": i["dim"], "index": i["kind"], "reason": i.get("reason"),
                "effort": searcher.effort, "measured_recall_at_10": i.get("recall_at_10"),
                "model": i.get("model"), "dedup": searcher.groups is not None, "max_k": MAX_K}

    @app.post("/search")
    def search(req: SearchRequest):
        given = [x for x in (req.text, req.image, req.vector, req.id) if x is not None]
        if len(given) != 1:
            return error(400, "give exactly one of text, image, vector or id")
        try:
            if req.text is not None:
                if not req.text.strip():
                    return error(400, "text is empty")
                q = text_query(model(), req.text)
            elif req.image is not None:
                q = image_query(model(), _decode_base64(req.image))
            elif req.id is not None:
                row = searcher.row_of(req.id)
                if row is None:
                    return error(404, f"no item with id {req.id}")
                q = searcher.stored_vector(row)  # the indexed vector: no model run, no file read
                if q is None:
                    q = image_query(model(), item_bytes(searcher.item(row)))
            else:
                q = req.vector
            results = searcher.search(q, req.k, req.threshold, req.dedup, req.offset, req.effort)[0]
        except ClipforgeError as e:
            return error(400, str(e))
        return {"results": [{"id": r.id, "score": round(r.score, 5), "caption": r.caption, "width": r.width,
                             "height": r.height, "image_url": f"/image/{r.id}", "thumb_url": f"/thumb/{r.id}"}
                            for r in results]}

    @app.get("/image/{item_id}")
    def image(item_id: int):
        m = item(item_id)
        if m is None:
            return error(404, f"no item with id {item_id}")
        if not Path(m["path"]).is_file():
            return error(410, f"item {item_id}'s file is gone")
        if not m.get("member"):
            return FileResponse(m["path"])
        try:
            data = item_bytes(m)
        except OSError as e:
            return error(410, str(e))
        return Response(data, media_type=mimetypes.guess_type(m["member"])[0] or "application/octet-stream")

    @lru_cache(maxsize=4096)
    def thumbnail(item_id: int, size: int) -> bytes:
        from clipforge.images.decode import open_image

        img = open_image(item_bytes(item(item_id)), name=f"item {item_id}")
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    @app.get("/thumb/{item_id}")
    def thumb(item_id: int, size: int = 160):
        if searcher.row_of(item_id) is None:
            return error(404, f"no item with id {item_id}")
        if not 16 <= size <= 512:
            return error(422, "size: must be between 16 and 512")
        try:
            return Response(thumbnail(item_id, size), media_type="image/png")
        except (ClipforgeError, OSError) as e:
            return error(410, str(e))

    page = (resources.files("clipforge") / "assets" / "search.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    return app


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 JSON error before the app sees it.

    Checks the declared Content-Length first, then counts the bytes actually received, so chunked
    uploads without a length are bounded too.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(scope, receive, send)
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            body.append(message.get("body", b""))
            size += len(body[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
        replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]
        return await self.app(scope, _replay(replay, receive), send)

    async def _reject(self, scope, receive, send) -> None:
        limit = self.max_bytes / 2**20
        await JSONResponse({"error": f"request body over {limit:g} MB"}, status_code=413)(scope, receive, send)


def _replay(messages: list[dict], then=None):
    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class BackgroundServer:
    """Serve an app on 127.0.0.1 in a thread (tests, notebooks, benchmarks): ``with BackgroundServer(app) as url:``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
        self.thread: threading.Thread | None = None

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


def _decode_base64(data: str) -> bytes:
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClipforgeError("image is not valid base64") from None
    if not raw:
        raise ClipforgeError("image is empty")
    return raw
