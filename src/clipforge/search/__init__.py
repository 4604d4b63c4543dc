"""Search an image collection: embed it, index it, query it by text, image or vector."""

from clipforge.search.client import Client

__all__ = ["Client"]
