"""The engine's attention kernel (clipforge.engine.attention): what ``auto`` resolves to, that every
kernel computes the attention and its gradients written out by hand, and that training steps run
under the resolved kernel."""

from __future__ import annotations

import math

import pytest
import torch

from clipforge.engine.attention import attention_kernel, resolve_attention
from clipforge.errors import ConfigError
from clipforge.models.transformer import SelfAttention
from clipforge.training.config import TrainConfig
from clipforge.training.trainer import train
from helpers import tiny_synth, tiny_train_config

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_auto_takes_the_math_kernel_under_bf16_on_the_cpu_only() -> None:
    assert resolve_attention("auto", CPU, "bf16") == "math"
    assert resolve_attention("auto", CPU, "fp32") == "default"
    assert resolve_attention("auto", GPU, "bf16") == "default"
    assert resolve_attention("auto", GPU, "fp16") == "default"
    for explicit in ("default", "math", "flash", "efficient"):
        assert resolve_attention(explicit, CPU, "bf16") == explicit


def test_an_unknown_kernel_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="attention must be one of .* got 'fast'"):
        resolve_attention("fast", CPU, "fp32")
    with pytest.raises(ConfigError, match="attention must be one of"):
        TrainConfig.from_dict({"attention": "fast"})


def _by_hand(attn: SelfAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, then the output projection, in float64."""
    b, n, d = x.shape
    h, dh = attn.heads, d // attn.heads
    q, k, v = (t.view(b, n, h, dh).transpose(1, 2)
               for t in torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return attn.out_proj(out)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["default", "math", "flash", "efficient"])
def test_every_kernel_computes_the_attention_and_its_gradients(kernel: str, causal: bool) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(32, 4)
    torch.nn.init.normal_(attn.in_proj_weight, std=0.2)
    x = torch.randn(3, 7, 32)
    ref_attn = SelfAttention(32, 4).double()
    ref_attn.load_state_dict({k: v.double() for k, v in attn.state_dict().items()})
    x_ref = x.double().requires_grad_()
    _by_hand(ref_attn, x_ref, causal).square().sum().backward()

    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        xs = x.clone().requires_grad_()
        attn.zero_grad()
        with attention_kernel(kernel), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = attn(xs, causal=causal)
        out.float().square().sum().backward()
        scale = x_ref.grad.abs().max().item()
        assert (out.double() - _by_hand(ref_attn, x.double(), causal)).abs().max() < tol * 10
        assert (xs.grad.double() - x_ref.grad).abs().max() < tol * scale
        w_ref = ref_attn.in_proj_weight.grad
        assert (attn.in_proj_weight.grad.double() - w_ref).abs().max() < tol * w_ref.abs().max()


@pytest.mark.parametrize(("precision", "attention", "flash_on"),
                         [("bf16", "auto", False), ("fp32", "auto", True), ("bf16", "default", True),
                          ("fp32", "math", False)])
def test_training_steps_run_under_the_resolved_kernel(tmp_path, precision: str, attention: str,
                                                      flash_on: bool) -> None:
    seen: list[tuple[bool, bool]] = []

    def record(module, args):
        seen.append((torch.backends.cuda.flash_sdp_enabled(), torch.is_autocast_enabled("cpu")))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: record(m, a) if isinstance(m, SelfAttention) else None)
    try:
        data = tiny_synth(tmp_path / "data", n_train=32, n_val=8)
        cfg = tiny_train_config(data, tmp_path / "run", epochs=1, max_steps=1, precision=precision,
                                attention=attention)
        train(TrainConfig.from_dict(cfg), progress=False)
    finally:
        hook.remove()
    assert seen and all(flash == flash_on and autocast == (precision == "bf16") for flash, autocast in seen)
    assert torch.backends.cuda.flash_sdp_enabled()  # the kernel is the step's only: restored after it
