"""Turning a text, an image or a raw vector into a query embedding with the index's model (a CLIP, or a
sentence encoder for an index of texts)."""

from __future__ import annotations

import numpy as np
import torch

from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP
from clipforge.models.sentence_encoder import SentenceEncoder


@torch.no_grad()
def text_query(model: CLIP | SentenceEncoder, text: str) -> np.ndarray:
    if isinstance(model, SentenceEncoder):  # an index of texts: its "query" instruction, if it has one
        vector = model.encode([text], task="query" if "query" in model.config.prompts else None)
        return torch.nn.functional.normalize(vector, dim=-1).numpy()
    if model.tokenizer is None:
        raise ClipforgeError("the index's model has no tokenizer: search by image or by vector instead")
    tokens = model.tokenizer([text]).to(next(model.parameters()).device)
    return model.encode_text(tokens, normalize=True).float().cpu().numpy()


@torch.no_grad()
def image_query(model: CLIP | SentenceEncoder, image: bytes | str, max_pixels: int | None = None) -> np.ndarray:
    """The image's embedding; ``max_pixels`` refuses larger images, and JPEGs are reduced while
    decoding to about twice the model's input size (a fraction of the memory of a full decode)."""
    from clipforge.images.decode import DEFAULT_MAX_PIXELS, open_image

    if isinstance(model, SentenceEncoder):
        raise ClipforgeError("this is an index of texts (a sentence encoder's): search it by text")
    img = open_image(image, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, name="query image",
                     draft_size=2 * model.preprocess.image_size)
    pixels = model.preprocess(img).unsqueeze(0).to(next(model.parameters()).device)
    return model.encode_image(pixels, normalize=True).float().cpu().numpy()


@torch.no_grad()
def modality_query(model: CLIP, modality: str, source: str | bytes) -> np.ndarray:
    """The embedding of a file (a path, or its bytes) of a bound modality: a WAV for ``speech``, a
    depth map for ``depth``. The index's model must be a bound model (``clipforge bind train``) that
    has that encoder."""
    if not hasattr(model, "read"):
        raise ClipforgeError(f"the index's model cannot embed {modality}: embed the collection with a bound model "
                             "(clipforge bind train) to search it by speech or depth")
    x, _ = model.read(modality, source, name=f"the {modality} file" if isinstance(source, bytes) else None)
    return model.encode(modality, x[None].to(next(model.parameters()).device), normalize=True).float().cpu().numpy()


def load_index_model(info: dict, override: str | None = None, device: str | None = None, backend: str = "torch",
                     precision: str = "fp32") -> CLIP:
    """The model recorded in index.json (or ``override``), checked against the index's fingerprint,
    on ``device`` (default: CUDA when present), its towers on the inference path ``backend`` and
    ``precision`` ask for (:func:`clipforge.inference.choice.prepare_for_inference`)."""
    from clipforge.checkpoints import load
    from clipforge.engine.distributed import DistInfo, default_device
    from clipforge.evaluation.cache import model_fingerprint

    path = override or info.get("model")
    if not path:
        raise ClipforgeError("the index does not record its model: pass --model")
    target = default_device(DistInfo(), device)  # checked before the (slow) load
    model = load(path)
    if info.get("model_fingerprint") and model_fingerprint(model) != info["model_fingerprint"]:
        raise ClipforgeError(f"{path} is not the model the index was built with (weights differ)")
    from clipforge.inference.choice import prepare_for_inference

    return prepare_for_inference(model, target, backend, precision)
