"""Zero-shot classification by likelihood, for models that predict text instead of embedding it.

A captioner (a CoCa's decoder) or a bag-of-words model has no text embedding to compare with; it
classifies an image by how likely it finds each class's prompt, as the CLIP paper scores its
baseline objectives (Radford et al. 2021, Figure 2). Such a model has
``text_log_likelihood(images, tokens) -> [N_images, N_texts]`` (log-likelihoods). With several
templates a class scores the mean of its prompts' log-likelihoods (the likelihood's counterpart of
averaging the prompts' embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from clipforge.data.datasets import LabelledImages
from clipforge.data.images import ImageDataset, collate_images
from clipforge.data.pairs import DataError, Skipped
from clipforge.evaluation.zero_shot import classification_metrics, fill_template


def scores_likelihood(model: torch.nn.Module) -> bool:
    """Whether ``model`` can classify by likelihood (it has ``text_log_likelihood``)."""
    return callable(getattr(model, "text_log_likelihood", None))


def class_scores(log_likelihood: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[N, C*T] log-likelihoods of the prompts, class-major (class c's T templates together) -> [N, C],
    the mean over each class's templates."""
    return log_likelihood.view(log_likelihood.shape[0], n_classes, -1).mean(dim=2)


@torch.no_grad()
def likelihood_zero_shot_task(model: torch.nn.Module, ds: LabelledImages, templates: Sequence[str],
                              batch_size: int = 64, progress: bool = False,
                              ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor, list[Skipped]]:
    """(metrics, scores [M, C], targets [M], skipped images) over the readable images of ``ds``, as
    :func:`clipforge.evaluation.tasks.zero_shot_task` returns them, the scores being log-likelihoods."""
    from clipforge.utils.progress import progress_bar

    if not scores_likelihood(model):
        raise DataError(f"{type(model).__name__} cannot score texts by likelihood (no text_log_likelihood)")
    if len(ds.images) == 0:
        raise DataError(f"{ds.name}: no images to evaluate")
    prompts = [fill_template(t, c) for c in ds.classes for t in templates]
    device = next(model.parameters()).device
    tokens = model.tokenizer(prompts).to(device)
    loader = DataLoader(ImageDataset(ds.images, model.preprocess), batch_size=batch_size,
                        collate_fn=collate_images)
    scores, idx, skipped = [], [], []
    with progress_bar("likelihood zero-shot", total=len(loader), enabled=progress) as bar:
        for batch in loader:
            skipped.extend(batch.skipped)
            if len(batch.indices):
                ll = model.text_log_likelihood(batch.images.to(device), tokens).float().cpu()
                scores.append(class_scores(ll, len(ds.classes)))
                idx.append(batch.indices)
            bar.advance()
    if not scores:
        example = f" (e.g. {skipped[0].source})" if skipped else ""
        raise DataError(f"{ds.name}: none of its {len(ds.images)} images could be read{example}")
    logits, index = torch.cat(scores), torch.cat(idx)
    targets = torch.tensor(ds.labels, dtype=torch.long)[index]
    return classification_metrics(logits, targets), logits, targets, skipped
