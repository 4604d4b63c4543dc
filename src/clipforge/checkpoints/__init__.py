"""Checkpoint interop: clipforge's format, open_clip, OpenAI and Hugging Face."""

from clipforge.checkpoints.hf import export_hf
from clipforge.checkpoints.load import build, load
from clipforge.checkpoints.native import save
from clipforge.checkpoints.openclip import export_openclip

__all__ = ["build", "export_hf", "export_openclip", "load", "save"]
