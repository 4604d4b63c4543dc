"""``clipforge.search.Client``: the HTTP service from Python (standard library only)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from clipforge.errors import ClipforgeError


class Client:
    """Args: url of a running ``clipforge serve`` (default http://127.0.0.1:8000), timeout in seconds."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 30.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except (json.JSONDecodeError, AttributeError):
                message = e.reason
            raise ClipforgeError(f"{path}: {e.code} {message}") from None
        except urllib.error.URLError as e:
            raise ClipforgeError(f"cannot reach {self.url} ({e.reason})") from None

    def health(self) -> dict:
        return self._call("GET", "/health")

    def stats(self) -> dict:
        return self._call("GET", "/stats")

    def search_text(self, text: str, k: int = 20, **options: Any) -> list[dict]:
        return self._call("POST", "/search", {"text": text, "k": k, **options})["results"]

    def search_image(self, image: str | Path | bytes, k: int = 20, **options: Any) -> list[dict]:
        raw = image if isinstance(image, bytes) else Path(image).read_bytes()
        return self._call("POST", "/search", {"image": base64.b64encode(raw).decode(), "k": k, **options})["results"]

    def search_vector(self, vector: list[float], k: int = 20, **options: Any) -> list[dict]:
        return self._call("POST", "/search", {"vector": list(map(float, vector)), "k": k, **options})["results"]
