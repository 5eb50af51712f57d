"""Selective scan (Mamba / S6): reference recurrence, fast CPU paths and the recurrent step.

Semantics follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (real ``A``)::

    delta = softplus(delta + delta_bias)            # bias / softplus optional
    x_t   = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t        # per (batch, dim, N)
    y_t   = <C_t, x_t> + D * u_t
    out   = y * silu(z)                             # when z is given

``B`` and ``C`` are input dependent, ``(batch, N, L)`` or ``(batch, groups, N, L)``; with
groups, ``dim`` is split evenly and consecutive channels share a group.

Fast paths (see :func:`selective_scan_fn`): mamba-ssm's CUDA kernel where it runs; on other
devices a custom autograd function whose core is either the fused C++ CPU kernel
(:mod:`recbole_ssm.ops.cpu_kernel`, built lazily) or a chunked pure-PyTorch loop. Neither
materialises a ``(batch, dim, L, N)`` tensor: the forward keeps only the states at chunk
starts and the backward recomputes each chunk.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_ssm.ops import backend as _backend
from recbole_ssm.ops.common import compute_dtype, skip_and_gate, step_sizes

ScanOut = Union[Tensor, tuple[Tensor, Tensor]]

# Elements of one (T, batch, dim, N) chunk buffer in the pure-PyTorch path (~32 MB float32).
_CHUNK_ELEMENTS = 1 << 23


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must be (batch, dim, L); got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"A must be (dim, N) = ({u.shape[1]}, N); got {tuple(A.shape)}")
    if A.is_complex():
        raise NotImplementedError("complex A is not supported by recbole-ssm's selective scan")
    for name, t in (("B", B), ("C", C)):
        if t.dim() not in (3, 4):
            raise NotImplementedError(
                f"{name} must be (batch, N, L) or (batch, groups, N, L); got {tuple(t.shape)}"
            )
        if t.shape[0] != u.shape[0] or t.shape[-1] != u.shape[-1] or t.shape[-2] != A.shape[1]:
            raise ValueError(
                f"{name} shape {tuple(t.shape)} does not match u {tuple(u.shape)} and A {tuple(A.shape)}"
            )
        if t.dim() == 4 and u.shape[1] % t.shape[1] != 0:
            raise ValueError(f"dim={u.shape[1]} is not divisible by {name}'s groups={t.shape[1]}")


def _as_groups(t: Tensor) -> Tensor:
    """(batch, N, L) -> (batch, 1, N, L); (batch, G, N, L) unchanged."""
    return t.unsqueeze(1) if t.dim() == 3 else t


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> ScanOut:
    """Selective scan as a plain loop over positions (slow, obviously right; used by tests).

    Args:
        u, delta: (batch, dim, L). z: (batch, dim, L) or None.
        A: (dim, N), real. B, C: (batch, N, L) or (batch, groups, N, L).
        D, delta_bias: (dim,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the state after the last position.

    Returns:
        out (batch, dim, L) in ``u``'s dtype, and the last state (batch, dim, N) when asked.
    """
    _check_shapes(u, delta, A, B, C)
    dtype_in = u.dtype
    cdt = compute_dtype(u)
    batch, dim, L = u.shape
    u_c = u.to(cdt)  # (batch, dim, L)
    delta_c = step_sizes(delta, delta_bias, delta_softplus, cdt, channel_dim=1)  # (batch, dim, L)
    A_c = A.to(cdt)  # (dim, N)
    Bg, Cg = _as_groups(B).to(cdt), _as_groups(C).to(cdt)  # (batch, G, N, L)
    Bd = Bg.repeat_interleave(dim // Bg.shape[1], dim=1)  # (batch, dim, N, L)
    Cd = Cg.repeat_interleave(dim // Cg.shape[1], dim=1)  # (batch, dim, N, L)
    x = u_c.new_zeros(batch, dim, A.shape[1])  # (batch, dim, N)
    ys = []
    # unbind (not x[..., t]) so that autograd gathers the per-position gradients once, not L times
    for d_t, u_t, B_t, C_t in zip(delta_c.unbind(-1), u_c.unbind(-1), Bd.unbind(-1), Cd.unbind(-1)):
        d_t = d_t.unsqueeze(-1)  # (batch, dim, 1)
        x = torch.exp(d_t * A_c) * x + d_t * B_t * u_t.unsqueeze(-1)  # (batch, dim, N)
        ys.append((x * C_t).sum(-1))  # (batch, dim)
    y = torch.stack(ys, dim=-1) if ys else u_c.new_zeros(batch, dim, 0)  # (batch, dim, L)
    out = skip_and_gate(y, u_c, D, z).to(dtype_in)
    return (out, x) if return_last_state else out


# ----------------------------------------------------------------------------------------------
# Core scan without D / z / delta preprocessing: y_t = <C_t, x_t>, custom forward and backward
# ----------------------------------------------------------------------------------------------


def _chunk_len(batch: int, dim: int, N: int, L: int) -> int:
    return max(1, min(L, _CHUNK_ELEMENTS // max(1, batch * dim * N)))


def _chunk_terms(u: Tensor, delta: Tensor, A: Tensor, Bt: Tensor, s: int, e: int) -> tuple[Tensor, ...]:
    """exp(delta*A), delta*B*u and the expanded B for positions s..e-1, each (T, batch, dim, N)."""
    batch, dim, _ = u.shape
    G = Bt.shape[1]
    d_c = delta[:, :, s:e].permute(2, 0, 1)  # (T, batch, dim)
    u_c = u[:, :, s:e].permute(2, 0, 1)  # (T, batch, dim)
    dA = torch.exp(d_c.unsqueeze(-1) * A)  # (T, batch, dim, N)
    B_c = Bt[:, :, s:e].permute(2, 0, 1, 3).unsqueeze(3)  # (T, batch, G, 1, N)
    B_d = B_c.expand(-1, -1, -1, dim // G, -1).reshape(e - s, batch, dim, -1)  # (T, batch, dim, N)
    dBu = (d_c * u_c).unsqueeze(-1) * B_d  # (T, batch, dim, N)
    return dA, dBu, B_d, d_c, u_c


def _contract_groups(a: Tensor, xs: Tensor, G: int) -> Tensor:
    """sum over the channels of each group: a (T, batch, dim), xs (T, batch, dim, N) -> (batch, G, T, N)."""
    T, batch, dim, N = xs.shape
    return torch.einsum(
        "tbgk,tbgkn->bgtn", a.reshape(T, batch, G, dim // G), xs.reshape(T, batch, G, dim // G, N)
    )


def _scan_core_fwd_torch(u: Tensor, delta: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor) -> tuple[Tensor, ...]:
    """Pure-PyTorch core forward. u, delta: (batch, dim, L); A: (dim, N); Bt, Ct: (batch, G, L, N).

    Returns y (batch, dim, L), the last state (batch, dim, N) and the states at chunk starts
    (n_chunks, batch, dim, N), which the backward uses to recompute each chunk.
    """
    batch, dim, L = u.shape
    N = A.shape[1]
    G = Ct.shape[1]
    T = _chunk_len(batch, dim, N, L)
    y = u.new_empty(batch, dim, L)
    starts = u.new_empty((L + T - 1) // T, batch, dim, N)  # (n_chunks, batch, dim, N)
    x = u.new_zeros(batch, dim, N)  # (batch, dim, N)
    for ci, s in enumerate(range(0, L, T)):
        e = min(s + T, L)
        starts[ci] = x
        dA, dBu, _, _, _ = _chunk_terms(u, delta, A, Bt, s, e)  # (T, batch, dim, N)
        xs = torch.empty_like(dA)  # (T, batch, dim, N)
        for t in range(e - s):
            torch.addcmul(dBu[t], dA[t], x, out=xs[t])
            x = xs[t]
        C_c = Ct[:, :, s:e].permute(2, 0, 1, 3)  # (T, batch, G, N)
        xg = xs.reshape(e - s, batch, G, dim // G, N)  # (T, batch, G, dim/G, N)
        y[:, :, s:e] = torch.einsum("tbgkn,tbgn->bgkt", xg, C_c).reshape(batch, dim, e - s)
    return y, x.clone(), starts


def _scan_core_bwd_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    Bt: Tensor,
    Ct: Tensor,
    starts: Tensor,
    dy: Tensor,
    dlast: Tensor | None,
) -> tuple[Tensor, ...]:
    """Pure-PyTorch core backward: (du, ddelta, dA, dBt, dCt) for the inputs of the forward."""
    batch, dim, L = u.shape
    N = A.shape[1]
    G = Bt.shape[1]
    T = _chunk_len(batch, dim, N, L)
    du = torch.empty_like(u)  # (batch, dim, L)
    ddelta = torch.empty_like(delta)  # (batch, dim, L)
    dA = torch.zeros_like(A)  # (dim, N)
    dBt = torch.empty_like(Bt)  # (batch, G, L, N)
    dCt = torch.empty_like(Ct)  # (batch, G, L, N)
    g = dlast.clone() if dlast is not None else u.new_zeros(batch, dim, N)  # carried dL/dx, (batch, dim, N)
    chunks = list(enumerate(range(0, L, T)))
    for ci, s in reversed(chunks):
        e = min(s + T, L)
        n = e - s
        dAc, dBu, B_d, d_c, u_c = _chunk_terms(u, delta, A, Bt, s, e)  # (T, batch, dim, N)
        xs = torch.empty(n + 1, batch, dim, N, dtype=u.dtype, device=u.device)  # states s-1 .. e-1
        xs[0] = starts[ci]
        for t in range(n):
            torch.addcmul(dBu[t], dAc[t], xs[t], out=xs[t + 1])
        x_prev, x_cur = xs[:-1], xs[1:]  # (T, batch, dim, N)
        dy_c = dy[:, :, s:e].permute(2, 0, 1)  # (T, batch, dim)
        dCt[:, :, s:e] = _contract_groups(dy_c, x_cur, G)
        C_c = Ct[:, :, s:e].permute(2, 0, 1, 3).unsqueeze(3)  # (T, batch, G, 1, N)
        C_d = C_c.expand(-1, -1, -1, dim // G, -1).reshape(n, batch, dim, N)  # (T, batch, dim, N)
        gs = torch.empty_like(dAc)  # dL/dx_t, (T, batch, dim, N)
        for t in reversed(range(n)):
            torch.addcmul(g, dy_c[t].unsqueeze(-1), C_d[t], out=gs[t])
            g = gs[t] * dAc[t]
        t1 = gs * x_prev * dAc  # dL/d(delta_t * A), (T, batch, dim, N)
        gB = (gs * B_d).sum(-1)  # dL/d(delta_t * u_t), (T, batch, dim)
        ddelta[:, :, s:e] = ((t1 * A).sum(-1) + gB * u_c).permute(1, 2, 0)
        du[:, :, s:e] = (gB * d_c).permute(1, 2, 0)
        dA += torch.einsum("tbdn,tbd->dn", t1, d_c)
        dBt[:, :, s:e] = _contract_groups(d_c * u_c, gs, G)
    return du, ddelta, dA, dBt, dCt


def _cpu_kernel():
    """The fused C++ kernel module, or None (not built / no compiler / disabled)."""
    from recbole_ssm.ops import cpu_kernel

    return cpu_kernel.load()


class _SelectiveScanCore(torch.autograd.Function):
    """y (batch, dim, L) and last state (batch, dim, N) of the bare scan, recomputing in backward."""

    @staticmethod
    def forward(ctx, u, delta, A, Bt, Ct, impl):  # noqa: D102
        if impl == "cpp":
            y, last = _cpu_kernel().fwd(u, delta, A, Bt, Ct)
            starts = None
        else:
            y, last, starts = _scan_core_fwd_torch(u, delta, A, Bt, Ct)
        ctx.impl = impl
        ctx.save_for_backward(u, delta, A, Bt, Ct, starts)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):  # noqa: D102
        u, delta, A, Bt, Ct, starts = ctx.saved_tensors
        dy = dy.contiguous() if dy is not None else torch.zeros_like(u)
        if ctx.impl == "cpp":
            dlast_t = dlast.contiguous() if dlast is not None else torch.zeros(0, dtype=u.dtype)
            du, ddelta, dA, dBt, dCt = _cpu_kernel().bwd(u, delta, A, Bt, Ct, dy, dlast_t)
        else:
            du, ddelta, dA, dBt, dCt = _scan_core_bwd_torch(u, delta, A, Bt, Ct, starts, dy, dlast)
        return du, ddelta, dA, dBt, dCt, None


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    impl: str = "auto",
) -> ScanOut:
    """recbole-ssm's own selective scan (any device); same contract as :func:`selective_scan_fn`.

    Args:
        impl: ``"cpp"`` the fused C++ CPU kernel, ``"torch"`` the chunked pure-PyTorch loop,
            ``"auto"`` the kernel for CPU tensors when it builds, else the loop.
    """
    _check_shapes(u, delta, A, B, C)
    dtype_in = u.dtype
    cdt = compute_dtype(u)
    if impl == "auto":
        impl = "cpp" if _backend.dispatch("selective_scan", u.device)[0] == "cpp" else "torch"
    elif impl == "cpp" and (u.device.type != "cpu" or _cpu_kernel() is None):
        raise RuntimeError(
            "the fused CPU selective-scan kernel is unavailable (see the log) or inputs are not on CPU"
        )
    u_c = u.to(cdt).contiguous()  # (batch, dim, L)
    delta_c = step_sizes(delta, delta_bias, delta_softplus, cdt, channel_dim=1).contiguous()  # (batch, dim, L)
    A_c = A.to(cdt).contiguous()  # (dim, N)
    Bt = _as_groups(B).to(cdt).transpose(-1, -2).contiguous()  # (batch, G, L, N)
    Ct = _as_groups(C).to(cdt).transpose(-1, -2).contiguous()  # (batch, G, L, N)
    y, last = _SelectiveScanCore.apply(u_c, delta_c, A_c, Bt, Ct, impl)  # (batch, dim, L), (batch, dim, N)
    out = skip_and_gate(y, u_c, D, z).to(dtype_in)
    return (out, last) if return_last_state else out


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> ScanOut:
    """Selective scan with the signature and semantics of mamba-ssm's ``selective_scan_fn``.

    Dispatches with :func:`recbole_ssm.ops.backend.dispatch`: mamba-ssm's CUDA kernel for
    CUDA tensors when it imports, else :func:`selective_scan_torch`.

    Args:
        u, delta: (batch, dim, L). z: (batch, dim, L) or None (gate: ``out * silu(z)``).
        A: (dim, N), real. B, C: (batch, N, L) or (batch, groups, N, L).
        D, delta_bias: (dim,) or None.
        delta_softplus: use ``softplus(delta + delta_bias)`` as the step size.
        return_last_state: also return the final state.

    Returns:
        out (batch, dim, L) in ``u``'s dtype; with ``return_last_state``, ``(out, last_state)``
        where last_state is (batch, dim, N).
    """
    impl, kernel = _backend.dispatch("selective_scan", u.device)
    if impl == "cuda":
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, impl=impl)


# ----------------------------------------------------------------------------------------------
# Recurrent step
# ----------------------------------------------------------------------------------------------


def _state_update_torch(
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
) -> Tensor:
    """recbole-ssm's step: a few (batch, heads, dim, N) elementwise ops, whatever came before."""
    heads_form = state.dim() == 4
    if not heads_form:  # (batch, dim, N) -> one head
        state_h, x_h, dt_h, A_h = state.unsqueeze(1), x.unsqueeze(1), dt.unsqueeze(1), A.unsqueeze(0)
        B_h, C_h = B.unsqueeze(1), C.unsqueeze(1)
        D_h = D.unsqueeze(0) if D is not None else None
        z_h = z.unsqueeze(1) if z is not None else None
        bias_h = dt_bias.unsqueeze(0) if dt_bias is not None else None
    else:
        state_h, x_h, dt_h, A_h, B_h, C_h, D_h, z_h, bias_h = state, x, dt, A, B, C, D, z, dt_bias
    cdt = compute_dtype(state)
    heads = state_h.shape[1]
    groups = B_h.shape[1]
    d = dt_h.to(cdt)  # (batch, heads, dim)
    if bias_h is not None:
        d = d + bias_h.to(cdt)
    if dt_softplus:
        d = F.softplus(d)
    Bh = B_h.to(cdt).repeat_interleave(heads // groups, dim=1)  # (batch, heads, N)
    Ch = C_h.to(cdt).repeat_interleave(heads // groups, dim=1)  # (batch, heads, N)
    xc = x_h.to(cdt)  # (batch, heads, dim)
    dA = torch.exp(d.unsqueeze(-1) * A_h.to(cdt))  # (batch, heads, dim, N)
    dBx = (d * xc).unsqueeze(-1) * Bh.unsqueeze(2)  # (batch, heads, dim, N)
    new_state = state_h.to(cdt) * dA + dBx  # (batch, heads, dim, N)
    state_h.copy_(new_state)
    y = (new_state * Ch.unsqueeze(2)).sum(-1)  # (batch, heads, dim)
    if D_h is not None:
        y = y + xc * D_h.to(cdt)
    if z_h is not None:
        y = y * F.silu(z_h.to(cdt))
    y = y.to(x.dtype)
    return y if heads_form else y.squeeze(1)


def selective_state_update(
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
) -> Tensor:
    """Advance the selective-scan state by one position, like mamba-ssm's ``selective_state_update``.

    ``state`` is updated in place; its output equals the scan's output at that position.

    Args:
        state: (batch, dim, N), or (batch, heads, dim, N) in the multi-head form.
        x, dt, z: (batch, dim) / (batch, heads, dim).
        A: (dim, N) / (heads, dim, N). B, C: (batch, N) / (batch, groups, N).
        D, dt_bias: (dim,) / (heads, dim), or None.
        dt_softplus: apply softplus to ``dt + dt_bias``.

    Returns:
        y: (batch, dim) / (batch, heads, dim), in ``x``'s dtype.
    """
    impl, kernel = _backend.dispatch("selective_state_update", x.device)
    if impl == "cuda":
        return kernel(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return _state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
