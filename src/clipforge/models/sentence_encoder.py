"""A sentence encoder: a Hugging Face transformer encoder, mean or CLS pooling, and L2 normalisation.

The same three modules as a sentence-transformers model (``Transformer`` -> ``Pooling`` ->
``Normalize``), so a folder written by :func:`clipforge.checkpoints.sentence_transformers.save_sentence_encoder`
loads in sentence-transformers and its folders load here (``clipforge.load``). Instructor-style task
instructions are sentence-transformers' ``prompts``: the prompt is prepended to each text and, as in
their Pooling's default ``include_prompt=True``, pooled with it. Needs ``transformers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import ConfigError

Pooling = Literal["mean", "cls"]


@dataclass
class SentenceEncoderConfig:
    """Attributes:
    pooling: mean over real tokens (sentence-transformers' usual) or the first ([CLS]) token.
    normalize: L2-normalise the embedding (cosine similarity = dot product).
    max_length: longer texts are truncated to this many tokens.
    prompts: task name -> instruction prepended to the text (``{"query": "query: "}``).
    """

    pooling: Pooling = "mean"
    normalize: bool = True
    max_length: int = 128
    prompts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {self.max_length}")


def transformers_module():
    try:
        import transformers
    except ImportError:
        raise ConfigError("a sentence encoder needs transformers: pip install 'clipforge[hf]'") from None
    transformers.utils.logging.disable_progress_bar()  # loading bars per weight file drown the run's own
    return transformers


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[N, L, H] token states -> [N, H]: the mean over real tokens (``mask`` 1) or the first token."""
    if pooling == "cls":
        return states[:, 0]
    m = mask[..., None].to(states.dtype)
    return (states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """Texts -> embeddings. ``encoder`` is a transformers encoder model (``BertModel`` ...),
    ``tokenizer`` its fast tokenizer.

    ``forward(input_ids, attention_mask)`` gives ``{"embedding": [N, H], "tokens": [N, L, H]}``;
    :meth:`encode` takes strings.
    """

    arch = "sentence_encoder"

    def __init__(self, encoder: nn.Module, tokenizer: Any, config: SentenceEncoderConfig | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config or SentenceEncoderConfig()

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @classmethod
    def from_pretrained(cls, folder: str, config: SentenceEncoderConfig | None = None) -> SentenceEncoder:
        """The encoder and tokenizer of a local Hugging Face folder (nothing is downloaded)."""
        tf = transformers_module()
        encoder = tf.AutoModel.from_pretrained(folder, local_files_only=True)
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(encoder, tokenizer, config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                **extra: torch.Tensor) -> dict[str, torch.Tensor]:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        pooled = pool(states, attention_mask, self.config.pooling)
        if self.config.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return {"embedding": pooled, "tokens": states}

    def prompt(self, task: str | None) -> str:
        """The instruction of ``task`` ("" for none); an unknown task name is an error naming the known ones."""
        if task is None:
            return ""
        if task not in self.config.prompts:
            known = sorted(self.config.prompts) or "none"
            raise ConfigError(f"no instruction for task {task!r}; the model has {known}")
        return self.config.prompts[task]

    def tokenize(self, texts: Sequence[str], task: str | None = None) -> dict[str, torch.Tensor]:
        prefix = self.prompt(task)
        batch = self.tokenizer([prefix + t for t in texts], padding=True, truncation=True,
                               max_length=self.config.max_length, return_tensors="pt")
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def embed(self, texts: Sequence[str], task: str | None = None) -> torch.Tensor:
        """[N, H] embeddings with their graph (training), the texts run in groups of similar length.

        A batch is padded to its longest text, so one long passage among short captions would make
        every caption cost as much as it. Each text's embedding depends on its own tokens only, so
        sorting the texts by length and running each group whose longest is at most twice its
        shortest separately gives the same embeddings (up to dropout draws) for much less compute.
        """
        prefix = self.prompt(task)
        enc = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=self.config.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        lengths = [len(ids) for ids in enc["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        device = next(self.parameters()).device
        parts, start = [], 0
        for end in range(1, len(order) + 1):
            if end == len(order) or lengths[order[end]] > 2 * lengths[order[start]]:
                group = order[start:end]
                batch = self.tokenizer.pad({k: [enc[k][i] for i in group] for k in keys}, return_tensors="pt")
                parts.append(self(**{k: batch[k].to(device) for k in keys})["embedding"])
                start = end
        out = torch.cat(parts)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return out[inverse.to(out.device)]

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, task: str | None = None,
               progress: bool = False) -> torch.Tensor:
        """[N, H] float32 embeddings in the order of ``texts`` (batched by length, as sentence-transformers)."""
        from clipforge.utils.progress import progress_bar

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        with progress_bar("embedding texts", len(texts), enabled=progress) as bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                batch = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in idx], task).items()}
                out[idx] = self(**batch)["embedding"].float().cpu()
                bar.advance(len(idx))
        self.train(was_training)
        return out
