"""Mamba1 mixer: in_proj, causal depthwise conv, selective scan, SiLU gate, out_proj."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ssm.layers.block import conv_window, gated_projection, real_positions, take
from recbole_ssm.layers.init import dt_bias_init
from recbole_ssm.ops import causal_conv1d_fn, causal_conv1d_update, selective_scan_fn, selective_state_update
from recbole_ssm.ops.common import at_least_float32, compute_dtype, step_sizes


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
            x, dt, -torch.exp(at_least_float32(self.A_log)),
            b.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous(),  # (B, N, L)
            D=at_least_float32(self.D), z=z if index is None else None, delta_bias=at_least_float32(self.dt_proj.bias),
            delta_softplus=True,
        )  # (B, D, L)
        if index is not None:
            return self.out_proj(take(y, index, dim=2) * F.silu(z))  # (B, d_model)
        return self.out_proj(y.transpose(1, 2))  # (B, L, d_model)

    # Step-wise inference: state = (conv cache (B, D, d_conv), SSM state (B, D, N) in float32)

    def new_state(self, batch: int, device=None, dtype=torch.float32):
        conv = torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype)
        return conv, torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32)

    def step(self, hidden: torch.Tensor, state) -> torch.Tensor:
        """One new position per row: hidden (B, d_model) -> (B, d_model); ``state`` advanced in place."""
        conv_state, ssm_state = state
        x, z = torch.split(self.in_proj(hidden), [self.d_inner, self.d_inner], dim=-1)  # (B, D) each
        x = causal_conv1d_update(x, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        dt, b, c = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        y = selective_state_update(
            ssm_state, x, F.linear(dt, self.dt_proj.weight), -torch.exp(at_least_float32(self.A_log)), b, c,
            D=at_least_float32(self.D), z=z, dt_bias=at_least_float32(self.dt_proj.bias), dt_softplus=True,
        )  # (B, D)
        return self.out_proj(y)

    def prefill(self, hidden: torch.Tensor, lengths: torch.Tensor):
        """hidden (B, L, d_model), right-padded rows of ``lengths`` real positions -> (output (B, L,
        d_model), state after each row's last real position). The step size is 0 on padding, so
        the SSM state passes through it unchanged."""
        z, x = gated_projection(self.in_proj, hidden, self.d_inner, gate_first=False)
        x = x.transpose(1, 2)  # (B, D, L)
        conv_state = conv_window(x, lengths, self.d_conv)
        x = causal_conv1d_fn(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        dt, b, c = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = step_sizes(F.linear(dt, self.dt_proj.weight), self.dt_proj.bias, True, compute_dtype(x)).transpose(1, 2)
        dt = dt * real_positions(lengths, x.size(2)).unsqueeze(1)  # (B, D, L), 0 on padding
        y, ssm_state = selective_scan_fn(
            x, dt.to(x.dtype), -torch.exp(at_least_float32(self.A_log)),
            b.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous(),
            D=at_least_float32(self.D), z=z.transpose(1, 2), return_last_state=True,
        )
        return self.out_proj(y.transpose(1, 2)), (conv_state, ssm_state.float())
