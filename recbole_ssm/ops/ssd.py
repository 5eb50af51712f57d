"""Chunked SSD (Mamba2 / Hydra): reference recurrence, chunked matmul path and the recurrent step.

Semantics follow ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``::

    dt  = clamp(softplus(dt + dt_bias), *dt_limit)  # bias / softplus / clamp optional
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T   # per head: (headdim, N)
    y_t = h_t C_t + D * x_t
    out = y * silu(z)                                 # when z is given

Heads are split evenly across the groups of ``B`` and ``C`` (consecutive heads share one).

The chunked path splits the sequence into chunks of ``chunk_size``: inside a chunk the output
is a masked (chunk x chunk) matmul whose decays are segment sums of log-decays (differences
of cumulative sums, ``-inf`` above the diagonal), never products of exponentials; between
chunks only the (heads, headdim, N) state is passed on.
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_ssm.ops import backend as _backend

SSDOut = Union[Tensor, tuple[Tensor, Tensor]]
_NO_LIMIT = (0.0, float("inf"))


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, L, heads, headdim); got {tuple(x.shape)}")
    batch, L, heads, _ = x.shape
    if dt.shape != (batch, L, heads):
        raise ValueError(f"dt must be (batch, L, heads) = {(batch, L, heads)}; got {tuple(dt.shape)}")
    if A.shape != (heads,):
        raise ValueError(f"A must be (heads,) = ({heads},); got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[:2] != (batch, L):
            raise ValueError(f"{name} must be (batch, L, groups, N); got {tuple(t.shape)}")
        if heads % t.shape[2] != 0:
            raise ValueError(f"heads={heads} is not divisible by {name}'s groups={t.shape[2]}")
    if B.shape != C.shape:
        raise ValueError(f"B and C must have the same shape; got {tuple(B.shape)} and {tuple(C.shape)}")


def _prepare_dt(
    dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float], dtype: torch.dtype
) -> Tensor:
    dt = dt.to(dtype)  # (batch, L, heads)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != _NO_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _skip_and_gate(y: Tensor, x: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D*x, then y * silu(z); y, x, z: (batch, L, heads, headdim); D: (heads,) or (heads, headdim)."""
    if D is not None:
        Dc = D.to(y.dtype)
        y = y + x * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------


