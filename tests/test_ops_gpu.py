"""Parity of recbole-ssm's own paths with the mamba-ssm CUDA kernels (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from recbole_ssm.ops import backend as B
from recbole_ssm.ops import (
    causal_conv1d_fn,
    mamba_chunk_scan_combined,
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_torch,
    selective_state_update,
    ssd_chunked,
    ssd_ref,
)

HAS_KERNELS = torch.cuda.is_available() and B.mamba_selective_scan() is not None and B.mamba_ssd() is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_KERNELS, reason="needs CUDA and an importable mamba_ssm"),
]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def scan_inputs(dtype, batch=2, dim=64, L=130, N=16, groups=2):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g).to(dtype)  # noqa: E731
    return dict(
        u=r(batch, dim, L),
        delta=r(batch, dim, L) * 0.5,
        A=-torch.rand(dim, N, device="cuda", generator=g) * 4 - 0.1,
        B=r(batch, groups, N, L),
        C=r(batch, groups, N, L),
        D=torch.randn(dim, device="cuda", generator=g),
        z=r(batch, dim, L),
        delta_bias=torch.randn(dim, device="cuda", generator=g) * 0.5,
    )


def ssd_inputs(dtype, batch=2, L=130, heads=4, headdim=32, groups=2, N=16):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g).to(dtype)  # noqa: E731
    return dict(
        x=r(batch, L, heads, headdim),
        dt=r(batch, L, heads) * 0.5,
        A=-torch.rand(heads, device="cuda", generator=g) * 4,
        B=r(batch, L, groups, N),
        C=r(batch, L, groups, N),
        D=torch.randn(heads, device="cuda", generator=g),
        z=r(batch, L, heads, headdim),
        dt_bias=torch.randn(heads, device="cuda", generator=g) * 0.5,
        initial_states=torch.randn(batch, heads, headdim, N, device="cuda", generator=g),
    )


def test_selective_scan_parity_with_mamba_kernel(monkeypatch):
    monkeypatch.setenv(B.ENV_VAR, "cuda")
    inp = scan_inputs(torch.float32)
    out_k, last_k = selective_scan_fn(**inp, delta_softplus=True, return_last_state=True)
    out_t, last_t = selective_scan_torch(**inp, delta_softplus=True, return_last_state=True)
    assert rel_err(out_t, out_k) < 1e-4 and rel_err(last_t, last_k) < 1e-4


def test_ssd_parity_with_mamba_kernel(monkeypatch):
    monkeypatch.setenv(B.ENV_VAR, "cuda")
    inp = ssd_inputs(torch.float32)
    out_k, last_k = mamba_chunk_scan_combined(
        **inp, chunk_size=64, dt_softplus=True, return_final_states=True
    )
    out_t, last_t = ssd_chunked(**inp, chunk_size=64, dt_softplus=True, return_final_states=True)
    err_out, err_last = rel_err(out_t, out_k), rel_err(last_t, last_k)
    # TF32 in the Triton matmuls; each error named, so that a failure says which part is off
    assert err_out < 1e-3, f"output: relative error {err_out:.2e}"
    assert err_last < 1e-3, f"final states: relative error {err_last:.2e}"


def test_state_update_parity_with_mamba_kernel(monkeypatch):
    inp = scan_inputs(torch.float32, L=1, groups=1)
    args = (
        inp["u"][..., 0],
        inp["delta"][..., 0],
        inp["A"],
        inp["B"][:, 0, :, 0],
        inp["C"][:, 0, :, 0],
        inp["D"],
        inp["z"][..., 0],
        inp["delta_bias"],
        True,
    )
    s_k = torch.randn(2, 64, 16, device="cuda")
    s_t = s_k.clone()
    monkeypatch.setenv(B.ENV_VAR, "cuda")
    y_k = selective_state_update(s_k, *args)
    monkeypatch.setenv(B.ENV_VAR, "torch")
    y_t = selective_state_update(s_t, *args)
    assert rel_err(y_t, y_k) < 1e-4 and rel_err(s_t, s_k) < 1e-4


def test_causal_conv1d_parity(monkeypatch):
    if B.causal_conv1d_kernels() is None:
        pytest.skip("causal_conv1d not importable")
    x, w, b = (
        torch.randn(2, 64, 33, device="cuda"),
        torch.randn(64, 4, device="cuda"),
        torch.randn(64, device="cuda"),
    )
    monkeypatch.setenv(B.ENV_VAR, "cuda")
    y_k = causal_conv1d_fn(x, w, b, "silu")
    monkeypatch.setenv(B.ENV_VAR, "torch")
    assert rel_err(causal_conv1d_fn(x, w, b, "silu"), y_k) < 1e-5


@pytest.mark.parametrize("backend", ["cuda", "torch"])
def test_bf16_within_tolerance_of_float64_reference(monkeypatch, backend):
    monkeypatch.setenv(B.ENV_VAR, backend)
    inp = scan_inputs(torch.bfloat16)
    ref = selective_scan_ref(**{k: v.double() for k, v in inp.items()}, delta_softplus=True)
    assert rel_err(selective_scan_fn(**inp, delta_softplus=True), ref) < 3e-2
    sinp = ssd_inputs(torch.bfloat16)
    sref = ssd_ref(**{k: v.double() for k, v in sinp.items()}, dt_softplus=True)
    assert rel_err(mamba_chunk_scan_combined(**sinp, chunk_size=64, dt_softplus=True), sref) < 3e-2
