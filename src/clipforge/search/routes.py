"""The search API's routes, over the :class:`~clipforge.search.service.SearchService` in ``app.state``.

* ``POST /search`` -- JSON ``{"text" and/or one of "image" (base64), "vector", "id", "speech" / "depth"
  (base64 files, for an index embedded with a bound model); "k", "offset",
  "threshold", "dedup", "effort", "text_weight", "match": "image" | "caption"}`` -> ``{"results":
  [{"id", "score", "caption", "width", "height", "image_url", "thumb_url"}], "k", "offset",
  "has_more"}``
* ``GET /image/{id}``, ``GET /thumb/{id}`` -- only files that are in the index, looked up by id
* ``GET /item/{id}`` -- an item's metadata (caption, size, shard member), never its server-side path
* ``GET /health``, ``GET /stats``
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from clipforge.search.service import RequestRefused, SearchService

router = APIRouter()


class SearchRequest(BaseModel):
    text: str | None = Field(None, description="search by this text")
    image: str | None = Field(None, description="search by this image (base64, optionally a data: URL)")
    vector: list[float] | None = Field(None, max_length=8192, description="search by this embedding")
    id: int | None = Field(None, ge=0, description="search by the indexed image with this id")
    speech: str | None = Field(None, description="search by this WAV file (base64); the index's model must be a "
                               "bound model with a speech encoder (clipforge bind train)")
    depth: str | None = Field(None, description="search by this depth map (16-bit PNG, base64); a bound model's")
    k: int = Field(20, ge=1, description="results to return (at most the server's max_k, see /stats)")
    offset: int = Field(0, ge=0, description="results to skip, for paging (offset + k at most max_depth)")
    threshold: float | None = Field(None, ge=-1, le=1)
    dedup: bool = False
    text_weight: float = Field(1.0, ge=0, le=10, description="with an image and a text: the text's weight")
    match: Literal["image", "caption"] = Field("image", description="rank items by their images or their captions")
    effort: int | None = Field(None, ge=1, le=4096,
                               description="approximate indexes: candidates per result (pq-rerank), efSearch "
                                           "(HNSW) or nprobe (IVF); default: measured at build time")


def _service(request: Request) -> SearchService:
    return request.app.state.service


@router.get("/health")
def health(request: Request) -> dict:
    return {"status": "ok", "items": len(_service(request).searcher)}


@router.get("/stats")
def stats(request: Request) -> dict:
    return _service(request).stats()


@router.post("/search")
def search(req: SearchRequest, request: Request) -> dict:
    svc = _service(request)
    image = decode_base64(req.image) if req.image is not None else None
    modality = next(((m, decode_base64(getattr(req, m), m)) for m in ("speech", "depth") if getattr(req, m)), None)
    results = svc.search(text=req.text, image=image, vector=req.vector, item_id=req.id, k=req.k,
                         offset=req.offset, threshold=req.threshold, dedup=req.dedup, effort=req.effort,
                         text_weight=req.text_weight, match=req.match, modality=modality)
    n = len(svc.searcher)
    more = len(results) == req.k and req.offset + req.k < min(n, svc.stats()["max_depth"])
    return {"k": req.k, "offset": req.offset, "has_more": more,
            "results": [{"id": r.id, "score": round(r.score, 5), "caption": r.caption, "width": r.width,
                         "height": r.height, **_urls(r.id, r.path)} for r in results]}


def _urls(item_id: int, path: str) -> dict:
    """Where the page finds an item's image; none for an index of texts (clipforge text embed)."""
    if not path:
        return {"image_url": None, "thumb_url": None}
    return {"image_url": f"/image/{item_id}", "thumb_url": f"/thumb/{item_id}"}


@router.get("/item/{item_id}")
def item(item_id: int, request: Request) -> dict:
    m = _service(request).item(item_id)
    return {"id": m["id"], "caption": m["caption"], "width": m["width"], "height": m["height"],
            "name": (m.get("member") or m["path"]).rsplit("/", 1)[-1], "sha1": m.get("sha1") or None,
            **_urls(item_id, m["path"])}


@router.get("/image/{item_id}")
def image(item_id: int, request: Request) -> Response:
    data, media_type = _service(request).item_bytes(item_id)
    return Response(data, media_type=media_type)


@router.get("/thumb/{item_id}")
def thumb(item_id: int, request: Request, size: int = 160) -> Response:
    svc = _service(request)
    svc.item(item_id)  # 404 before the size check
    if not 16 <= size <= 512:
        raise RequestRefused("size: must be between 16 and 512", status=422)
    return Response(svc.thumbnail(item_id, size), media_type="image/png")


def decode_base64(data: str, what: str = "image") -> bytes:
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRefused(f"{what} is not valid base64") from None
    if not raw:
        raise RequestRefused(f"{what} is empty")
    return raw