def ssd_ref(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 0,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
    return_final_states: bool = False,
) -> SSDOut:
    """SSD as a plain loop over positions (slow, obviously right; used by tests).

    Same contract as :func:`mamba_chunk_scan_combined`; ``chunk_size`` is accepted and ignored.

    Args:
        x: (batch, L, heads, headdim). dt: (batch, L, heads). A: (heads,).
        B, C: (batch, L, groups, N). D: (heads,) or (heads, headdim). z: like x.
        dt_bias: (heads,). initial_states: (batch, heads, headdim, N).

    Returns:
        out (batch, L, heads, headdim) in ``x``'s dtype, and the final states
        (batch, heads, headdim, N) when asked.
    """
    _check_shapes(x, dt, A, B, C)
    cdt = _compute_dtype(x)
    batch, L, heads, headdim = x.shape
    groups, N = B.shape[2], B.shape[3]
    xc = x.to(cdt)  # (batch, L, heads, headdim)
    dtc = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit, cdt)  # (batch, L, heads)
    Ac = A.to(cdt)  # (heads,)
    Bh = B.to(cdt).repeat_interleave(heads // groups, dim=2)  # (batch, L, heads, N)
    Ch = C.to(cdt).repeat_interleave(heads // groups, dim=2)  # (batch, L, heads, N)
    if initial_states is not None:
        h = initial_states.to(cdt)  # (batch, heads, headdim, N)
    else:
        h = xc.new_zeros(batch, heads, headdim, N)
    ys = []
    # unbind (not x[:, t]) so that autograd gathers the per-position gradients once, not L times
    for dt_t, x_t, B_t, C_t in zip(dtc.unbind(1), xc.unbind(1), Bh.unbind(1), Ch.unbind(1)):
        decay = torch.exp(dt_t * Ac)[:, :, None, None]  # (batch, heads, 1, 1)
        inp = (dt_t.unsqueeze(-1) * x_t).unsqueeze(-1) * B_t.unsqueeze(2)  # (batch, heads, headdim, N)
        h = decay * h + inp
        ys.append((h * C_t.unsqueeze(2)).sum(-1))  # (batch, heads, headdim)
    y = torch.stack(ys, dim=1) if ys else xc.new_zeros(batch, 0, heads, headdim)  # (batch, L, heads, headdim)
    out = _skip_and_gate(y, xc, D, z).to(x.dtype)
    return (out, h) if return_final_states else out


mamba_chunk_scan_combined_ref = ssd_ref


# ----------------------------------------------------------------------------------------------
# Chunked matmul path
# ----------------------------------------------------------------------------------------------


def _segsum_decay(acum: Tensor) -> Tensor:
    """exp(acum_t - acum_s) for s <= t, 0 above the diagonal: (..., T) -> (..., T, T)."""
    T = acum.shape[-1]
    seg = acum[..., :, None] - acum[..., None, :]  # (..., T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=acum.device).tril()
    return torch.exp(seg.masked_fill(~causal, -math.inf))


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
    return_final_states: bool = False,
) -> SSDOut:
    """recbole-ssm's chunked SSD in plain PyTorch ops (any device, autograd through it).

    Same contract as :func:`mamba_chunk_scan_combined`. The chunk is ``min(chunk_size, L)``;
    the result does not depend on it beyond rounding. L need not be a multiple of it.
    """
    _check_shapes(x, dt, A, B, C)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive; got {chunk_size}")
    cdt = _compute_dtype(x)
    batch, L, heads, headdim = x.shape
    groups, N = B.shape[2], B.shape[3]
    hg = heads // groups
    T = max(1, min(chunk_size, L))
    pad = (-L) % T
    n_chunks = (L + pad) // T
    xc = x.to(cdt)  # (batch, L, heads, headdim)
    dtc = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit, cdt)  # (batch, L, heads)
    Bc, Cc = B.to(cdt), C.to(cdt)  # (batch, L, groups, N)
    if pad:  # padded positions have dt = 0: decay 1, no input, so the final state is unchanged
        xp = F.pad(xc, (0, 0, 0, 0, 0, pad))
        dtc, Bc, Cc = (
            F.pad(dtc, (0, 0, 0, pad)),
            F.pad(Bc, (0, 0, 0, 0, 0, pad)),
            F.pad(Cc, (0, 0, 0, 0, 0, pad)),
        )
    else:
        xp = xc
    # chunk views, heads split as (groups, heads per group)
    xk = xp.reshape(batch, n_chunks, T, groups, hg, headdim).permute(0, 3, 4, 1, 2, 5)  # (b, g, k, c, T, p)
    dtk = dtc.reshape(batch, n_chunks, T, groups, hg).permute(0, 3, 4, 1, 2)  # (b, g, k, c, T)
    Bk = Bc.reshape(batch, n_chunks, T, groups, N).permute(0, 3, 1, 2, 4)  # (b, g, c, T, N)
    Ck = Cc.reshape(batch, n_chunks, T, groups, N).permute(0, 3, 1, 2, 4)  # (b, g, c, T, N)
    a = dtk * A.to(cdt).reshape(groups, hg, 1, 1)  # log-decays, (b, g, k, c, T)
    acum = torch.cumsum(a, dim=-1)  # (b, g, k, c, T)

    xdt = xk * dtk.unsqueeze(-1)  # dt_s x_s, (b, g, k, c, T, p)

    # 1. intra-chunk: y_t = sum_{s<=t} (C_t . B_s) exp(acum_t - acum_s) dt_s x_s
    scores = Ck @ Bk.transpose(-1, -2)  # (b, g, c, T, T), shared by the heads of a group
    y = (scores.unsqueeze(2) * _segsum_decay(acum)) @ xdt  # (b, g, k, c, T, p)

    # 2.-4. only when a state enters or leaves a chunk (not for one chunk without initial/final states)
    h = initial_states.to(cdt).reshape(batch, groups, hg, headdim, N) if initial_states is not None else None
    if n_chunks > 1 or h is not None or return_final_states:
        # 2. state each chunk adds: sum_s exp(acum_last - acum_s) dt_s x_s B_s^T
        w = torch.exp(acum[..., -1:] - acum)  # (b, g, k, c, T)
        chunk_states = (xdt * w.unsqueeze(-1)).transpose(-1, -2) @ Bk.unsqueeze(2)  # (b, g, k, c, p, N)
        # 3. pass states between chunks: h_c = exp(sum of chunk c's log-decays) h_{c-1} + chunk_states_c
        chunk_decay = torch.exp(acum[..., -1])  # (b, g, k, c)
        first = 0 if h is not None else 1  # without initial states nothing enters chunk 0
        starts = []
        for ci in range(n_chunks):
            if ci >= first:
                starts.append(h)
            h = (
                chunk_states[:, :, :, ci]
                if h is None
                else chunk_decay[..., ci, None, None] * h + chunk_states[:, :, :, ci]
            )
        if starts:
            prev = torch.stack(starts, dim=3)  # state entering chunks first.., (b, g, k, c - first, p, N)
            # 4. state-to-output: y_t += exp(acum_t) C_t h_{c-1}
            decay_in = torch.exp(acum[:, :, :, first:]).unsqueeze(-1)  # (b, g, k, c - first, T, 1)
            y_off = (
                Ck[:, :, first:].unsqueeze(2) @ prev.transpose(-1, -2)
            ) * decay_in  # (b, g, k, c-first, T, p)
            y = torch.cat([y[:, :, :, :first], y[:, :, :, first:] + y_off], dim=3) if first else y + y_off
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(batch, n_chunks * T, heads, headdim)[:, :L]  # (b, L, h, p)
    out = _skip_and_gate(y, xc, D, z).to(x.dtype)
    if return_final_states:
        return out, h.reshape(batch, heads, headdim, N)
    return out


