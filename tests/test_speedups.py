"""The engine's CPU speed-ups (ipx2p_core/speedups.py) change time, not results."""

from __future__ import annotations

import copy

import pytest
import torch

import tiny_models
from ipx2p_core.speedups import install_attention_fastpath, install_cpu_conv_fastpath, install_speedups


@pytest.fixture(scope="module")
def unets():
    stock = tiny_models.tiny_sd_components()["unet"].eval()
    fast = copy.deepcopy(stock)
    install_speedups(fast)
    return stock, fast


@pytest.mark.parametrize("batch,size", [(1, 8), (2, 16), (3, 32)])  # small convs take the GEMM path, large ones not
def test_unet_output_unchanged(unets, batch, size):
    stock, fast = unets
    torch.manual_seed(batch)
    x, text = torch.randn(batch, 8, size, size), torch.randn(batch, 77, 32)
    with torch.inference_mode():
        diff = (stock(x, 7, encoder_hidden_states=text).sample - fast(x, 7, encoder_hidden_states=text).sample).abs()
    assert float(diff.max()) <= 1e-5


def test_installed_once_and_only_on_plain_layers(unets):
    _, fast = unets
    assert install_cpu_conv_fastpath(fast) == 0 and install_attention_fastpath(fast) == 0  # already there
    fresh = tiny_models.tiny_sd_components()["unet"]
    assert install_attention_fastpath(fresh) == 12 and install_cpu_conv_fastpath(fresh) > 20


def test_attention_with_extra_arguments_takes_diffusers_path(unets):
    _, fast = unets
    attn = next(m for m in fast.modules() if type(m).__name__ == "Attention")
    x = torch.randn(1, 16, attn.query_dim)
    with torch.inference_mode():
        plain = attn(x)
        extra = attn(x, unexpected_argument=1)  # diffusers filters it out (and logs a warning)
    assert torch.equal(plain, extra)
