"""alignDRAW (Mansimov et al. 2016, "Generating Images from Captions with Attention"): a recurrent
VAE that draws on a canvas over T steps, attending to the caption's words at each.

- Language model: a bidirectional LSTM over the caption's tokens, h^lang = [h->; h<-] (section 3.1).
- At step t, with the canvas c_{t-1} and the generator's previous state h^gen_{t-1} (section 3.2):

      x^_t     = x - sigmoid(c_{t-1})                            the error image
      r_t      = read(x, x^_t, h^gen_{t-1})                      DRAW's Gaussian filterbank glimpses
      h^inf_t  = LSTM^inf(h^inf_{t-1}, [r_t, h^gen_{t-1}])
      Q(Z_t | x, y, Z_<t) = N(mu(h^inf_t), sigma(h^inf_t))       the posterior
      P(Z_t | Z_<t)       = N(mu(h^gen_{t-1}), sigma(h^gen_{t-1})), mu = tanh(W h), sigma = exp(tanh(W h))
      s_t      = align(h^gen_{t-1}, h^lang)                      eq. 2: a_k ~ exp(v^T tanh(U h^lang_k + W h^gen + b))
      h^gen_t  = LSTM^gen(h^gen_{t-1}, [z_t, s_t])
      c_t      = c_{t-1} + write(h^gen_t)                        F_y^T K F_x

- The image is sigmoid(c_T); the loss is the negative ELBO: -log p(x | Z) under a Gaussian of fixed
  ``pixel_std`` (the paper's colour model) plus the sum over steps of KL(Q_t || P_t) (eq. 5-7).

Sampling draws Z_t from the prior. The noise of the T steps, eps [N, T * z_dim], is the latent
(z_t = mu + sigma * eps_t), so CLIP-guided latent search and word edits work as for the GANs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.generation import filterbank
from clipforge.generation.caption_tokens import caption_ids
from clipforge.models.clip_linked import ClipLinked


@dataclass(frozen=True)
class AlignDRAWConfig(StoredConfig):
    image_size: int = 32
    vocab_size: int = 512  # the caption BPE's ids; one more is the pad
    text_length: int = 24
    steps: int = 16  # T (the paper: 32 on COCO)
    read_size: int = 6  # N of the read glimpse
    write_size: int = 8  # N of the written patch
    z_dim: int = 32
    hidden: int = 256  # LSTM^inf and LSTM^gen
    text_hidden: int = 128  # each direction of the language LSTM
    word_dim: int = 64
    align_dim: int = 128
    pixel_std: float = 0.3  # the likelihood's standard deviation, on pixels in [0, 1]
    clip_dim: int = 512
    clip_path: str = ""
    clip_fingerprint: str = ""

    def __post_init__(self) -> None:
        for name in ("image_size", "vocab_size", "text_length", "steps", "read_size", "write_size", "z_dim",
                     "hidden", "text_hidden", "word_dim", "align_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"aligndraw {name} must be at least 1, got {getattr(self, name)}")
        if self.pixel_std <= 0:
            raise ConfigError(f"aligndraw pixel_std must be positive, got {self.pixel_std}")



def gaussian_kl(mu_q: torch.Tensor, logsig_q: torch.Tensor, mu_p: torch.Tensor,
                logsig_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, sig_q^2) || N(mu_p, sig_p^2)) of diagonal Gaussians, summed over the last dimension."""
    var_q, var_p = (2 * logsig_q).exp(), (2 * logsig_p).exp()
    return (logsig_p - logsig_q + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p) - 0.5).sum(-1)


class CaptionEncoder(nn.Module):
    """h^lang: a bidirectional LSTM over the caption's tokens (pads left out)."""

    def __init__(self, config: AlignDRAWConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size + 1, config.word_dim)
        self.lstm = nn.LSTM(config.word_dim, config.text_hidden, batch_first=True, bidirectional=True)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])[0]


