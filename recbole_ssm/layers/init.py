"""Initialisation shared by the SSM mixers."""

from __future__ import annotations

import math

import torch


def dt_bias_init(n: int, dt_min: float = 1e-3, dt_max: float = 1e-1, floor: float = 1e-4) -> torch.Tensor:
    """Bias whose softplus is a step size drawn log-uniformly from [dt_min, dt_max]."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
