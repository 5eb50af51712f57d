"""Fused C++ CPU kernel for the selective scan core, built lazily with torch's cpp_extension.

The first call to :func:`load` in a process compiles ``csrc/selective_scan_cpu.cpp`` (tens of
seconds, once per machine: torch caches the build under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``, keyed by the source and flags, so later processes only load
it). When there is no compiler, or the build fails, it logs one warning and returns None, and
the selective scan falls back to its pure-PyTorch path. ``RECBOLE_SSM_CPU_KERNEL=0`` skips it.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

ENV_VAR = "RECBOLE_SSM_CPU_KERNEL"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "selective_scan_cpu.cpp")
# -march=native: the kernel is built on the machine that runs it. -fopenmp: at::parallel_for
# and the `omp simd` reductions. No -ffast-math (it would change the process's FP state).
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]


@functools.cache
def load() -> Any | None:
    """The compiled kernel module (``fwd``, ``bwd``), or None when it is unavailable."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        logger.info("%s=0: selective scan uses its pure-PyTorch CPU path", ENV_VAR)
        return None
    try:
        import torch
        from torch.utils import cpp_extension

        name = "recbole_ssm_selective_scan_cpu_" + torch.__version__.split("+")[0].replace(".", "_")
        return cpp_extension.load(
            name=name,
            sources=[_SOURCE],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler / ninja, headers missing, build error, load error
        logger.warning(
            "recbole-ssm: the fused CPU selective-scan kernel is unavailable (%s: %s); using the "
            "slower pure-PyTorch path. Set %s=0 to skip the build.",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            ENV_VAR,
        )
        return None
