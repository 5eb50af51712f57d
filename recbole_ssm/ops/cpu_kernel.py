"""Fused C++ CPU kernel for the selective scan core, built lazily with torch's cpp_extension.

The first call to :func:`load` in a process compiles ``csrc/selective_scan_cpu.cpp`` (tens of
seconds, once per machine: torch caches the build under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``, keyed by the source and flags, so later processes only load
it). When there is no compiler, or the build fails, it logs one warning and returns None, and
the selective scan falls back to its pure-PyTorch path. ``RECBOLE_SSM_CPU_KERNEL=0`` skips it.

Concurrent builds: torch guards its build folder with a ``lock`` file that a killed build
leaves behind, after which every later ``cpp_extension.load`` waits on it forever. So loads of
this kernel first take an OS file lock (``flock``, released by the kernel when its holder dies)
on the build folder; whoever holds it knows that any ``lock`` file there is stale and removes
it. A load that cannot take the file lock within ``LOCK_TIMEOUT_S`` uses the pure-PyTorch path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from typing import Any, Iterator

logger = logging.getLogger(__name__)

ENV_VAR = "RECBOLE_SSM_CPU_KERNEL"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "selective_scan_cpu.cpp")
# -march=native: the kernel is built on the machine that runs it. -fopenmp: at::parallel_for
# and the `omp simd` reductions. No -ffast-math (it would change the process's FP state).
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
LOCK_TIMEOUT_S = 900.0  # a build takes tens of seconds; one that holds the lock longer is stuck


def build_directory(name: str) -> str:
    """Where torch builds and caches ``name``: ``$TORCH_EXTENSIONS_DIR/<name>``, else
    ``~/.cache/torch_extensions/py311_cpu/<name>`` (say), as ``cpp_extension.load`` does."""
    import torch
    from torch.utils import cpp_extension

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], name)
    cuda = torch.version.cuda
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}_" + ("cu" + cuda.replace(".", "") if cuda else "cpu")
    return os.path.join(cpp_extension.get_default_build_root(), tag, name)


@contextlib.contextmanager
def build_lock(folder: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` and clear torch's stale ``lock`` file there.

    Raises TimeoutError when another live process holds it for more than ``timeout_s``. Where
    ``fcntl`` is missing (Windows) it only yields: torch's own lock file is all there is.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "recbole_ssm.flock"), "a+b") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process has been building in {folder} for over "
                                       f"{timeout_s:.0f} s") from None
                time.sleep(0.2)
        try:
            stale = os.path.join(folder, "lock")
            if os.path.exists(stale):  # left by a build that was killed: nobody holds the flock
                logger.warning("recbole-ssm: removing a stale build lock %s", stale)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
        folder = build_directory(name)
        with build_lock(folder):
            return cpp_extension.load(
                name=name,
                sources=[_SOURCE],
                extra_cflags=_CFLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=folder,
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
