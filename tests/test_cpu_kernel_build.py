"""Loading the fused CPU kernel never waits forever on a build lock left by a killed process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from recbole_ssm.ops import cpu_kernel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fcntl = pytest.importorskip("fcntl")


@pytest.mark.skipif(cpu_kernel.load() is None, reason="no C++ kernel")
def test_a_stale_torch_build_lock_does_not_hang_a_fresh_process(tmp_path):
    built = os.path.dirname(cpu_kernel.load().__file__)
    root = tmp_path / "extensions"
    shutil.copytree(built, root / os.path.basename(built))  # the build, up to date: loading is quick
    (root / os.path.basename(built) / "lock").write_text("")  # what a build killed midway leaves
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(root), "PYTHONPATH": REPO}
    code = "from recbole_ssm.ops import cpu_kernel; print(cpu_kernel.load().__file__)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith(str(root))
    assert "removing a stale build lock" in proc.stderr
    assert not (root / os.path.basename(built) / "lock").exists()


def test_build_lock_clears_the_stale_lock_file(tmp_path):
    (tmp_path / "lock").write_text("")
    with cpu_kernel.build_lock(str(tmp_path)):
        assert not (tmp_path / "lock").exists()


def test_build_lock_waits_for_a_live_holder_then_times_out(tmp_path):
    (tmp_path / "lock").write_text("")  # a live builder's lock: not stale, must stay
    with open(tmp_path / "recbole_ssm.flock", "a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="another process has been building"):
            with cpu_kernel.build_lock(str(tmp_path), timeout_s=0.5):
                pass
        assert time.monotonic() - start >= 0.5
        assert (tmp_path / "lock").exists()

        entered = threading.Event()

        def load():
            with cpu_kernel.build_lock(str(tmp_path), timeout_s=30):
                entered.set()

        waiter = threading.Thread(target=load)
        waiter.start()
        time.sleep(0.5)
        assert not entered.is_set()  # still held
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
        waiter.join(timeout=10)
        assert entered.is_set()
