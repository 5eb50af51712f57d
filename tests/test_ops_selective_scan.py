"""Selective scan: every fast path against the sequential reference, in float32 and float64."""

from __future__ import annotations

import pytest
import torch

import recbole_ssm.ops.selective_scan as ss
from recbole_ssm.ops import (
    cpu_kernel,
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_torch,
    selective_state_update,
)

IMPLS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif(cpu_kernel.load() is None, reason="no C++ kernel")),
]


IMPL_SEED = {"torch": 1, "cpp": 2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (b: the float64 reference)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def make_inputs(batch, dim, L, N, groups, with_D, with_z, with_bias, seed, dtype=torch.float64):
    """Random inputs in the ranges Mamba uses (A < 0, B/C/u ~ N(0, 1)); groups=0 means (batch, N, L)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    bc_shape = (batch, N, L) if groups == 0 else (batch, groups, N, L)
    return dict(
        u=r(batch, dim, L),
        delta=r(batch, dim, L, scale=0.5),
        A=-torch.rand(dim, N, generator=g, dtype=torch.float64).mul(4).add(0.1).to(dtype),
        B=r(*bc_shape),
        C=r(*bc_shape),
        D=r(dim) if with_D else None,
        z=r(batch, dim, L) if with_z else None,
        delta_bias=r(dim, scale=0.5) if with_bias else None,
    )


def with_grad(inputs):
    return {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}


def loss_of(out, last):
    """A loss that weighs every output and state element differently (fixed weights from the values)."""
    w_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    w_last = torch.linspace(1, -0.5, last.numel(), dtype=last.dtype).reshape(last.shape)
    return (out * w_out).sum() + (last * w_last).sum()


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several chunks in the pure-PyTorch path even at test sizes."""
    monkeypatch.setattr(ss, "_CHUNK_ELEMENTS", 2 * 3 * 8 * 4)


CASES = [
    # L, groups, D, z, bias+softplus
    (1, 0, True, True, True),
    (7, 1, False, False, False),
    (33, 2, True, False, True),
    (65, 0, False, True, True),
    (130, 3, True, True, False),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("L,groups,with_D,with_z,with_bias", CASES)
def test_forward_and_grads_match_reference(impl, L, groups, with_D, with_z, with_bias, small_chunks):
    batch, dim, N = 2, 6, 4
    seed = 1000 * L + 10 * groups + IMPL_SEED[impl]
    base = make_inputs(batch, dim, L, N, groups, with_D, with_z, with_bias, seed)
    names = [k for k, v in base.items() if v is not None]

    ref_in = with_grad(base)
    out_ref, last_ref = selective_scan_ref(**ref_in, delta_softplus=with_bias, return_last_state=True)
    grads_ref = torch.autograd.grad(loss_of(out_ref, last_ref), [ref_in[k] for k in names])

    for dtype, tol_out, tol_grad in ((torch.float64, 1e-10, 1e-9), (torch.float32, 1e-4, 1e-4)):
        fast_in = with_grad({k: (v.to(dtype) if v is not None else None) for k, v in base.items()})
        out, last = selective_scan_torch(
            **fast_in, delta_softplus=with_bias, return_last_state=True, impl=impl
        )
        assert out.dtype == dtype and out.shape == (batch, dim, L) and last.shape == (batch, dim, N)
        assert rel_err(out, out_ref) < tol_out
        assert rel_err(last, last_ref) < tol_out
        grads = torch.autograd.grad(loss_of(out, last), [fast_in[k] for k in names])
        for name, gf, gr in zip(names, grads, grads_ref):
            assert gf.shape == gr.shape
            assert rel_err(gf, gr) < tol_grad, (name, dtype)


@pytest.mark.parametrize("impl", IMPLS)
def test_without_last_state_returns_tensor_and_grads_flow(impl):
    base = make_inputs(3, 4, 9, 2, 1, True, True, True, seed=7, dtype=torch.float32)
    inp = with_grad(base)
    out = selective_scan_torch(**inp, delta_softplus=True, impl=impl)
    ref = selective_scan_ref(**base, delta_softplus=True)
    assert isinstance(out, torch.Tensor) and rel_err(out, ref) < 1e-4
    out.square().sum().backward()
    assert all(torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0 for v in inp.values() if v is not None)


def test_dispatch_on_cpu_uses_own_path(monkeypatch):
    monkeypatch.setenv("RECBOLE_SSM_BACKEND", "auto")
    base = make_inputs(2, 4, 11, 3, 2, True, True, True, seed=3, dtype=torch.float32)
    out, last = selective_scan_fn(**base, delta_softplus=True, return_last_state=True)
    ref, last_ref = selective_scan_ref(**base, delta_softplus=True, return_last_state=True)
    assert rel_err(out, ref) < 1e-4 and rel_err(last, last_ref) < 1e-4


def test_bfloat16_inputs_computed_in_float32():
    base = make_inputs(2, 4, 13, 3, 1, True, True, True, seed=5, dtype=torch.bfloat16)
    out = selective_scan_torch(**base, delta_softplus=True)
    ref = selective_scan_ref(
        **{k: (v.double() if v is not None else None) for k, v in base.items()}, delta_softplus=True
    )
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 2e-2  # bf16 output rounding only


@pytest.mark.parametrize("heads_form,groups", [(False, 0), (True, 0), (True, 2)])
def test_state_update_matches_scan_position_by_position(heads_form, groups):
    batch, dim, L, N = 2, 6, 17, 4
    base = make_inputs(batch, dim, L, N, groups, True, True, True, seed=11 + groups, dtype=torch.float32)
    out_scan = selective_scan_ref(**base, delta_softplus=True)  # (batch, dim, L)
    Bg = base["B"] if groups else base["B"].unsqueeze(1)  # (batch, G, N, L)
    Cg = base["C"] if groups else base["C"].unsqueeze(1)
    G = Bg.shape[1]
    state = torch.zeros(batch, dim, N)
    for t in range(L):
        if heads_form:  # heads = G, each head holds dim // G channels of its group
            hd = dim // G
            st = state.view(batch, G, hd, N)
            y = selective_state_update(
                st, base["u"][:, :, t].view(batch, G, hd), base["delta"][:, :, t].view(batch, G, hd),
                base["A"].view(G, hd, N), Bg[..., t], Cg[..., t], base["D"].view(G, hd),
                base["z"][:, :, t].view(batch, G, hd), base["delta_bias"].view(G, hd), True,
            ).reshape(batch, dim)  # fmt: skip
        else:  # the (batch, dim, N) form takes B, C as (batch, N)
            y = selective_state_update(
                state, base["u"][:, :, t], base["delta"][:, :, t], base["A"], Bg[:, 0, :, t], Cg[:, 0, :, t],
                base["D"], base["z"][:, :, t], base["delta_bias"], True,
            )  # fmt: skip
        assert rel_err(y, out_scan[:, :, t]) < 1e-5, t


def test_shape_errors_are_clear():
    base = make_inputs(2, 6, 5, 4, 4, False, False, False, seed=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="not divisible"):
        selective_scan_fn(**base)
    base = make_inputs(2, 6, 5, 4, 0, False, False, False, seed=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_fn(**{**base, "A": base["A"][:3]})
