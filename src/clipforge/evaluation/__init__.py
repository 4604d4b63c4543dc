"""Evaluation: zero-shot classification, retrieval recall, feature extraction.

Metric functions are pure (tensors in, dict out) and use CLIP_benchmark's metric names.
"""

from clipforge.evaluation.embed import embed_images, embed_texts
from clipforge.evaluation.retrieval import retrieval_metrics
from clipforge.evaluation.zero_shot import classification_metrics, zero_shot_classifier

__all__ = ["classification_metrics", "embed_images", "embed_texts", "retrieval_metrics", "zero_shot_classifier"]
