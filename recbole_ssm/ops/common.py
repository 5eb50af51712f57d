"""What the selective scan and the SSD scan share: compute dtype, step sizes, skip and gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NO_LIMIT = (0.0, float("inf"))


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64 (tests); everything else is computed in float32 like mamba-ssm."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def at_least_float32(t: Tensor) -> Tensor:
    """A parameter for the scan arithmetic: float32 (as mamba-ssm computes A, D and dt), or float64
    where it is float64, which ``.float()`` would round (and a float64 reference test with it)."""
    return t.to(compute_dtype(t))


def step_sizes(dt: Tensor, bias: Tensor | None, softplus: bool, dtype: torch.dtype, channel_dim: int = -1,
               limit: tuple[float, float] = NO_LIMIT) -> Tensor:
    """dt (+ bias along ``channel_dim``), softplus, clamped to ``limit``, in ``dtype``.

    Selective scan: dt (batch, dim, L), channel_dim 1. SSD: dt (batch, [L,] heads), channel_dim -1.
    """
    dt = dt.to(dtype)
    if bias is not None:
        shape = [1] * dt.dim()
        shape[channel_dim] = -1
        dt = dt + bias.to(dtype).reshape(shape)
    if softplus:
        dt = F.softplus(dt)
    if tuple(limit) != NO_LIMIT:
        dt = dt.clamp(min=limit[0], max=limit[1])
    return dt


def skip_and_gate(y: Tensor, x: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D * x, then y * silu(z). D (C,) scales dim 1 of y when y is (batch, C, L) and dim 2 of
    the SSD layout (batch, L, heads, headdim); D (heads, headdim) scales the last two dims."""
    if D is not None:
        Dc = D.to(y.dtype)
        y = y + x * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y