def mamba_chunk_scan_combined(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    seq_idx: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
    return_final_states: bool = False,
    return_varlen_states: bool = False,
) -> SSDOut:
    """Chunked SSD with the signature and semantics of mamba-ssm's ``mamba_chunk_scan_combined``.

    Dispatches with :func:`recbole_ssm.ops.backend.get_backend`: mamba-ssm's Triton kernel for
    CUDA tensors when it imports, else :func:`ssd_chunked`. ``seq_idx``, ``cu_seqlens`` and
    ``return_varlen_states`` (packed variable-length batches) exist only on the mamba-ssm path.

    Args:
        x: (batch, L, heads, headdim). dt: (batch, L, heads). A: (heads,).
        B, C: (batch, L, groups, N). chunk_size: chunk length (L need not be a multiple).
        D: (heads,) or (heads, headdim). z: (batch, L, heads, headdim), gate ``y * silu(z)``.
        dt_bias: (heads,). initial_states: (batch, heads, headdim, N).
        dt_softplus: softplus on ``dt + dt_bias``. dt_limit: clamp range for dt.
        return_final_states: also return the final states (batch, heads, headdim, N).

    Returns:
        out (batch, L, heads, headdim) in ``x``'s dtype, or ``(out, final_states)``.
    """
    kernels = _backend.mamba_ssd()
    if _backend.get_backend(x.device, kernels) == "cuda":
        return kernels["mamba_chunk_scan_combined"](
            x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
            seq_idx=seq_idx, cu_seqlens=cu_seqlens, dt_softplus=dt_softplus, dt_limit=dt_limit,
            return_final_states=return_final_states, return_varlen_states=return_varlen_states,
        )  # fmt: skip
    if seq_idx is not None or cu_seqlens is not None or return_varlen_states:
        raise NotImplementedError("seq_idx / cu_seqlens / return_varlen_states need mamba-ssm's CUDA kernel")
    return ssd_chunked(
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
        dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Recurrent step
# ----------------------------------------------------------------------------------------------


def ssd_state_update(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
) -> Tensor:
    """Advance the SSD state by one position; ``state`` is updated in place.

    The output equals :func:`mamba_chunk_scan_combined`'s output at that position when
    ``state`` is the final state of the positions before it. Cost: a few elementwise ops on
    the (batch, heads, headdim, N) state, whatever the number of earlier positions.

    Args:
        state: (batch, heads, headdim, N), float32 (or float64).
        x, z: (batch, heads, headdim). dt: (batch, heads). A: (heads,).
        B, C: (batch, groups, N). D: (heads,) or (heads, headdim). dt_bias: (heads,).

    Returns:
        y: (batch, heads, headdim) in ``x``'s dtype.
    """
    cdt = _compute_dtype(state)
    heads = state.shape[1]
    groups = B.shape[1]
    d = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit, cdt)  # (batch, heads)
    Bh = B.to(cdt).repeat_interleave(heads // groups, dim=1)  # (batch, heads, N)
    Ch = C.to(cdt).repeat_interleave(heads // groups, dim=1)  # (batch, heads, N)
    xc = x.to(cdt)  # (batch, heads, headdim)
    decay = torch.exp(d * A.to(cdt))[:, :, None, None]  # (batch, heads, 1, 1)
    new_state = decay * state.to(cdt) + (d[:, :, None] * xc).unsqueeze(-1) * Bh.unsqueeze(2)  # (b, h, p, N)
    state.copy_(new_state)
    y = (new_state * Ch.unsqueeze(2)).sum(-1)  # (batch, heads, headdim)
    if D is not None:
        Dc = D.to(cdt)
        y = y + xc * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)
