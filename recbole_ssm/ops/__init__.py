"""SSM sequence-mixing ops: selective scan (Mamba), chunked SSD (Mamba2 / Hydra), causal conv.

Each op has a ``*_ref`` sequential reference and a fast path chosen in one place,
:func:`dispatch` (``RECBOLE_SSM_BACKEND=auto|torch|cuda``): mamba-ssm / causal-conv1d
kernels on CUDA where they import ("cuda"), recbole-ssm's fused C++ selective scan on the CPU
("cpp"), recbole-ssm's own PyTorch paths elsewhere ("torch").
"""

from recbole_ssm.ops.backend import BackendUnavailableError, dispatch, get_backend
from recbole_ssm.ops.conv import causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update
from recbole_ssm.ops.selective_scan import (
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_torch,
    selective_state_update,
)
from recbole_ssm.ops.ssd import (
    mamba_chunk_scan_combined,
    mamba_chunk_scan_combined_ref,
    ssd_chunked,
    ssd_ref,
    ssd_state_update,
)

__all__ = [
    "BackendUnavailableError",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "dispatch",
    "get_backend",
    "mamba_chunk_scan_combined",
    "mamba_chunk_scan_combined_ref",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_scan_torch",
    "selective_state_update",
    "ssd_chunked",
    "ssd_ref",
    "ssd_state_update",
]
