"""Mamba1 mixer: in_proj, causal depthwise conv, selective scan, SiLU gate, out_proj."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ssm.layers.block import gated_projection, take
from recbole_ssm.layers.init import dt_bias_init
from recbole_ssm.ops import causal_conv1d_fn, selective_scan_fn


class MambaMixer(nn.Module):
    """Selective SSM block of Mamba (Gu & Dao 2023), causal in the sequence dimension.

    Args:
        d_model: input and output width.
        d_state: SSM state size N.
        d_conv: width of the causal depthwise convolution.
        expand: inner width is ``expand * d_model``.
        dt_rank: rank of the step-size projection (default ``ceil(d_model / 16)``).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: Optional[int] = None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        with torch.no_grad():
            bound = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(dt_bias_init(self.d_inner))
        # S4D-real initialisation: A = -(1..N) for every channel
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # (D, N)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(
        self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """hidden: (B, L, d_model) -> (B, L, d_model), or (B, d_model) at position ``index[b]`` of
        each row when ``index`` (B,) is given. ``mask`` is ignored: the block is causal."""
        z, x = gated_projection(self.in_proj, hidden, self.d_inner, gate_first=False, index=index)
        x = x.transpose(1, 2)  # (B, D, L)
        if index is None:
            z = z.transpose(1, 2)  # (B, D, L); with index z is (B, D)
        x = causal_conv1d_fn(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, D, L), bias added in the scan
        y = selective_scan_fn(
            x, dt, -torch.exp(self.A_log.float()),
            b.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous(),  # (B, N, L)
            D=self.D.float(), z=z if index is None else None, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )  # (B, D, L)
        if index is not None:
            return self.out_proj(take(y, index, dim=2) * F.silu(z))  # (B, d_model)
        return self.out_proj(y.transpose(1, 2))  # (B, L, d_model)
