"""Mamba2 mixer: SSD heads (scalar decay per head), causal conv, gated RMSNorm."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from recbole_ssm.layers.block import conv_window, gated_projection, real_positions, take
from recbole_ssm.layers.init import dt_bias_init
from recbole_ssm.layers.norm import RMSNormGated
from recbole_ssm.ops import causal_conv1d_fn, causal_conv1d_update, mamba_chunk_scan_combined, ssd_state_update
from recbole_ssm.ops.common import at_least_float32, compute_dtype, step_sizes


class Mamba2Mixer(nn.Module):
    """State space duality (SSD) block of Mamba2 (Dao & Gu 2024), causal.

    ``expand * d_model`` must be divisible by ``headdim``, and the number of heads by ``ngroups``.
    """

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 256):
        super().__init__()
        self.d_inner = expand * d_model
        assert self.d_inner % headdim == 0 and (self.d_inner // headdim) % ngroups == 0
        self.d_state, self.headdim, self.ngroups, self.chunk_size = d_state, headdim, ngroups, chunk_size
        self.nheads = self.d_inner // headdim
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1)
        self.dt_bias = nn.Parameter(dt_bias_init(self.nheads))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = RMSNormGated(self.d_inner, eps=1e-5, norm_before_gate=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(
        self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """hidden: (B, L, d_model) -> (B, L, d_model), or (B, d_model) at position ``index[b]`` of
        each row when ``index`` (B,) is given. ``mask`` is ignored: the block is causal."""
        bsz, seqlen, _ = hidden.shape
        z, rest = gated_projection(self.in_proj, hidden, self.d_inner, gate_first=True, index=index)
        xbc, dt = torch.split(rest, [self.conv_dim, self.nheads], dim=-1)
        xbc = causal_conv1d_fn(xbc.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                               activation="silu").transpose(1, 2)  # (B, L, conv_dim)
        gn = self.ngroups * self.d_state
        x, b, c = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        y = mamba_chunk_scan_combined(
            x.reshape(bsz, seqlen, self.nheads, self.headdim),  # (B, L, H, P)
            dt,  # (B, L, H)
            -torch.exp(at_least_float32(self.A_log)),
            b.reshape(bsz, seqlen, self.ngroups, self.d_state),  # (B, L, G, N)
            c.reshape(bsz, seqlen, self.ngroups, self.d_state),
            self.chunk_size, D=at_least_float32(self.D), dt_bias=at_least_float32(self.dt_bias), dt_softplus=True,
        ).reshape(bsz, seqlen, self.d_inner)
        if index is not None:
            y = take(y, index)  # (B, D)
        return self.out_proj(self.norm(y, z))  # (B, L, d_model) or (B, d_model)

    # Step-wise inference: state = (conv cache (B, conv_dim, d_conv), SSD state (B, H, P, N) in float32)

    def new_state(self, batch: int, device=None, dtype=torch.float32):
        conv = torch.zeros(batch, self.conv_dim, self.conv1d.kernel_size[0], device=device, dtype=dtype)
        ssm = torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32)
        return conv, ssm

    def step(self, hidden: torch.Tensor, state) -> torch.Tensor:
        """One new position per row: hidden (B, d_model) -> (B, d_model); ``state`` advanced in place."""
        conv_state, ssm_state = state
        bsz = hidden.size(0)
        z, xbc, dt = torch.split(self.in_proj(hidden), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xbc = causal_conv1d_update(xbc, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                   activation="silu")
        gn = self.ngroups * self.d_state
        x, b, c = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        y = ssd_state_update(
            ssm_state, x.reshape(bsz, self.nheads, self.headdim), dt, -torch.exp(at_least_float32(self.A_log)),
            b.reshape(bsz, self.ngroups, self.d_state), c.reshape(bsz, self.ngroups, self.d_state),
            D=at_least_float32(self.D), dt_bias=at_least_float32(self.dt_bias), dt_softplus=True,
        ).reshape(bsz, self.d_inner)
        return self.out_proj(self.norm(y, z))

    def prefill(self, hidden: torch.Tensor, lengths: torch.Tensor):
        """hidden (B, L, d_model), right-padded rows of ``lengths`` real positions -> (output (B, L,
        d_model), state after each row's last real position). The step size is 0 on padding, so
        the SSD state passes through it unchanged."""
        bsz, seqlen, _ = hidden.shape
        z, rest = gated_projection(self.in_proj, hidden, self.d_inner, gate_first=True)
        xbc, dt = torch.split(rest, [self.conv_dim, self.nheads], dim=-1)
        xbc = xbc.transpose(1, 2)  # (B, conv_dim, L)
        conv_state = conv_window(xbc, lengths, self.conv1d.kernel_size[0])
        xbc = causal_conv1d_fn(xbc, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu").transpose(1, 2)
        gn = self.ngroups * self.d_state
        x, b, c = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        dt = step_sizes(dt, self.dt_bias, True, compute_dtype(dt)) * real_positions(lengths, seqlen).unsqueeze(-1)
        y, ssm_state = mamba_chunk_scan_combined(
            x.reshape(bsz, seqlen, self.nheads, self.headdim), dt, -torch.exp(at_least_float32(self.A_log)),
            b.reshape(bsz, seqlen, self.ngroups, self.d_state), c.reshape(bsz, seqlen, self.ngroups, self.d_state),
            self.chunk_size, D=at_least_float32(self.D), return_final_states=True,
        )
        y = y.reshape(bsz, seqlen, self.d_inner)
        return self.out_proj(self.norm(y, z)), (conv_state, ssm_state.float())
