"""Benchmark of the SSM ops on this machine: forward+backward time and peak memory.

Run ``python -m recbole_ssm.bench.ops`` (``--help`` for sizes). Every ratio compares
timings taken in the same run, interleaved (one repetition of each op in turn, the best
of ``--repeats`` kept), because absolute times on a shared machine are noisy.

* ``scan``: :func:`recbole_ssm.ops.selective_scan_fn` (batch, dim, L) with N states;
* ``ssd``: :func:`recbole_ssm.ops.mamba_chunk_scan_combined` with dim = heads * headdim;
* ``attention``: causal softmax attention of the same width (``dim`` split into ``heads``
  heads, ``F.scaled_dot_product_attention``), the sequence mixing SASRec pays;
* ``scan_ref`` / ``ssd_ref``: the sequential references, run at ``--ref-batch`` (they take
  minutes at full batch); their ratios compare with our op timed at that same batch.

Peak memory is the growth of the resident set during one forward+backward, measured in a
fresh subprocess per (op, L) so that earlier peaks do not hide it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from recbole_ssm.bench.report import cell, cpu_model
from recbole_ssm.options import ArgParser

OPS = ("scan", "ssd", "attention", "scan_ref", "ssd_ref")


def make_op(name: str, batch: int, L: int, a: argparse.Namespace) -> Callable[[], None]:
    """A closure running one forward+backward of ``name`` on fresh random inputs."""
    from recbole_ssm.ops import mamba_chunk_scan_combined, selective_scan_fn, selective_scan_ref, ssd_ref

    g = torch.Generator().manual_seed(L)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_(True)

    if name in ("scan", "scan_ref"):
        u, delta, z = leaf(batch, a.dim, L), leaf(batch, a.dim, L, scale=0.5), leaf(batch, a.dim, L)
        A = (-torch.rand(a.dim, a.d_state, generator=g) * 4 - 0.1).requires_grad_(True)
        B, C = leaf(batch, a.d_state, L), leaf(batch, a.d_state, L)
        D, bias = leaf(a.dim), leaf(a.dim, scale=0.5)
        fn = selective_scan_fn if name == "scan" else selective_scan_ref

        def run():
            fn(u, delta, A, B, C, D, z, bias, True).sum().backward()

    elif name in ("ssd", "ssd_ref"):
        heads, headdim = a.ssd_heads, a.dim // a.ssd_heads
        x, dt = leaf(batch, L, heads, headdim), leaf(batch, L, heads, scale=0.5)
        A = (-torch.rand(heads, generator=g) * 4 - 0.1).requires_grad_(True)
        B, C = leaf(batch, L, 1, a.d_state), leaf(batch, L, 1, a.d_state)
        D, bias = leaf(heads), leaf(heads, scale=0.5)
        fn = mamba_chunk_scan_combined if name == "ssd" else ssd_ref

        def run():
            fn(x, dt, A, B, C, a.chunk_size, D=D, dt_bias=bias, dt_softplus=True).sum().backward()

    elif name == "attention":
        hd = a.dim // a.attn_heads
        q, k, v = (leaf(batch, a.attn_heads, L, hd) for _ in range(3))

        def run():
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    else:
        raise ValueError(name)
    return run


def time_ops(ops: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Best wall time (s) of each op over ``repeats`` interleaved rounds, after one warm-up each."""
    for run in ops.values():
        run()
    best = {name: float("inf") for name in ops}
    for _ in range(repeats):
        for name, run in ops.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _measure_memory_child(name: str, batch: int, L: int, a: argparse.Namespace) -> None:
    from recbole_ssm.bench.memory import CpuPeakMemory

    make_op(name, 2, 8, a)()  # warm-up (kernel load, allocator) on a tiny input
    run = make_op(name, batch, L, a)
    with CpuPeakMemory() as mem:  # the peak above the inputs, of this region only (VmHWM reset)
        run()
    print(json.dumps({"peak_mb": mem.mib, "method": mem.method}))


