"""Captions from images: every captioner (CoCa today) behind one function, :func:`caption_images`."""

from clipforge.captioning.caption import caption_images, ids_to_text

__all__ = ["caption_images", "ids_to_text"]
