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

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_ssm.ops import backend as _backend
from recbole_ssm.ops.common import NO_LIMIT, compute_dtype, skip_and_gate, step_sizes

SSDOut = Union[Tensor, tuple[Tensor, Tensor]]


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
    dt_limit: tuple[float, float] = NO_LIMIT,
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
    cdt = compute_dtype(x)
    batch, L, heads, headdim = x.shape
    groups, N = B.shape[2], B.shape[3]
    xc = x.to(cdt)  # (batch, L, heads, headdim)
    dtc = step_sizes(dt, dt_bias, dt_softplus, cdt, limit=dt_limit)  # (batch, L, heads)
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
    out = skip_and_gate(y, xc, D, z).to(x.dtype)
    return (out, h) if return_final_states else out


mamba_chunk_scan_combined_ref = ssd_ref


# ----------------------------------------------------------------------------------------------
# Chunked matmul path
# ----------------------------------------------------------------------------------------------

# Elements of (batch, L, heads, headdim) handled at once by the chunked path. A block's
# intermediates (chunk layouts, (T x T) decay matrices) then stay a few MiB: cache-sized and
# reused by the allocator, where whole-batch temporaries would be freshly mapped (and
# page-faulted) by the CPU allocator on every call and pass through memory many times.
_BLOCK_ELEMENTS = 1 << 19


def _decay_matrix(acum: Tensor) -> Tensor:
    """exp(acum_t - acum_s) for s <= t, 0 above the diagonal: (..., T) -> (..., T, T), a new tensor.

    Segment sums are differences of cumulative log-decays, never products of exponentials; the
    entries above the diagonal may overflow to inf before ``tril_`` overwrites them with 0.
    """
    return (acum.unsqueeze(-1) - acum.unsqueeze(-2)).exp_().tril_()


