"""Depthwise causal 1-D convolution with causal-conv1d's semantics, and its recurrent step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_ssm.ops import backend as _backend

_ACTIVATIONS = (None, "silu", "swish")


def _activate(y: Tensor, activation: str | None) -> Tensor:
    if activation not in _ACTIVATIONS:
        raise NotImplementedError(f"activation must be None, 'silu' or 'swish'; got {activation!r}")
    return F.silu(y) if activation is not None else y


def causal_conv1d_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Loop over the taps: ``y[:, d, t] = bias[d] + sum_k weight[d, k] * x[:, d, t - (W-1) + k]``.

    Args:
        x: (batch, dim, L). weight: (dim, W). bias: (dim,) or None.
        activation: None, ``"silu"`` or ``"swish"`` (the same).

    Returns:
        (batch, dim, L) in ``x``'s dtype.
    """
    W = weight.shape[1]
    L = x.shape[-1]
    y = torch.zeros_like(x)  # (batch, dim, L)
    for k in range(W):
        shift = W - 1 - k  # tap k reads position t - shift
        if shift < L:
            y[..., shift:] += weight[:, k, None] * x[..., : L - shift]
    if bias is not None:
        y = y + bias[:, None]
    return _activate(y, activation)


def causal_conv1d_fn(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Depthwise causal convolution like ``causal_conv1d.causal_conv1d_fn``.

    causal-conv1d's CUDA kernel where it imports and the inputs are on CUDA, else
    ``F.conv1d`` with ``W - 1`` zeros of left padding.

    Args:
        x: (batch, dim, L). weight: (dim, W). bias: (dim,) or None.
        activation: None, ``"silu"`` or ``"swish"``.

    Returns:
        (batch, dim, L) in ``x``'s dtype.
    """
    impl, kernel = _backend.dispatch("causal_conv1d", x.device)
    if impl == "cuda":
        return kernel(x, weight, bias, activation=activation)
    W = weight.shape[1]
    y = F.conv1d(F.pad(x, (W - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])  # (batch, dim, L)
    return _activate(y, activation)


def causal_conv1d_update(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """One step of :func:`causal_conv1d_fn`; ``conv_state`` (the last W inputs) is updated in place.

    Args:
        x: (batch, dim), the new position. conv_state: (batch, dim, W), oldest first.
        weight: (dim, W). bias: (dim,) or None. activation: None, ``"silu"`` or ``"swish"``.

    Returns:
        (batch, dim): the convolution's output at the new position.
    """
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    y = (conv_state * weight).sum(-1)  # (batch, dim)
    if bias is not None:
        y = y + bias
    return _activate(y, activation).to(x.dtype)
