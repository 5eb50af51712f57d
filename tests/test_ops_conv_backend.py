"""Causal conv1d against its reference, and the backend choice / guarded imports."""

from __future__ import annotations

import sys

import pytest
import torch

from recbole_ssm.ops import (
    BackendUnavailableError,
    causal_conv1d_fn,
    causal_conv1d_ref,
    causal_conv1d_update,
    get_backend,
)
from recbole_ssm.ops import backend as B


@pytest.mark.parametrize(
    "L,W,bias,activation", [(1, 4, True, "silu"), (7, 2, False, None), (33, 4, True, "swish")]
)
def test_causal_conv1d_matches_reference_with_grads(L, W, bias, activation):
    g = torch.Generator().manual_seed(L * 7 + W)
    x = torch.randn(3, 5, L, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, W, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    ref = causal_conv1d_ref(x, w, b, activation)
    fast = causal_conv1d_fn(x, w, b, activation)
    assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-12)
    weight = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    g_ref = torch.autograd.grad((ref * weight).sum(), leaves)
    g_fast = torch.autograd.grad((fast * weight).sum(), leaves)
    for a, r in zip(g_fast, g_ref):
        assert torch.allclose(a, r, rtol=1e-10, atol=1e-12)


def test_causal_conv1d_is_causal():
    x = torch.randn(2, 3, 10)
    w = torch.randn(3, 4)
    y = causal_conv1d_fn(x, w)
    x2 = x.clone()
    x2[..., 6:] = torch.randn(2, 3, 4)
    assert torch.equal(causal_conv1d_fn(x2, w)[..., :6], y[..., :6])


def test_causal_conv1d_update_matches_full_conv():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 12, generator=g)
    w, b = torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    full = causal_conv1d_fn(x, w, b, "silu")
    state = torch.zeros(2, 5, 4)
    for t in range(12):
        y = causal_conv1d_update(x[:, :, t], state, w, b, "silu")
        assert torch.allclose(y, full[:, :, t], rtol=1e-5, atol=1e-6)


def test_unknown_activation_is_an_error():
    with pytest.raises(NotImplementedError, match="activation"):
        causal_conv1d_fn(torch.randn(1, 2, 3), torch.randn(2, 2), activation="relu")


def test_backend_env_var(monkeypatch):
    monkeypatch.setenv(B.ENV_VAR, "torch")
    assert get_backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv(B.ENV_VAR, "auto")
    assert get_backend(torch.device("cpu")) == "torch"
    assert get_backend(torch.device("cuda"), kernels=None if B.mamba_selective_scan() is None else {}) in (
        "torch",
        "cuda",
    )
    monkeypatch.setenv(B.ENV_VAR, "cuda")
    with pytest.raises(BackendUnavailableError, match="RECBOLE_SSM_BACKEND=cuda"):
        get_backend(torch.device("cpu"))
    monkeypatch.setenv(B.ENV_VAR, "tpu")
    with pytest.raises(ValueError, match="not one of"):
        get_backend()


def test_dispatch_names_the_implementation_of_each_op(monkeypatch):
    from recbole_ssm.ops import cpu_kernel, dispatch

    monkeypatch.setenv(B.ENV_VAR, "auto")
    cpu = torch.device("cpu")
    assert dispatch("selective_scan", cpu) == ("cpp" if cpu_kernel.load() is not None else "torch", None)
    for op in ("ssd", "causal_conv1d", "selective_state_update"):
        assert dispatch(op, cpu) == ("torch", None)
    stand_in = object()  # a CUDA device with the kernels importable: their entry point is returned
    monkeypatch.setattr(B, "mamba_ssd", lambda: {"mamba_chunk_scan_combined": stand_in})
    assert dispatch("ssd", torch.device("cuda")) == ("cuda", stand_in)
    monkeypatch.setenv(B.ENV_VAR, "torch")
    assert dispatch("ssd", torch.device("cuda")) == ("torch", None)
    monkeypatch.setenv(B.ENV_VAR, "cuda")
    with pytest.raises(BackendUnavailableError, match="RECBOLE_SSM_BACKEND=cuda"):
        dispatch("causal_conv1d", cpu)


def test_mamba_ssm_without_causal_conv1d_runs_only_the_convolution_on_our_path(monkeypatch):
    """mamba-ssm does not need causal-conv1d: with the one importable and the other not, each op
    asks for its own table (seen on a CUDA machine, where the convolution asked for the kernel
    of the selective scan's table and failed)."""
    from recbole_ssm.ops import dispatch

    scan, ssd = object(), object()
    monkeypatch.setattr(B, "mamba_selective_scan", lambda: {"selective_scan_fn": scan})
    monkeypatch.setattr(B, "mamba_ssd", lambda: {"mamba_chunk_scan_combined": ssd})
    monkeypatch.setattr(B, "causal_conv1d_kernels", lambda: None)
    cuda = torch.device("cuda")
    monkeypatch.setenv(B.ENV_VAR, "auto")
    assert dispatch("selective_scan", cuda) == ("cuda", scan)
    assert dispatch("ssd", cuda) == ("cuda", ssd)
    assert dispatch("causal_conv1d", cuda) == ("torch", None)
    monkeypatch.setenv(B.ENV_VAR, "cuda")
    with pytest.raises(BackendUnavailableError, match="do not import"):
        dispatch("causal_conv1d", cuda)


def test_cuda_backend_without_kernels_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(B.ENV_VAR, "cuda")
    monkeypatch.setattr(B, "mamba_selective_scan", lambda: None)
    with pytest.raises(BackendUnavailableError, match="do not import"):
        get_backend(torch.device("cuda"))
    with pytest.raises(BackendUnavailableError):
        from recbole_ssm.ops import selective_scan_fn

        u = torch.randn(1, 2, 3)
        selective_scan_fn(u, u, -torch.ones(2, 1), torch.randn(1, 1, 3), torch.randn(1, 1, 3))


def test_broken_mamba_install_only_disables_the_kernels(monkeypatch, tmp_path):
    """A mamba_ssm / causal_conv1d that raises on import (e.g. a CUDA build for another torch)."""
    for name in ("mamba_ssm", "causal_conv1d"):
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text("raise OSError('undefined symbol: _ZN3c10 (test stand-in)')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "causal_conv1d")]:
        monkeypatch.delitem(sys.modules, mod)
    tables = (B.mamba_selective_scan, B.mamba_ssd, B.mamba_state_update, B.causal_conv1d_kernels)
    for fn in tables:
        fn.cache_clear()
    try:
        assert all(fn() is None for fn in tables)
        monkeypatch.setenv(B.ENV_VAR, "auto")
        assert get_backend(torch.device("cuda"), B.mamba_ssd()) == "torch"
    finally:
        for fn in tables:
            fn.cache_clear()
