"""A Milvus collection as a search backend: for collections that outgrow one machine.

``clipforge index EMB --out IDX --backend milvus`` writes the same unit vectors and the same
metadata rows (id, path, member/offset/size, caption, width, height, sha1) into a Milvus
collection: by default an embedded Milvus Lite database inside the index folder
(``IDX/milvus.db``), or any Milvus server or cluster given by ``--milvus-uri`` (same client, same
calls). The index folder keeps ``index.json`` (where the data lives, the Milvus index type and the
measured search effort) and a copy of the metadata for serving files; ``clipforge serve`` /
``search`` and the client query it through the same API and page as the FAISS kinds.

Milvus index: ``FLAT`` (exact) up to the exact limit, else ``IVF_FLAT`` with nlist ~ 4 sqrt(N); the
effort is ``nprobe``, tuned at build time to the target recall@10 against exact search like the
FAISS kinds. Inner product on unit vectors, so scores are cosine similarities.

Needs the ``milvus`` extra (``pip install pymilvus milvus-lite``); a missing package is a one-line
error, not a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clipforge.errors import ClipforgeError

LITE_FILE = "milvus.db"
INSERT_BATCH = 5000
_TEXT = {"path": 4096, "member": 1024, "caption": 8192, "sha1": 64}


def _client(uri: str):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise ClipforgeError("--backend milvus needs pymilvus and milvus-lite: "
                             "pip install 'clipforge[milvus]'") from None
    try:
        return MilvusClient(uri)
    except Exception as e:  # connection refused, bad URI, a locked Lite file
        raise ClipforgeError(f"cannot open Milvus at {uri} ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _lite_path(uri: str) -> bool:
    return "://" not in uri


class MilvusIndex:
    """Search a Milvus collection of unit vectors whose primary key is the index row."""

    kind = "milvus"

    def __init__(self, client: Any, collection: str, ntotal: int, index_type: str, uri: str) -> None:
        self.client, self.collection, self._ntotal = client, collection, ntotal
        self.index_type, self.uri = index_type, uri

    @property
    def ntotal(self) -> int:
        return self._ntotal

    @staticmethod
    def spec(n: int, exact_limit: int, uri: str | None, collection: str) -> dict[str, Any]:
        index_type = "FLAT" if n <= exact_limit else "IVF_FLAT"
        spec = {"kind": "milvus", "milvus": {"uri": uri or LITE_FILE, "collection": collection,
                                             "index_type": index_type}}
        if index_type == "IVF_FLAT":
            spec["milvus"]["nlist"] = max(16, min(n // 39, int(4 * math.sqrt(n))))
            spec["nlist"] = spec["milvus"]["nlist"]
        where = "a Milvus Lite file in the index folder" if uri is None else uri
        spec["reason"] = f"asked for: Milvus ({index_type}) at {where}, collection {collection!r}"
        return spec

    @classmethod
    def build(cls, vectors: np.ndarray, meta: pa.Table, spec: dict[str, Any], folder: Path) -> MilvusIndex:
        from pymilvus import DataType, MilvusClient

        m = spec["milvus"]
        uri = str(folder / m["uri"]) if _lite_path(m["uri"]) else m["uri"]
        client = _client(uri)
        name, d = m["collection"], vectors.shape[1]
        if client.has_collection(name):
            client.drop_collection(name)  # a rebuild replaces the collection, as a FAISS rebuild replaces its file
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=d)
        schema.add_field("id", DataType.INT64)
        for field in ("offset", "size"):
            schema.add_field(field, DataType.INT64)
        for field in ("width", "height"):
            schema.add_field(field, DataType.INT32)
        for field, length in _TEXT.items():
            schema.add_field(field, DataType.VARCHAR, max_length=length)
        params = client.prepare_index_params()
        extra = {"nlist": m["nlist"]} if m["index_type"] == "IVF_FLAT" else {}
        params.add_index(field_name="vector", index_type=m["index_type"], metric_type="IP", params=extra)
        client.create_collection(name, schema=schema, index_params=params)
        columns = {c: meta.column(c).to_pylist() for c in meta.column_names}
        for start in range(0, len(vectors), INSERT_BATCH):
            rows = []
            for row in range(start, min(start + INSERT_BATCH, len(vectors))):
                record = {"row": row, "vector": vectors[row].tolist(), "id": int(columns["id"][row]),
                          "offset": int(columns.get("offset", [-1] * len(vectors))[row] or -1),
                          "size": int(columns.get("size", [-1] * len(vectors))[row] or -1),
                          "width": int(columns["width"][row] or 0), "height": int(columns["height"][row] or 0)}
                for field, length in _TEXT.items():
                    record[field] = str(columns.get(field, [""] * len(vectors))[row] or "")[:length]
                rows.append(record)
            client.insert(name, rows)
        client.flush(name)
        # Reopen: Milvus Lite may answer from unindexed growing segments (exact search) until the data
        # is sealed and reloaded, which would make the effort tuning below meaningless.
        cls(client, name, len(vectors), m["index_type"], uri).close()
        client = _client(uri)
        client.load_collection(name)
        return cls(client, name, len(vectors), m["index_type"], uri)

    @classmethod
    def load(cls, folder: Path, info: dict[str, Any]) -> MilvusIndex:
        m = info["milvus"]
        uri = str(folder / m["uri"]) if _lite_path(m["uri"]) else m["uri"]
        client = _client(uri)
        if not client.has_collection(m["collection"]):
            raise ClipforgeError(f"Milvus at {uri} has no collection {m['collection']!r}; rebuild the index")
        client.load_collection(m["collection"])
        return cls(client, m["collection"], int(info["n"]), m["index_type"], uri)

    def save(self, folder: Path) -> None:
        """The data is in Milvus already; a Lite file is closed so the folder can be moved."""
        self.close()

    def close(self) -> None:
        self.client.close()
        if _lite_path(self.uri) or self.uri.endswith(".db"):
            try:
                from milvus_lite import server_manager_instance

                server_manager_instance.release_server(self.uri)
            except ImportError:
                pass

    def vector(self, row: int) -> np.ndarray | None:
        got = self.client.query(self.collection, ids=[int(row)], output_fields=["vector"])
        return np.asarray(got[0]["vector"], dtype=np.float32) if got else None

    def search(self, queries: np.ndarray, k: int, effort: int) -> tuple[np.ndarray, np.ndarray]:
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.index_type == "IVF_FLAT":
            params["params"] = {"nprobe": int(effort)}
        k = min(k, self.ntotal)
        hits = self.client.search(self.collection, data=[q.tolist() for q in np.atleast_2d(queries)], limit=k,
                                  search_params=params, anns_field="vector")
        scores = np.full((len(hits), k), -np.inf, dtype=np.float32)
        ids = np.full((len(hits), k), -1, dtype=np.int64)
        for i, row in enumerate(hits):
            for j, hit in enumerate(row[:k]):
                scores[i, j], ids[i, j] = hit["distance"], hit["row"] if "row" in hit else hit["id"]
        return scores, ids
