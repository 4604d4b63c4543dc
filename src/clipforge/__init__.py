"""clipforge: a toolkit for contrastive multimodal learning around CLIP.

Main entry points::

    import clipforge
    model = clipforge.load("path/to/checkpoint")      # clipforge, open_clip, OpenAI or HF
    tokens = model.tokenizer(["a photo of a cat"])
    image = model.preprocess("cat.jpg").unsqueeze(0)
    img_f, txt_f, scale = model(image, tokens)
"""

import clipforge.log  # noqa: F401 - installs the library's log handler
from clipforge.checkpoints import build, export_hf, export_openclip, load, save
from clipforge.errors import ClipforgeError
from clipforge.models import CLIP, CLIPConfig, get_config, list_configs

__version__ = "0.1.0"

__all__ = [
    "CLIP", "CLIPConfig", "ClipforgeError", "build", "export_hf", "export_openclip", "get_config",
    "list_configs", "load", "save", "__version__",
]
