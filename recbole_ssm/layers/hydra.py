"""Hydra mixer: a bidirectional quasiseparable matrix mixer built from two SSD scans.

Hydra (Hwang et al. 2024, "Hydra: Bidirectional State Space Models Through Generalized
Matrix Mixers") mixes a sequence with ``y = shift(SS(x)) + flip(shift(SS(flip(x)))) + diag(x)``:
a forward and a backward SSD scan, each shifted by one step so both cover only the strictly
lower / upper triangle, plus a data-dependent diagonal.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ssm.layers.block import gated_projection, take
from recbole_ssm.layers.init import dt_bias_init
from recbole_ssm.layers.norm import RMSNormGated
from recbole_ssm.ops import mamba_chunk_scan_combined
from recbole_ssm.ops.common import at_least_float32, step_sizes


def _shift_right(y: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """y[:, t] <- y[:, t-steps], 0 for t < steps, along dim 1."""
    if steps <= 0:
        return y
    return F.pad(y[:, : max(y.size(1) - steps, 0)], (0, 0) * (y.dim() - 2) + (min(steps, y.size(1)), 0))


def _shift_left(y: torch.Tensor, steps: int) -> torch.Tensor:
    """y[:, t] <- y[:, t+steps], 0 for t >= L - steps, along dim 1."""
    if steps <= 0:
        return y
    return F.pad(y[:, steps:], (0, 0) * (y.dim() - 2) + (0, min(steps, y.size(1))))


class HydraMixer(nn.Module):
    """Bidirectional SSD mixer. ``d_conv`` must be odd (a centred, non-causal convolution).

    With ``mask`` (B, L) of real positions, the output at real positions does not depend on
    what follows them: masked inputs are zeroed before the projection and after the
    convolution, so the backward scan starts empty at the last real position.

    ``causal=True`` keeps the forward direction only: the convolution's taps after the centre
    are left out and the backward scan is not run, so position t reads positions 0..t and the
    mixer can be trained at every position at once. It is not the bidirectional mixer read at
    the last real item: there the forward scan reads convolution outputs of earlier positions
    that looked ahead up to the read position.
    """

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 7, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 256, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.d_inner = expand * d_model
        assert d_conv % 2 == 1 and self.d_inner % headdim == 0 and (self.d_inner // headdim) % ngroups == 0
        self.d_state, self.headdim, self.ngroups, self.chunk_size = d_state, headdim, ngroups, chunk_size
        self.nheads = self.d_inner // headdim
        gn = ngroups * d_state
        self.conv_dim = self.d_inner + 4 * gn  # x, then B and C for each direction
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + 2 * self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv // 2)
        self.dt_bias = nn.Parameter(dt_bias_init(self.nheads))
        self.A_log = nn.Parameter(torch.zeros(self.nheads))  # A = -1
        self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False)  # data-dependent diagonal
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = RMSNormGated(self.d_inner, eps=1e-5, norm_before_gate=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _taps_up_to(self, ahead: int) -> torch.Tensor:
        """The convolution's weight with the taps more than ``ahead`` steps after the centre left out."""
        weight = self.conv1d.weight
        radius = weight.size(-1) // 2
        if ahead >= radius:
            return weight
        offsets = torch.arange(weight.size(-1), device=weight.device) - radius
        return weight * (offsets <= ahead).to(weight.dtype)

    def _conv(self, xbc: torch.Tensor) -> torch.Tensor:
        """The depthwise convolution of (B, C, L), centred; causal: the taps after the centre left out."""
        if not self.causal:
            return self.conv1d(xbc)
        return F.conv1d(xbc, self._taps_up_to(0), self.conv1d.bias, padding=self.conv1d.padding,
                        groups=self.conv1d.groups)

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The scans' sum y plus the diagonal term of x, gated RMSNorm with z, the output projection."""
        diag = F.linear(x, self.fc_D.weight, self.D)  # (B, [L,] H)
        y = y + x * diag.repeat_interleave(self.headdim, dim=-1)
        return self.out_proj(self.norm(y, z))  # (B, L, d_model) or (B, d_model)

    @staticmethod
    def reads_last_real(mask: Optional[torch.Tensor], index: torch.Tensor, seqlen: int) -> bool:
        """Whether ``index`` is each row's last real position (the last position, without a mask)."""
        last = mask.sum(1) - 1 if mask is not None else torch.full_like(index, seqlen - 1)
        return bool(torch.equal(index, last))

    def _both_directions(self, x, bc, dt, A, bsz: int, seqlen: int, gn: int, index):
        """Both scans as one batch of 2B sequences, the second read backwards; each shifted by one
        step. Returns the mixed sequence (B, L, D) and x, or both at ``index`` (B, D)."""
        x2 = torch.cat([x, x.flip(1)], dim=0).reshape(2 * bsz, seqlen, self.nheads, self.headdim)
        bc2 = torch.cat([bc[..., : 2 * gn], bc[..., 2 * gn:].flip(1)], dim=0)  # (2B, L, 2*G*N)
        b2, c2 = bc2.reshape(2 * bsz, seqlen, 2, self.ngroups, self.d_state).unbind(2)  # (2B, L, G, N)
        dt2 = torch.cat([dt[..., : self.nheads], dt[..., self.nheads:].flip(1)], dim=0)  # (2B, L, H)
        y2 = mamba_chunk_scan_combined(
            x2, dt2, A, b2, c2, self.chunk_size, dt_bias=at_least_float32(self.dt_bias), dt_softplus=True,
        ).reshape(2 * bsz, seqlen, self.d_inner)
        if index is not None:
            # shifted right: position t reads the forward scan at t-1 and the backward one at t+1,
            # i.e. row L-2-t of the reversed sequence; 0 beyond either end
            fwd = take(y2[:bsz], (index - 1).clamp_min(0)) * (index > 0).unsqueeze(-1)
            back = seqlen - 2 - index
            bwd = take(y2[bsz:], back.clamp_min(0)) * (back >= 0).unsqueeze(-1)
            return fwd + bwd, take(x, index)
        y2 = _shift_right(y2)  # strictly causal in each direction
        return y2[:bsz] + y2[bsz:].flip(1), x  # (B, L, D)

    def prefix_outputs(self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model): at each real position t, what ``forward`` gives for the
        prefix that ends at t read at t (``mask`` cut after t, ``index`` t), for every t in one pass.

        Read at the last real position the backward scan contributes nothing, so the output is the
        forward scan's, whose inputs near t come from the centred convolution: with R = d_conv // 2,
        the convolution outputs at t-R+1 .. t look ahead past t, where the prefix has zeros. Those
        few positions are recomputed with the taps that would read past t left out; the positions
        up to t-R are the whole sequence's. So, with S the scan state after position t-R and dt
        the step sizes, the output at t is ``C'_{t-1} . (exp(A (dt_{t-R+1} + .. + dt_{t-1})) S
        + sum over s = t-R+1 .. t-1 of exp(A (dt_{s+1} + .. + dt_{t-1})) dt_s B'_s x'_s)`` plus the
        diagonal term of x'_t (primes: the prefix's convolution outputs), computed as one SSD scan
        with the query C'_{t-1} placed at position t-R, plus R-1 position-wise terms.
        """
        if self.causal:
            return self.forward(hidden, mask)  # already position t's own prefix output
        bsz, seqlen, _ = hidden.shape
        keep = None if mask is None else mask.unsqueeze(-1).to(hidden.dtype)
        if keep is not None:
            hidden = hidden * keep
        z, rest = gated_projection(self.in_proj, hidden, self.d_inner, gate_first=True)
        gn, heads, hd = self.ngroups * self.d_state, self.nheads, self.headdim
        n_fwd = self.d_inner + 2 * gn  # x, B and C of the forward direction
        u = rest[..., :n_fwd].transpose(1, 2)  # (B, C, L)
        bias = self.conv1d.bias[:n_fwd]
        radius = self.conv1d.kernel_size[0] // 2
        reach = max(radius, 1)  # positions t-reach+1 .. t differ between the prefix and the sequence

        def conv(ahead: int):
            """x (B, L, H, P), B and C (B, L, G, N) from the convolution's taps up to ``ahead`` after the centre."""
            out = F.silu(F.conv1d(u, self._taps_up_to(ahead)[:n_fwd], bias, padding=radius, groups=n_fwd)
                         .transpose(1, 2))
            if keep is not None:
                out = out * keep
            x_, b_, c_ = torch.split(out, [self.d_inner, gn, gn], dim=-1)
            return (x_.reshape(bsz, seqlen, heads, hd), b_.reshape(bsz, seqlen, self.ngroups, self.d_state),
                    c_.reshape(bsz, seqlen, self.ngroups, self.d_state))

        convs = [conv(ahead) for ahead in range(radius + 1)]  # every one is read below; [radius]: all taps
        x_all, b_all, _ = convs[radius]
        _, _, c_one = convs[min(1, radius)]  # C'_{t-1} of the prefix ending at t, read at t-1: one tap ahead
        A = -torch.exp(at_least_float32(self.A_log))
        cdt = torch.promote_types(hidden.dtype, torch.float32)
        dt = step_sizes(rest[..., n_fwd + 2 * gn : n_fwd + 2 * gn + heads], at_least_float32(self.dt_bias), True, cdt)
        cum = torch.cumsum(dt, dim=1)  # (B, L, H)
        cum_prev = _shift_right(cum, 1)  # dt_0 + .. + dt_{t-1}
        query = _shift_left(c_one, reach - 1)  # at position p: C'_{p+reach-1}, the query of output p+reach
        scan = mamba_chunk_scan_combined(x_all, dt, A, b_all, query, self.chunk_size)  # (B, L, H, P)
        # output t reads the scan at t-reach, decayed over dt_{t-reach+1} .. dt_{t-1}
        decay = torch.exp(A * (cum_prev - _shift_right(cum, reach)))  # (B, L, H)
        y = _shift_right(scan, reach) * decay.unsqueeze(-1).to(scan.dtype)
        c_prev = _shift_right(c_one, 1)  # (B, L, G, N): C'_{t-1}
        per_group = heads // self.ngroups
        for back in range(1, reach):  # s = t - back, convolved with the taps up to ``back`` ahead
            x_s, b_s, _ = convs[back]
            x_s, b_s = _shift_right(x_s, back), _shift_right(b_s, back)
            cb = (c_prev * b_s).sum(-1).repeat_interleave(per_group, dim=-1)  # (B, L, H)
            weight_s = torch.exp(A * (cum_prev - _shift_right(cum, back))) * _shift_right(dt, back)
            y = y + (cb * weight_s).unsqueeze(-1).to(x_s.dtype) * x_s
        x_now = convs[0][0].reshape(bsz, seqlen, self.d_inner)  # x'_t: no tap after the centre
        return self._output(y.reshape(bsz, seqlen, self.d_inner).to(x_now.dtype), x_now, z)

    def forward(
        self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """hidden: (B, L, d_model), mask: (B, L) bool of real positions -> (B, L, d_model), or
        (B, d_model) at position ``index[b]`` of each row when ``index`` (B,) is given."""
        bsz, seqlen, _ = hidden.shape
        keep = None if mask is None else mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        if keep is not None:
            hidden = hidden * keep
        z, rest = gated_projection(self.in_proj, hidden, self.d_inner, gate_first=True, index=index)
        xbc, dt = torch.split(rest, [self.conv_dim, 2 * self.nheads], dim=-1)
        xbc = F.silu(self._conv(xbc.transpose(1, 2)).transpose(1, 2))  # (B, L, conv_dim), same length
        if keep is not None:
            xbc = xbc * keep  # conv bias makes padding non-zero; the backward scan must start empty
        gn = self.ngroups * self.d_state
        x, bc = torch.split(xbc, [self.d_inner, 4 * gn], dim=-1)
        A = -torch.exp(at_least_float32(self.A_log))
        if self.causal or (index is not None and self.reads_last_real(mask, index, seqlen)):
            # Causal: the forward scan only. Read at the last real position: the backward scan at
            # index + 1 sees only masked (zero) inputs, so its contribution there is exactly 0.
            y = mamba_chunk_scan_combined(
                x.reshape(bsz, seqlen, self.nheads, self.headdim), dt[..., : self.nheads], A,
                bc[..., :gn].reshape(bsz, seqlen, self.ngroups, self.d_state),
                bc[..., gn: 2 * gn].reshape(bsz, seqlen, self.ngroups, self.d_state),
                self.chunk_size, dt_bias=at_least_float32(self.dt_bias), dt_softplus=True,
            ).reshape(bsz, seqlen, self.d_inner)
            if index is None:
                y = _shift_right(y)  # position t reads the scan at t-1
            else:
                y = take(y, (index - 1).clamp_min(0)) * (index > 0).unsqueeze(-1)  # shifted: reads t-1
                x = take(x, index)  # (B, D)
        else:
            y, x = self._both_directions(x, bc, dt, A, bsz, seqlen, gn, index)
        return self._output(y, x, z)
