"""Backend choice for the SSM ops: mamba-ssm's CUDA kernels, or recbole-ssm's own paths.

``RECBOLE_SSM_BACKEND`` selects it:

* ``auto`` (default): mamba-ssm / causal-conv1d kernels for CUDA tensors when they import,
  recbole-ssm's own PyTorch (and fused CPU) paths everywhere else;
* ``torch``: always recbole-ssm's own paths, also on CUDA;
* ``cuda``: always the mamba-ssm kernels; a clear error where they cannot run.

Every import of mamba-ssm and causal-conv1d goes through this module and is guarded: a
missing or broken install (e.g. a CUDA extension built for another torch) only means the
kernels are unavailable.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch

logger = logging.getLogger(__name__)

ENV_VAR = "RECBOLE_SSM_BACKEND"
BACKENDS = ("auto", "torch", "cuda")


class BackendUnavailableError(RuntimeError):
    """The backend asked for (``RECBOLE_SSM_BACKEND=cuda``) cannot run on these inputs."""


def _guarded_import(module: str, names: tuple[str, ...]) -> dict[str, Any] | None:
    """``{name: object}`` from ``module``, or None when it is absent or fails to import."""
    try:
        mod = __import__(module, fromlist=list(names))
        return {n: getattr(mod, n) for n in names}
    except Exception as exc:  # ImportError, but also OSError / RuntimeError from broken builds
        logger.debug("%s unavailable: %s: %s", module, type(exc).__name__, exc)
        return None


@functools.cache
def mamba_selective_scan() -> dict[str, Any] | None:
    """mamba-ssm's selective scan kernel entry points, or None."""
    return _guarded_import("mamba_ssm.ops.selective_scan_interface", ("selective_scan_fn",))


@functools.cache
def mamba_ssd() -> dict[str, Any] | None:
    """mamba-ssm's Triton SSD kernel entry point, or None."""
    return _guarded_import("mamba_ssm.ops.triton.ssd_combined", ("mamba_chunk_scan_combined",))


@functools.cache
def mamba_state_update() -> dict[str, Any] | None:
    """mamba-ssm's Triton ``selective_state_update``, or None."""
    return _guarded_import("mamba_ssm.ops.triton.selective_state_update", ("selective_state_update",))


@functools.cache
def causal_conv1d_kernels() -> dict[str, Any] | None:
    """causal-conv1d's CUDA entry point, or None."""
    return _guarded_import("causal_conv1d", ("causal_conv1d_fn",))


def requested_backend() -> str:
    """The value of ``RECBOLE_SSM_BACKEND`` (``auto`` when unset); ValueError when invalid."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


_SELECTIVE_SCAN = object()  # get_backend's default table: mamba-ssm's selective scan


def get_backend(device: torch.device | None = None, kernels: Any = _SELECTIVE_SCAN) -> str:
    """The backend that runs an op on ``device``: ``"cuda"`` (mamba-ssm) or ``"torch"`` (ours).

    Args:
        device: device of the op's inputs (CPU when None).
        kernels: the guarded kernel table the op needs (e.g. :func:`mamba_ssd` ``()``), None
            where that table does not import; left out, mamba-ssm's selective scan (the most
            basic one). Each op passes its own table: mamba-ssm can import while causal-conv1d
            does not, and then only the convolution runs recbole-ssm's path.

    Raises:
        BackendUnavailableError: ``RECBOLE_SSM_BACKEND=cuda`` but the inputs are not on a
            CUDA device or the mamba-ssm kernels do not import.
    """
    requested = requested_backend()
    if requested == "torch":
        return "torch"
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if kernels is _SELECTIVE_SCAN:
        kernels = mamba_selective_scan()
    if requested == "cuda":
        if not on_cuda:
            raise BackendUnavailableError(
                f"{ENV_VAR}=cuda but the inputs are on {device or 'cpu'}; move them to a CUDA device "
                f"or set {ENV_VAR}=auto"
            )
        if kernels is None:
            raise BackendUnavailableError(
                f"{ENV_VAR}=cuda but mamba-ssm / causal-conv1d do not import here; install them "
                f"(CUDA only) or set {ENV_VAR}=auto"
            )
        return "cuda"
    return "cuda" if on_cuda and kernels is not None else "torch"


# op -> (the function giving its guarded kernel table, looked up when called; the entry point in it)
_KERNELS = {
    "selective_scan": ("mamba_selective_scan", "selective_scan_fn"),
    "selective_state_update": ("mamba_state_update", "selective_state_update"),
    "ssd": ("mamba_ssd", "mamba_chunk_scan_combined"),
    "causal_conv1d": ("causal_conv1d_kernels", "causal_conv1d_fn"),
}


def dispatch(op: str, device: torch.device | None) -> tuple[str, Any]:
    """Which implementation runs ``op`` on ``device``, in one place: ``("cuda", kernel)`` for
    mamba-ssm / causal-conv1d's kernel, ``("cpp", None)`` for recbole-ssm's fused C++ CPU kernel
    (the selective scan on the CPU, where it builds), else ``("torch", None)`` for recbole-ssm's
    PyTorch path. ``RECBOLE_SSM_BACKEND`` applies as in :func:`get_backend`."""
    table, entry = _KERNELS[op]
    kernels = globals()[table]()
    if get_backend(device, kernels) == "cuda":
        return "cuda", kernels[entry]
    on_cpu = device is None or torch.device(device).type == "cpu"
    if op == "selective_scan" and on_cpu:
        from recbole_ssm.ops import cpu_kernel

        if cpu_kernel.load() is not None:
            return "cpp", None
    return "torch", None
