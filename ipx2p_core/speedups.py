"""CPU speed-ups that keep results equal to within float rounding (parity tests hold them to 1e-4 per pixel).

Low-resolution convolutions on the CPU: PyTorch sends every Conv2d to oneDNN, which re-lays out the whole weight
tensor on every call. For the UNet's deepest levels (1280 channels at 4x4 or 8x8 latents) that re-layout costs more
than the arithmetic: measured on 2 cores, a 1280->1280 3x3 conv at 4x4, batch 2, takes 21 ms in oneDNN and 8 ms in
ATen's im2col + GEMM path, and a whole SD 1.5 UNet step at 256x256, batch 2, gets 14% faster (outputs differ by
1e-6). Above about 128 output positions per call (batch x height x width) oneDNN is faster again, so the choice is
made per call.

Attention calls: diffusers' ``Attention.forward`` inspects its processor's signature on every call to filter extra
keyword arguments, even when there are none; the engine never passes any. Calling the processor directly in that
case does the same work without the inspection: measured on 2 cores, a call of the tiny test UNet (12 attention
layers), batch 2, takes 26.2 instead of 26.6 ms (1.5%); the saving per layer (~30 us) is the same at any size, so it
matters where a step is short (small models, fast GPUs).
"""

from __future__ import annotations

import types

import torch

SMALL_CONV_POSITIONS = 128  # batch x height x width at or below which the GEMM path wins (measured, see above)

_slow_conv2d = getattr(getattr(torch.ops, "aten", None), "_slow_conv2d_forward", None)


def _conv_forward(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[0] * x.shape[-1] * x.shape[-2] <= SMALL_CONV_POSITIONS
        and x.dtype == torch.float32
    ):
        return _slow_conv2d(x, self.weight, self.kernel_size, self.bias, self.stride, self.padding)
    return type(self).forward(self, x)


def _eligible(m: torch.nn.Module) -> bool:
    return (
        type(m) is torch.nn.Conv2d
        and m.groups == 1
        and m.padding_mode == "zeros"
        and tuple(m.dilation) == (1, 1)
        and not isinstance(m.padding, str)
    )


def install_cpu_conv_fastpath(module: torch.nn.Module) -> int:
    """Route small CPU convolutions of ``module`` through the GEMM path; returns how many convs were set up.

    Only the instance's forward changes (no weights, no state dict); GPU and large inputs take the usual path.
    """
    if _slow_conv2d is None:  # a PyTorch build without the op: keep the default path
        return 0
    count = 0
    for m in module.modules():
        if _eligible(m) and "forward" not in m.__dict__:
            m.forward = types.MethodType(_conv_forward, m)
            count += 1
    return count


def _attention_forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
    if kwargs:  # extra arguments: diffusers' own forward filters and warns about them
        return type(self).forward(self, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
    return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask)


def install_attention_fastpath(module: torch.nn.Module) -> int:
    """Let ``module``'s diffusers attention layers call their processor without re-inspecting it on every call;
    returns how many layers were set up. Only plain ``Attention`` instances change (not subclasses)."""
    from diffusers.models.attention_processor import Attention

    count = 0
    for m in module.modules():
        if type(m) is Attention and "forward" not in m.__dict__:
            m.forward = types.MethodType(_attention_forward, m)
            count += 1
    return count


def install_speedups(unet: torch.nn.Module) -> None:
    """Everything above, on a freshly loaded UNet."""
    install_cpu_conv_fastpath(unet)
    install_attention_fastpath(unet)