def peak_memory_mb(name: str, batch: int, L: int, a: argparse.Namespace) -> float | None:
    """Resident-set growth (MiB) of one forward+backward, in a fresh subprocess; None if it failed."""
    cmd = [sys.executable, "-m", "recbole_ssm.bench.ops", "--memory-child", name, str(batch), str(L)]
    cmd += [f"--dim={a.dim}", f"--d-state={a.d_state}", f"--ssd-heads={a.ssd_heads}"]
    cmd += [f"--attn-heads={a.attn_heads}", f"--chunk-size={a.chunk_size}", f"--threads={a.threads}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    except (IndexError, ValueError, KeyError):
        return None


def step_costs(
    a: argparse.Namespace, batch: int, positions: tuple[int, ...] = (0, 1000), steps: int = 50
) -> dict:
    """µs per step of the recurrent step functions after ``p`` earlier positions, for p in positions."""
    from recbole_ssm.ops import selective_state_update, ssd_state_update

    g = torch.Generator().manual_seed(0)
    heads, hd = a.ssd_heads, a.dim // a.ssd_heads
    A1 = -torch.rand(a.dim, a.d_state, generator=g) - 0.1
    A2 = -torch.rand(heads, generator=g) - 0.1
    out = {}
    with torch.no_grad():
        for name in ("scan step", "ssd step"):
            state = (
                torch.zeros(batch, a.dim, a.d_state)
                if name == "scan step"
                else torch.zeros(batch, heads, hd, a.d_state)
            )

            def one(name=name, state=state):
                if name == "scan step":
                    x = torch.randn(batch, a.dim, generator=g)
                    Bs = torch.randn(batch, a.d_state, generator=g)
                    selective_state_update(state, x, x, A1, Bs, Bs, dt_softplus=True)
                else:
                    x = torch.randn(batch, heads, hd, generator=g)
                    Bs = torch.randn(batch, 1, a.d_state, generator=g)
                    ssd_state_update(
                        state, x, torch.randn(batch, heads, generator=g), A2, Bs, Bs, dt_softplus=True
                    )

            done, costs = 0, []
            for p in positions:
                for _ in range(p - done):
                    one()
                t0 = time.perf_counter()
                for _ in range(steps):
                    one()
                costs.append((time.perf_counter() - t0) / steps * 1e6)
                done = p + steps
            out[name] = dict(zip(positions, costs))
    return out


def machine() -> str:
    cpu = cpu_model()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"python {platform.python_version()}, load average {load:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m recbole_ssm.bench.ops", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--d-state", type=int, default=32)
    p.add_argument("--ssd-heads", type=int, default=2)
    p.add_argument("--attn-heads", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--lengths", default="50,200,1024,2048")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-batch", type=int, default=32, help="batch of the reference loops and their ratios")
    p.add_argument("--ref-max-len", type=int, default=200, help="longest L at which the references run")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--memory-child", nargs=3, metavar=("OP", "BATCH", "L"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads < 0:
        p.error(f"--threads must be >= 0; got {a.threads}")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.memory_child:
        name, batch, L = a.memory_child
        _measure_memory_child(name, int(batch), int(L), a)
        return 0

    lengths = [int(x) for x in a.lengths.split(",")]
    from recbole_ssm.ops import cpu_kernel, get_backend

    kernel = "fused C++" if cpu_kernel.load() is not None else "pure PyTorch (no C++ kernel)"
    print(f"# machine: {machine()}")
    print(f"# backend: {get_backend(torch.device('cpu'))}, CPU selective scan: {kernel}")
    print(f"# batch={a.batch} dim={a.dim} N={a.d_state} ssd heads={a.ssd_heads}x{a.dim // a.ssd_heads} "
          f"chunk={a.chunk_size} attention heads={a.attn_heads}; fwd+bwd, best of {a.repeats}")  # fmt: skip
    print()
    print("| L | scan ms | ssd ms | attention ms | attention / ssd | scan MiB | ssd MiB | attention MiB "
          "| (B,dim,L,N) MiB | scan_ref / scan | ssd_ref / ssd |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for L in lengths:
        print("| " + " | ".join(str(c) for c in _length_row(L, a)) + " |", flush=True)
    print()
    print("| step function | µs/step after 0 positions | µs/step after 1000 positions |")
    print("|---|---|---|")
    for name, costs in step_costs(a, a.batch).items():
        print(f"| {name} (batch {a.batch}) | {costs[0]:.0f} | {costs[1000]:.0f} |")
    return 0


def _length_row(L: int, a) -> list:
    """One row of the kernel table: times, peak memory and reference ratios at length L."""
    t = time_ops({n: make_op(n, a.batch, L, a) for n in ("scan", "ssd", "attention")}, a.repeats)
    mem = {n: None for n in ("scan", "ssd", "attention")}
    if not a.no_memory:
        mem = {n: peak_memory_mb(n, a.batch, L, a) for n in mem}
    ref = {"scan_ref / scan": "not run", "ssd_ref / ssd": "not run"}
    if L <= a.ref_max_len:
        rb = a.ref_batch
        tr = time_ops({n: make_op(n, rb, L, a) for n in ("scan", "scan_ref", "ssd", "ssd_ref")}, 1)
        ref = {
            "scan_ref / scan": f"{tr['scan_ref'] / tr['scan']:.1f}x (B={rb})",
            "ssd_ref / ssd": f"{tr['ssd_ref'] / tr['ssd']:.1f}x (B={rb})",
        }
    full = a.batch * a.dim * L * a.d_state * 4 / 2**20

    cells = [L, f"{t['scan'] * 1e3:.0f}", f"{t['ssd'] * 1e3:.0f}", f"{t['attention'] * 1e3:.0f}"]
    cells += [f"{t['attention'] / t['ssd']:.2f}x", cell(mem["scan"], digits=0), cell(mem["ssd"], digits=0)]
    cells += [cell(mem["attention"], digits=0), f"{full:.0f}", ref["scan_ref / scan"], ref["ssd_ref / ssd"]]
    return cells


if __name__ == "__main__":
    from recbole_ssm.entry import guarded

    sys.exit(guarded(main))