class _Chunks:
    """One batch block of the SSD in chunked layout, with the pieces its backward reuses.

    Rows R = block batch x n_chunks (batch-major); heads split as groups x heads-per-group:
    x (R, g, k, T, p), dt and acum (R, g, k, T), B and C (R, g, T, N), h_in (R, g, k, p, N) the
    state entering each chunk. Per chunk::

        y_t = sum_{s<=t} (C_t . B_s) exp(acum_t - acum_s) dt_s x_s  +  exp(acum_t) C_t h_in
    """

    def __init__(self, x, dt, A, B, C, h0, T, want_final):
        bb, L, heads, p = x.shape
        g, N = B.shape[2], B.shape[3]
        k = heads // g
        pad = (-L) % T
        if pad:  # padded positions have dt = 0: decay 1, no input, so the final state is unchanged
            x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
            B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
        self.bb, self.L, self.T, self.n_chunks = bb, L, T, (L + pad) // T
        R = bb * self.n_chunks
        self.shape = (R, g, k, T, p)
        self.x = x.reshape(R, T, g, k, p).permute(0, 2, 3, 1, 4).contiguous()
        self.dt = dt.reshape(R, T, g, k).permute(0, 2, 3, 1).contiguous()
        self.B = B.reshape(R, T, g, N).transpose(1, 2).contiguous()
        self.C = C.reshape(R, T, g, N).transpose(1, 2).contiguous()
        self.A = A.reshape(g, k, 1)
        self.h0 = h0.reshape(bb, g, k, p, N) if h0 is not None else None
        self.acum = torch.cumsum(self.dt * self.A, dim=-1)
        self.xdt = self.x * self.dt.unsqueeze(-1)
        self.w = torch.exp(self.acum[..., -1:] - self.acum)  # weight of each position in its chunk's state
        self.chunk_decay = torch.exp(self.acum[..., -1]).view(bb, self.n_chunks, g, k, 1, 1)
        S = self.C @ self.B.transpose(-1, -2)  # (R, g, T, T), shared by the heads of a group
        self.Ldec = _decay_matrix(self.acum)  # (R, g, k, T, T)
        self.M = self.Ldec * S.unsqueeze(2)
        self.any_state = self.h0 is not None or self.n_chunks > 1  # else nothing enters any chunk
        self.h_in = self.h_final = None
        if not (self.any_state or want_final):
            return
        # states entering each chunk: h_in[c] = chunk_decay[c-1] h_in[c-1] + (state chunk c-1 adds)
        states = ((self.xdt * self.w.unsqueeze(-1)).transpose(-1, -2) @ self.B.unsqueeze(2)).view(
            bb, self.n_chunks, g, k, p, N
        )
        self.h_in = torch.empty_like(states)
        h = self.h0 if self.h0 is not None else torch.zeros_like(states[:, 0])
        for ci in range(self.n_chunks):
            self.h_in[:, ci] = h
            h = self.chunk_decay[:, ci] * h + states[:, ci]
        self.h_final = h.reshape(bb, heads, p, N)
        self.h_in = self.h_in.view(R, g, k, p, N)

    def to_chunks(self, t: Tensor) -> Tensor:
        """(bb, L, heads, p) -> (R, g, k, T, p)."""
        R, g, k, T, p = self.shape
        pad = self.n_chunks * T - self.L
        return (F.pad(t, (0, 0, 0, 0, 0, pad)) if pad else t).reshape(R, T, g, k, p).permute(0, 2, 3, 1, 4)

    def from_chunks(self, t: Tensor, last: int) -> Tensor:
        """(R, g, k, T, last) -> (bb, L, heads, last)."""
        R, g, k, T, _ = self.shape
        return t.permute(0, 3, 1, 2, 4).reshape(self.bb, self.n_chunks * T, g * k, last)[:, : self.L]

    def output(self) -> Tensor:
        """y in chunk layout (R, g, k, T, p)."""
        y = self.M @ self.xdt
        if self.any_state:
            y_off = self.C.unsqueeze(2) @ self.h_in.transpose(-1, -2)  # (R, g, k, T, p)
            y += y_off.mul_(torch.exp(self.acum).unsqueeze(-1))
        return y

    def backward(self, dy: Tensor, gh: Tensor | None):
        """Gradients of x, dt (chunk layouts), A (g, k, 1), B, C (chunk layout) and h0 from dy, gh."""
        R, g, k, T, p = self.shape
        bb, n_chunks = self.bb, self.n_chunks
        dy = dy.contiguous()
        # intra-chunk: y = M @ xdt, M = S * Ldec
        dxdt = self.M.transpose(-1, -2) @ dy  # (R, g, k, T, p)
        dM = dy @ self.xdt.transpose(-1, -2)  # (R, g, k, T, T)
        dS = (dM * self.Ldec).sum(2)  # (R, g, T, T)
        dseg = dM.mul_(self.M)  # gradient of acum_t - acum_s (zero above the diagonal)
        dacum = dseg.sum(-1) - dseg.sum(-2)  # (R, g, k, T)
        del dM, dseg
        dC = dS @ self.B
        dB = dS.transpose(-1, -2) @ self.C
        if not (self.any_state or gh is not None):  # one chunk, no state in or out
            return dxdt, dacum, dB, dC, None
        h_in = self.h_in.view(bb, n_chunks, g, k, p, -1)
        G = gh.reshape(bb, g, k, p, -1) if gh is not None else torch.zeros_like(h_in[:, 0])
        # state-to-output: y += exp(acum_t) C_t h_in
        dye = dy * torch.exp(self.acum).unsqueeze(-1)  # (R, g, k, T, p)
        dhin = (dye.transpose(-1, -2) @ self.C.unsqueeze(2)).view(bb, n_chunks, g, k, p, -1)
        dye_h = dye @ self.h_in  # (R, g, k, T, N)
        dC += dye_h.sum(2)
        dacum += (dye_h * self.C.unsqueeze(2)).sum(-1)
        del dye, dye_h
        # state passing, backwards: G = gradient of the state leaving chunk ci (= of the state it adds)
        dstates = torch.empty_like(h_in)
        ddecay = self.x.new_empty(bb, n_chunks, g, k)
        for ci in reversed(range(n_chunks)):
            dstates[:, ci] = G
            ddecay[:, ci] = (G * h_in[:, ci]).sum((-1, -2))
            G = self.chunk_decay[:, ci] * G + dhin[:, ci]
        dstates = dstates.view(R, g, k, p, -1)
        # the state a chunk adds: (w * xdt)^T B, w = exp(acum_last - acum_s)
        xdt_w = self.xdt * self.w.unsqueeze(-1)
        BG = self.B.unsqueeze(2) @ dstates.transpose(-1, -2)  # (R, g, k, T, p)
        dww = (xdt_w * BG).sum(-1)  # dL/dw * w, (R, g, k, T)
        dxdt += BG.mul_(self.w.unsqueeze(-1))
        dB += (xdt_w @ dstates).sum(2)
        dacum -= dww
        dacum[..., -1] += dww.sum(-1) + ddecay.view(R, g, k) * self.chunk_decay.view(R, g, k)
        return dxdt, dacum, dB, dC, G


