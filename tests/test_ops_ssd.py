"""Chunked SSD: the chunked path against the sequential reference, in float32 and float64."""

from __future__ import annotations

import pytest
import torch

from recbole_ssm.ops import mamba_chunk_scan_combined, ssd_chunked, ssd_ref, ssd_state_update


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (b: the float64 reference)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def make_inputs(batch, L, heads, headdim, groups, N, D_shape, with_z, with_init, with_bias, seed, dtype=torch.float64):
    """Random inputs in Mamba2's ranges (A < 0); D_shape: None, "h" or "hp"."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    D = {None: None, "h": (heads,), "hp": (heads, headdim)}[D_shape]
    return dict(
        x=r(batch, L, heads, headdim),
        dt=r(batch, L, heads, scale=0.5),
        A=-torch.rand(heads, generator=g, dtype=torch.float64).mul(4).add(0.1).to(dtype),
        B=r(batch, L, groups, N),
        C=r(batch, L, groups, N),
        D=r(*D) if D is not None else None,
        z=r(batch, L, heads, headdim) if with_z else None,
        dt_bias=r(heads, scale=0.5) if with_bias else None,
        initial_states=r(batch, heads, headdim, N) if with_init else None,
    )


def with_grad(inputs):
    return {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}


def loss_of(out, last):
    w_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    w_last = torch.linspace(1, -0.5, last.numel(), dtype=last.dtype).reshape(last.shape)
    return (out * w_out).sum() + (last * w_last).sum()


CASES = [
    # L, chunk, groups, D, z, initial states, bias+softplus, dt_limit
    (1, 4, 1, "h", True, True, True, (0.0, float("inf"))),
    (7, 4, 2, None, False, False, False, (0.0, float("inf"))),
    (33, 8, 1, "hp", True, False, True, (0.05, 0.8)),
    (65, 16, 4, "h", False, True, True, (0.0, float("inf"))),
    (130, 32, 2, "hp", True, True, False, (0.0, float("inf"))),
    (50, 256, 2, "h", True, False, True, (0.0, float("inf"))),
]


@pytest.mark.parametrize("L,chunk,groups,D_shape,with_z,with_init,with_bias,dt_limit", CASES)
def test_forward_and_grads_match_reference(L, chunk, groups, D_shape, with_z, with_init, with_bias, dt_limit):
    batch, heads, headdim, N = 2, 4, 3, 5
    base = make_inputs(batch, L, heads, headdim, groups, N, D_shape, with_z, with_init, with_bias, seed=L * 31 + chunk)
    names = [k for k, v in base.items() if v is not None]
    kw = dict(dt_softplus=with_bias, dt_limit=dt_limit, return_final_states=True)

    ref_in = with_grad(base)
    out_ref, last_ref = ssd_ref(**ref_in, chunk_size=chunk, **kw)
    grads_ref = torch.autograd.grad(loss_of(out_ref, last_ref), [ref_in[k] for k in names])

    for dtype, tol_out, tol_grad in ((torch.float64, 1e-10, 1e-9), (torch.float32, 1e-4, 1e-4)):
        fast_in = with_grad({k: (v.to(dtype) if v is not None else None) for k, v in base.items()})
        out, last = ssd_chunked(**fast_in, chunk_size=chunk, **kw)
        assert out.dtype == dtype and out.shape == (batch, L, heads, headdim)
        assert last.shape == (batch, heads, headdim, N)
        assert rel_err(out, out_ref) < tol_out
        assert rel_err(last, last_ref) < tol_out
        grads = torch.autograd.grad(loss_of(out, last), [fast_in[k] for k in names])
        for name, gf, gr in zip(names, grads, grads_ref):
            assert gf.shape == gr.shape
            assert rel_err(gf, gr) < tol_grad, (name, dtype)


@pytest.mark.parametrize("block_elements,with_init", [(1, False), (1, True), (200, True), (1 << 19, False)])
def test_batch_blocks_and_output_only_grads_match_reference(monkeypatch, block_elements, with_init):
    """The chunked path splits the batch into blocks (here: one sample each, a few, or one block)
    and may be called without final states; outputs and gradients still match the reference."""
    import recbole_ssm.ops.ssd as ssd_module

    monkeypatch.setattr(ssd_module, "_BLOCK_ELEMENTS", block_elements)
    batch, L, heads, headdim, groups, N = 5, 23, 4, 3, 2, 5
    base = make_inputs(batch, L, heads, headdim, groups, N, "hp", True, with_init, True, seed=block_elements + 7)
    names = [k for k, v in base.items() if v is not None]
    w = torch.randn(batch, L, heads, headdim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref_in = with_grad(base)
    out_ref = ssd_ref(**ref_in, dt_softplus=True)
    grads_ref = torch.autograd.grad((out_ref * w).sum(), [ref_in[k] for k in names])
    fast_in = with_grad({k: (v.float() if v is not None else None) for k, v in base.items()})
    out = ssd_chunked(**fast_in, chunk_size=6, dt_softplus=True)
    assert rel_err(out, out_ref) < 1e-4
    grads = torch.autograd.grad((out * w.float()).sum(), [fast_in[k] for k in names])
    for name, gf, gr in zip(names, grads, grads_ref):
        assert rel_err(gf, gr) < 1e-4, name


def test_chunk_size_does_not_change_the_result():
    base = make_inputs(2, 45, 2, 4, 1, 3, "h", True, True, True, seed=9, dtype=torch.float32)
    outs = [ssd_chunked(**base, chunk_size=c, dt_softplus=True) for c in (1, 8, 45, 64)]
    for o in outs[1:]:
        assert rel_err(o, outs[0]) < 1e-5


def test_dispatch_on_cpu_and_unsupported_arguments(monkeypatch):
    monkeypatch.setenv("RECBOLE_SSM_BACKEND", "auto")
    base = make_inputs(2, 20, 2, 4, 1, 3, "h", True, False, True, seed=2, dtype=torch.float32)
    out, last = mamba_chunk_scan_combined(**base, chunk_size=8, dt_softplus=True, return_final_states=True)
    ref, last_ref = ssd_ref(**base, dt_softplus=True, return_final_states=True)
    assert rel_err(out, ref) < 1e-4 and rel_err(last, last_ref) < 1e-4
    assert isinstance(mamba_chunk_scan_combined(**base, chunk_size=8), torch.Tensor)
    with pytest.raises(NotImplementedError, match="seq_idx"):
        mamba_chunk_scan_combined(**base, chunk_size=8, seq_idx=torch.zeros(2, 20, dtype=torch.int32))


@pytest.mark.parametrize("groups,D_shape", [(1, "h"), (2, "hp"), (2, None)])
def test_state_update_matches_scan_position_by_position(groups, D_shape):
    batch, L, heads, headdim, N = 2, 19, 4, 3, 5
    base = make_inputs(batch, L, heads, headdim, groups, N, D_shape, True, True, True, seed=groups, dtype=torch.float32)
    limit = (0.05, 2.0)
    out_scan = ssd_ref(**base, dt_softplus=True, dt_limit=limit)  # (batch, L, heads, headdim)
    state = base["initial_states"].clone()
    for t in range(L):
        y = ssd_state_update(
            state, base["x"][:, t], base["dt"][:, t], base["A"], base["B"][:, t], base["C"][:, t],
            D=base["D"], z=base["z"][:, t], dt_bias=base["dt_bias"], dt_softplus=True, dt_limit=limit,
        )  # fmt: skip
        assert rel_err(y, out_scan[:, t]) < 1e-5, t
    _, final = ssd_ref(**base, dt_softplus=True, dt_limit=limit, return_final_states=True)
    assert rel_err(state, final) < 1e-5


def test_shape_errors_are_clear():
    base = make_inputs(2, 5, 4, 3, 3, 2, None, False, False, False, seed=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="not divisible"):
        ssd_chunked(**base, chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunked(**{**base, "B": base["B"][:, :, :1], "C": base["C"][:, :, :1]}, chunk_size=0)
