"""Normalisation layers of the SSM blocks."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNormGated(nn.Module):
    """RMSNorm with an optional SiLU gate, as in Mamba2 and Hydra.

    ``norm_before_gate=False`` (Mamba2): ``rmsnorm(x * silu(z))``;
    ``norm_before_gate=True`` (Hydra): ``rmsnorm(x) * silu(z)``.
    """

    def __init__(self, d: int, eps: float = 1e-5, norm_before_gate: bool = False):
        super().__init__()
        self.eps = eps
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(d))

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        if z is None:
            return self._rms(x)
        if self.norm_before_gate:
            return self._rms(x) * F.silu(z)
        return self._rms(x * F.silu(z))