class _ChunkedSSD(torch.autograd.Function):
    """out, h_final = gate(SSD(x, dt, A, B, C, h0) + D x, z), block by block, hand-written backward.

    x, z (batch, L, heads, p); dt (batch, L, heads), already biased / softplus'ed / clamped;
    A (heads,); B, C (batch, L, groups, N); D None, (heads,) or (heads, p); h0 None or
    (batch, heads, p, N). The batch is split into blocks of about ``_BLOCK_ELEMENTS`` elements;
    the backward saves only the inputs and recomputes a block's forward pieces (chunk states,
    (T x T) matrices) before its gradients, so the memory beyond the inputs stays one block.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, h0, T, want_final):  # noqa: D102
        batch, L, heads, p = x.shape
        out = torch.empty_like(x)
        h_final = x.new_empty(batch, heads, p, B.shape[-1]) if want_final else None
        for sl in _batch_blocks(batch, L, heads * p, x.device):
            ch = _Chunks(x[sl], dt[sl], A, B[sl], C[sl], h0[sl] if h0 is not None else None, T, want_final)
            y = ch.from_chunks(ch.output(), p)  # (bb, L, heads, p)
            out[sl] = skip_and_gate(y, x[sl], D, z[sl] if z is not None else None)
            if want_final:
                h_final[sl] = ch.h_final
        ctx.save_for_backward(x, dt, A, B, C, D, z, h0)
        ctx.T = T
        ctx.set_materialize_grads(False)  # an unused final state then costs no state backward
        return (out, h_final) if want_final else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dfinal=None):  # noqa: D102
        x, dt, A, B, C, D, z, h0 = ctx.saved_tensors
        batch, L, heads, p = x.shape
        groups, N = B.shape[2], B.shape[3]
        dx, ddt = torch.empty_like(x), torch.empty_like(dt)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        dD = torch.zeros_like(D) if D is not None else None
        dz = torch.empty_like(z) if z is not None else None
        dh0 = torch.empty_like(h0) if h0 is not None else None
        D_hp = (D[:, None] if D.dim() == 1 else D) if D is not None else None  # broadcast over (heads, p)
        for sl in _batch_blocks(batch, L, heads * p, x.device):
            ch = _Chunks(x[sl], dt[sl], A, B[sl], C[sl], h0[sl] if h0 is not None else None, ctx.T, dfinal is not None)
            dout_b = dout[sl] if dout is not None else torch.zeros_like(x[sl])
            x_b = x[sl]
            # out = (y + D x) * silu(z)
            if z is not None:
                pre = skip_and_gate(ch.from_chunks(ch.output(), p), x_b, D, None)
                sig = torch.sigmoid(z[sl])
                dz[sl] = dout_b * pre * sig * (1 + z[sl] * (1 - sig))
                dy = dout_b * (z[sl] * sig)
            else:
                dy = dout_b
            gx_direct = dy * D_hp if D is not None else None
            if D is not None:
                dD += (dy * x_b).sum((0, 1)).sum(-1) if D.dim() == 1 else (dy * x_b).sum((0, 1))
            dxdt, dacum, dBk, dCk, G = ch.backward(ch.to_chunks(dy), dfinal[sl] if dfinal is not None else None)
            # acum = cumsum(dt * A) per chunk, xdt = dt * x
            da = dacum.flip(-1).cumsum(-1).flip(-1)  # (R, g, k, T)
            ddtk = (dxdt * ch.x).sum(-1).add_(da * ch.A)
            dA += (da * ch.dt).sum((0, 3)).reshape(-1)
            gxk = dxdt.mul_(ch.dt.unsqueeze(-1))
            gx_b = ch.from_chunks(gxk, p)
            dx[sl] = gx_b + gx_direct if gx_direct is not None else gx_b
            ddt[sl] = ch.from_chunks(ddtk.unsqueeze(-1), 1).squeeze(-1)
            dB[sl] = dBk.transpose(1, 2).reshape(ch.bb, -1, groups, N)[:, :L]
            dC[sl] = dCk.transpose(1, 2).reshape(ch.bb, -1, groups, N)[:, :L]
            if dh0 is not None:
                dh0[sl] = G.reshape(ch.bb, heads, p, N)
        return dx, ddt, dA, dB, dC, dD, dz, dh0, None, None


def _batch_blocks(batch: int, L: int, width: int, device: torch.device) -> list[slice]:
    """Slices of the batch processed at once: blocks of about ``_BLOCK_ELEMENTS`` on CPU, the
    whole batch elsewhere (a GPU without mamba-ssm prefers few large kernels)."""
    if device.type != "cpu":
        return [slice(0, batch)]
    step = max(1, _BLOCK_ELEMENTS // max(1, L * width))
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


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
    dt_limit: tuple[float, float] = NO_LIMIT,
    return_final_states: bool = False,
) -> SSDOut:
    """recbole-ssm's chunked SSD in PyTorch (any device), with a hand-written backward.

    Same contract as :func:`mamba_chunk_scan_combined`. ``chunk_size`` bounds the chunk length:
    L is split into ``ceil(L / chunk_size)`` chunks of equal length ``ceil(L / n_chunks)``
    (L=200 with chunk_size=64: 4 chunks of 50, not 4 of 64 with 56 padded positions). The
    result does not depend on the chunking beyond rounding; L need not be a multiple. The dt
    preprocessing goes through autograd; the scan with its ``D`` skip and ``z`` gate is one
    :class:`torch.autograd.Function` (compared with :func:`ssd_ref` by the tests).
    """
    _check_shapes(x, dt, A, B, C)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive; got {chunk_size}")
    cdt = compute_dtype(x)
    L = x.shape[1]
    n_chunks = max(1, -(-L // chunk_size))
    T = max(1, -(-L // n_chunks))  # equal chunks of at most chunk_size: the least padding
    dtc = step_sizes(dt, dt_bias, dt_softplus, cdt, limit=dt_limit)  # (batch, L, heads)

    def cast(t: Tensor | None) -> Tensor | None:
        return t.to(cdt).contiguous() if t is not None else None

    res = _ChunkedSSD.apply(
        cast(x), dtc.contiguous(), cast(A), cast(B), cast(C), cast(D), cast(z), cast(initial_states), T,
        return_final_states,
    )  # fmt: skip
    if return_final_states:
        return res[0].to(x.dtype), res[1]
    return res.to(x.dtype)


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
    dt_limit: tuple[float, float] = NO_LIMIT,
    return_final_states: bool = False,
    return_varlen_states: bool = False,
) -> SSDOut:
    """Chunked SSD with the signature and semantics of mamba-ssm's ``mamba_chunk_scan_combined``.

    Dispatches with :func:`recbole_ssm.ops.backend.dispatch`: mamba-ssm's Triton kernel for
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
    impl, kernel = _backend.dispatch("ssd", x.device)
    if impl == "cuda":
        return kernel(
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
    dt_limit: tuple[float, float] = NO_LIMIT,
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
    cdt = compute_dtype(state)
    heads = state.shape[1]
    groups = B.shape[1]
    d = step_sizes(dt, dt_bias, dt_softplus, cdt, limit=dt_limit)  # (batch, heads)
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
