"""The contrastive loss family. One module per loss."""

from clipforge.losses.clip import CLIPLoss, clip_loss

__all__ = ["CLIPLoss", "clip_loss"]