class Align(nn.Module):
    """s_t = sum_k a_k h^lang_k, a_k ~ exp(v^T tanh(U h^lang_k + W h^gen + b)) (Mansimov eq. 2)."""

    def __init__(self, config: AlignDRAWConfig) -> None:
        super().__init__()
        self.u = nn.Linear(2 * config.text_hidden, config.align_dim, bias=False)
        self.w = nn.Linear(config.hidden, config.align_dim)
        self.v = nn.Linear(config.align_dim, 1, bias=False)

    def forward(self, h_gen: torch.Tensor, words_u: torch.Tensor, words: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.v(torch.tanh(words_u + self.w(h_gen)[:, None])).squeeze(-1)
        a = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return (a[..., None] * words).sum(1), a


class AlignDRAW(ClipLinked):
    """The model; saved as arch ``aligndraw``. Its captions are read with its own BPE
    (``self.tokenizer``); the attached CLIP only re-ranks or guides searches."""

    arch = "aligndraw"
    kind = "generator"

    def __init__(self, config: AlignDRAWConfig) -> None:
        super().__init__()
        self.config = c = config
        self.caption = CaptionEncoder(c)
        self.align = Align(c)
        read_dim = 2 * 3 * c.read_size ** 2
        self.encoder = nn.LSTMCell(read_dim + c.hidden, c.hidden)
        self.decoder = nn.LSTMCell(c.z_dim + 2 * c.text_hidden, c.hidden)
        self.posterior = nn.Linear(c.hidden, 2 * c.z_dim)
        self.prior = nn.Linear(c.hidden, 2 * c.z_dim)
        self.read_attention = filterbank.Attention(c.hidden, c.read_size)
        self.write_attention = filterbank.Attention(c.hidden, c.write_size)
        self.write_patch = nn.Linear(c.hidden, 3 * c.write_size ** 2)

    # -- pieces -------------------------------------------------------------------------------
    def encode_captions(self, ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        words = self.caption(ids, lengths)
        mask = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None].to(ids.device)
        return {"words": words, "words_u": self.align.u(words), "mask": mask}

    def _prior(self, h_gen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, s = self.prior(h_gen).chunk(2, -1)
        return torch.tanh(mu), torch.tanh(s)  # sigma = exp(tanh(.)): log sigma = tanh(.)

    def _write(self, h_gen: torch.Tensor) -> torch.Tensor:
        c, n = self.config, self.config.write_size
        w = self.write_attention(h_gen, c.image_size, c.image_size)
        return filterbank.write(self.write_patch(h_gen).view(-1, 3, n, n), w, c.image_size, c.image_size)

    def _start(self, n: int, device: torch.device) -> tuple:
        zeros = torch.zeros(n, self.config.hidden, device=device)
        canvas = torch.zeros(n, 3, self.config.image_size, self.config.image_size, device=device)
        return (zeros, zeros.clone()), canvas

    # -- training -----------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, text: dict[str, torch.Tensor],
             noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Negative ELBO per image (nats) of images in [0, 1] [B, 3, H, W] given their encoded captions;
        ``noise`` [B, T, z_dim] draws the posterior's samples."""
        c = self.config
        gen, canvas = self._start(len(images), images.device)
        enc = (gen[0].clone(), gen[1].clone())
        kl = images.new_zeros(len(images))
        for t in range(c.steps):
            h_gen = gen[0]
            err = images - torch.sigmoid(canvas)
            w = self.read_attention(h_gen, c.image_size, c.image_size)
            r = torch.cat([filterbank.read(images, w, c.read_size), filterbank.read(err, w, c.read_size)], 1)
            enc = self.encoder(torch.cat([r.flatten(1), h_gen], 1), enc)
            mu_q, logsig_q = self.posterior(enc[0]).chunk(2, -1)
            mu_p, logsig_p = self._prior(h_gen)
            kl = kl + gaussian_kl(mu_q, logsig_q, mu_p, logsig_p)
            z = mu_q + logsig_q.exp() * noise[:, t]
            s, _ = self.align(h_gen, text["words_u"], text["words"], text["mask"])
            gen = self.decoder(torch.cat([z, s], 1), gen)
            canvas = canvas + self._write(gen[0])
        mean = torch.sigmoid(canvas)
        pixels = images[0].numel()
        nll = ((images - mean) ** 2).flatten(1).sum(1) / (2 * c.pixel_std ** 2) + \
            pixels * (math.log(c.pixel_std) + 0.5 * math.log(2 * math.pi))
        return {"nll": nll, "kl": kl, "loss": nll + kl, "mse": ((images - mean) ** 2).flatten(1).mean(1)}

    # -- sampling (the generators' latent interface) ------------------------------------------
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.steps * self.config.z_dim,)

    def draw_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """eps ~ N(0, I) [n, T * z_dim], drawn on the CPU (the same numbers on every device)."""
        return torch.randn((n, *self.latent_shape()), generator=generator)

    def condition(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The prompts' encoded captions (words, their projections, the mask)."""
        if self.tokenizer is None:
            raise ConfigError("this alignDRAW has no caption tokenizer (tokenizer.json is missing from its folder)")
        device = next(self.parameters()).device
        ids, lengths = caption_ids(self.tokenizer, prompts)
        return self.encode_captions(ids.to(device), lengths.to(device))

    def _unroll(self, latents: torch.Tensor, text: dict[str, torch.Tensor]) -> tuple[list, list]:
        """Draw from the prior with noise ``latents``: the canvas sigmoid(c_t) in [-1, 1] and the
        alignment over the words after each step."""
        c = self.config
        device = next(self.parameters()).device
        eps = latents.to(device).view(len(latents), c.steps, c.z_dim)
        if text["words"].shape[0] == 1 and len(latents) > 1:
            text = {k: v.expand(len(latents), *v.shape[1:]) for k, v in text.items()}
        gen, canvas = self._start(len(latents), device)
        strip, alignment = [], []
        for t in range(c.steps):
            mu_p, logsig_p = self._prior(gen[0])
            z = mu_p + logsig_p.exp() * eps[:, t]
            s, a = self.align(gen[0], text["words_u"], text["words"], text["mask"])
            gen = self.decoder(torch.cat([z, s], 1), gen)
            canvas = canvas + self._write(gen[0])
            strip.append(torch.sigmoid(canvas) * 2 - 1)
            alignment.append(a)
        return strip, alignment

    def render(self, latents: torch.Tensor, text: dict[str, torch.Tensor], canvases: bool = False,
               **_: Any) -> torch.Tensor:
        """sigmoid(c_T) mapped to [-1, 1], differentiable in ``latents``; one caption row is shared by
        every latent. With ``canvases``: [T, N, 3, H, W], the image after each step."""
        strip, _ = self._unroll(latents, text)
        return torch.stack(strip) if canvases else strip[-1]

    @torch.no_grad()
    def generate(self, prompts: list[str], generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, canvases: bool = False, **_: Any) -> dict[str, torch.Tensor]:
        """Images [N, 3, H, W] in [-1, 1] for ``prompts`` (with ``canvases``, also ``canvases``
        [T, N, 3, H, W]). Other generators' sampling options do not apply and are ignored."""
        self.eval()
        eps = latents if latents is not None else self.draw_latents(len(prompts), generator)
        text = self.condition(prompts)
        if canvases:
            strip = self.render(eps, text, canvases=True)
            return {"images": strip[-1], "canvases": strip}
        return {"images": self.render(eps, text)}

    @torch.no_grad()
    def attention_over_words(self, text: dict[str, torch.Tensor], latents: torch.Tensor) -> torch.Tensor:
        """The alignment a [T, N, L] over each caption's tokens at every step (what the paper plots);
        ``text`` from :meth:`condition` or :meth:`encode_captions`."""
        return torch.stack(self._unroll(latents, text)[1])


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> floats in [0, 1], alignDRAW's pixel scale."""
    return images.float() / 255


def validation_elbo(model: AlignDRAW, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                    seed: int = 0, batch_size: int = 256) -> dict[str, float]:
    """Mean negative ELBO (nats per image) and its parts over uint8 ``images`` and their captions,
    with one posterior draw per image."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    sums = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "mse": 0.0}
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = to_unit(images[i:i + batch_size]).to(device)
            text = model.encode_captions(ids[i:i + batch_size].to(device), lengths[i:i + batch_size].to(device))
            noise = torch.randn((len(x), model.config.steps, model.config.z_dim), generator=g).to(device)
            out = model.loss(x, text, noise)
            for k in sums:
                sums[k] += float(out[k].sum())
    return {k: v / len(images) for k, v in sums.items()}
