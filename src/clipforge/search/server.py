"""``clipforge serve``: the HTTP service (FastAPI) over a :class:`~clipforge.search.service.SearchService`.

The app holds the service in ``app.state.service``; the routes are in :mod:`clipforge.search.routes`
and the limits in :class:`~clipforge.search.service.Limits`. Around them, this module adds what an
exposed server needs: a body-size limit, JSON ``{"error": ...}`` for every failure (unknown routes,
unparsable bodies and internal errors included), a Host-header allow-list when bound to this machine
(against DNS rebinding), the API docs at ``/docs`` from a local copy of Swagger UI (offline), and,
in :func:`serve`, a header-read timeout and a cap on open connections.
"""

from __future__ import annotations

import asyncio
import threading
import time
from importlib import resources
from pathlib import Path

import h11
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from clipforge.errors import ClipforgeError
from clipforge.search.routes import router
from clipforge.search.service import Limits, RequestRefused, SearchService

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(index_dir: str | Path, model_path: str | None = None, max_body_mb: float = 10.0,
               limits: Limits | None = None, allowed_hosts: list[str] | None = None,
               device: str | None = None, backend: str = "torch", precision: str = "fp32") -> FastAPI:
    """The app; ``allowed_hosts`` (names the Host header may carry, with or without a port) is
    enforced when given (:func:`serve` gives the loopback names when bound to this machine)."""
    service = SearchService(index_dir, model_path, limits, device, backend, precision)
    app = FastAPI(title="clipforge search", version="1", docs_url=None, redoc_url=None,
                  description="Search an image collection by text or image.")
    app.state.service = service
    app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=int(max_body_mb * 2**20))
    if allowed_hosts:
        app.add_middleware(HostAllowList, hosts=allowed_hosts)

    @app.middleware("http")
    async def json_errors(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as e:  # never a bare 500 page: a JSON error instead
            return error(500, f"internal error: {type(e).__name__}")

    @app.exception_handler(RequestRefused)
    async def refused(_: Request, exc: RequestRefused) -> JSONResponse:
        response = error(exc.status, str(exc))
        if exc.status == 503:
            response.headers["Retry-After"] = "2"
        return response

    @app.exception_handler(ClipforgeError)
    async def bad_request(_: Request, exc: ClipforgeError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    page = (resources.files("clipforge") / "assets" / "search.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> str:
        return page

    _mount_docs(app)
    return app


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle package: /docs works with no internet access."""
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="clipforge search API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="")


class HostAllowList:
    """ASGI middleware: a request whose Host header is not in ``hosts`` gets a 400 JSON error."""

    def __init__(self, app, hosts: list[str]) -> None:
        self.app, self.hosts = app, {h.lower().strip("[]") for h in hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").lower()
            name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0] if host.count(":") == 1 \
                else host
            if name not in self.hosts:
                await error(400, "invalid Host header")(scope, receive, send)
                return
        await self.app(scope, receive, send)


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

        self.server = uvicorn.Server(server_config(app, host, port, log_level="error"))
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


class _HeaderTimeoutH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head is not complete
    ``header_timeout`` seconds after the connection (or the previous response) began waiting for
    it: uvicorn's keep-alive timer is cancelled by any byte received, so a client trickling a
    header forever would otherwise hold the connection."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self.timeout_keep_alive_handler)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # a head has begun (or is awaited) and is not complete
        else:
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, max_connections: int = 64,
                  header_timeout: float = 10.0, log_level: str = "warning"):
    """uvicorn's settings for an exposed server: connections over ``max_connections`` get a 503,
    idle or slow ones are closed after ``header_timeout`` seconds."""
    import uvicorn

    protocol = type("HeaderTimeoutH11", (_HeaderTimeoutH11,), {"header_timeout": header_timeout})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          limit_concurrency=max_connections, timeout_keep_alive=int(max(1, header_timeout)))


def serve(index_dir: str | Path, model_path: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          limits: Limits | None = None, max_connections: int = 64, header_timeout: float = 10.0,
          device: str | None = None, backend: str = "torch", precision: str = "fp32") -> None:
    """Serve until interrupted; bound to a loopback address, only loopback Host names are answered."""
    import uvicorn

    allowed = list(LOOPBACK) if host in LOOPBACK else None
    app = create_app(index_dir, model_path, limits=limits, allowed_hosts=allowed, device=device, backend=backend,
                     precision=precision)
    uvicorn.Server(server_config(app, host, port, max_connections, header_timeout)).run()
