"""PFFN and the residual SSM layer shared by the models."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def take(t: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Row b of the result is ``t[b, ..., index[b], ...]`` along ``dim``: (B, ..., L, ...) -> (B, ...)."""
    rows = torch.arange(t.size(0), device=t.device)
    return t[rows, index] if dim == 1 else t.movedim(dim, 1)[rows, index]


def conv_window(x: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """The causal convolution's cache after each row's last real position: inputs
    ``lengths[b] - width .. lengths[b] - 1`` of row b, oldest first, 0 before the start.
    x: (B, C, L) -> (B, C, width)."""
    pos = lengths.unsqueeze(1) - width + torch.arange(width, device=x.device)  # (B, W)
    got = x.gather(2, pos.clamp_min(0).unsqueeze(1).expand(-1, x.size(1), -1))  # (B, C, W)
    return got * (pos >= 0).unsqueeze(1).to(x.dtype)


def real_positions(lengths: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(B,) lengths -> (B, L) bool, True at each row's real (non-padding) positions."""
    return torch.arange(seqlen, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def gated_projection(
    proj: nn.Linear, hidden: torch.Tensor, gate_size: int, gate_first: bool, index: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``proj(hidden)`` split into the gate (``gate_size`` features, first or last) and the rest.

    Without ``index``: gate (B, L, gate_size) and rest (B, L, out - gate_size). With ``index``
    (B,): the gate only at position ``index[b]`` of each row, (B, gate_size), since a gate is
    read only where the output is.
    """
    rest_size = proj.out_features - gate_size
    sizes = [gate_size, rest_size] if gate_first else [rest_size, gate_size]
    if index is None:
        parts = torch.split(proj(hidden), sizes, dim=-1)
        return (parts[0], parts[1]) if gate_first else (parts[1], parts[0])
    ws = proj.weight.split(sizes, dim=0)
    bs = proj.bias.split(sizes) if proj.bias is not None else (None, None)
    g, r = (0, 1) if gate_first else (1, 0)
    return F.linear(take(hidden, index), ws[g], bs[g]), F.linear(hidden, ws[r], bs[r])


class PFFN(nn.Module):
    """Position-wise feed-forward network: Linear d->4d, GELU, dropout, Linear 4d->d, dropout,
    residual, LayerNorm (the Mamba4Rec / seed-paper block)."""

    def __init__(self, d_model: int, inner: Optional[int] = None, dropout: float = 0.2):
        super().__init__()
        self.w_1 = nn.Linear(d_model, inner or 4 * d_model)
        self.w_2 = nn.Linear(inner or 4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(d_model, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.w_2(self.dropout(F.gelu(self.w_1(x)))))
        return self.LayerNorm(h + x)


class SSMLayer(nn.Module):
    """mixer -> dropout -> (residual) LayerNorm -> PFFN.

    As in Mamba4Rec, a single layer has no residual around the mixer; stacked layers do.
    With ``index`` (B,), only the output at position ``index[b]`` of each row is computed,
    (B, d) instead of (B, L, d): everything after the sequence mixing is position-wise, so the
    other positions are never needed when this is the last layer.
    """

    def __init__(self, mixer: nn.Module, d_model: int, dropout: float, residual: bool):
        super().__init__()
        self.mixer = mixer
        self.residual = residual
        self.dropout = nn.Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(d_model, eps=1e-12)
        self.ffn = PFFN(d_model, dropout=dropout)

    def forward(
        self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        h = self.dropout(self.mixer(x, mask, index))
        if self.residual:
            h = h + (x if index is None else take(x, index))
        h = self.LayerNorm(h)
        return self.ffn(h)

    def after_mixer(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(h)
        if self.residual:
            h = h + x
        return self.ffn(self.LayerNorm(h))

    def step(self, x: torch.Tensor, state) -> torch.Tensor:
        """One position: x (B, d) -> (B, d); the mixer's ``state`` is advanced in place (causal mixers)."""
        return self.after_mixer(self.mixer.step(x, state), x)

    def prefill(self, x: torch.Tensor, lengths: torch.Tensor):
        """The whole sequence (B, L, d) -> (output (B, L, d), the mixer's state after each row's last real item)."""
        h, state = self.mixer.prefill(x, lengths)
        return self.after_mixer(h, x), state


class ResidualMixer(nn.Module):
    """x + mixer(x) for stacked blocks; the mixer alone for a single block."""

    def __init__(self, mixer: nn.Module, residual: bool):
        super().__init__()
        self.mixer, self.residual = mixer, residual

    def forward(self, x, mask=None, index=None):
        h = self.mixer(x, mask, index)
        if not self.residual:
            return h
        return h + (x if index is None else take(x, index))

    def step(self, x, state):
        h = self.mixer.step(x, state)
        return h + x if self.residual else h

    def prefill(self, x, lengths):
        h, state = self.mixer.prefill(x, lengths)
        return (h + x if self.residual else h), state
