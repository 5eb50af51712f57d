"""Wall time and peak memory of ``prepare csv`` on a generated event file.

    python tools/bench_prepare_csv.py [--rows N] [--users U] [--items I] [--times iso|epoch] [--gzip] [--keep DIR]

Writes a CSV of N rows (default 10,000,000) into a temp folder (or DIR): ``user_id,item_id,timestamp``
with string ids (``u123456``, ``i4567``), users drawn uniformly from U (default 300,000), items
skewed towards the popular ones among I (default 100,000), times over three years in no order,
as ISO-8601 text (``2023-04-05T06:07:08Z``) or epoch seconds. Then it runs
``python -m recbole_ssm.data prepare csv`` on it in a subprocess and prints the file size, the wall
time and the subprocess's peak RSS: ``/usr/bin/time``'s ``%M`` where there is one, else
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (which can count this process's own pages, copied by the
fork before ``exec``: an upper bound).
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = np.datetime64("2021-01-01T00:00:00", "s")
SPAN_S = 3 * 365 * 86400
CHUNK = 500_000


def generate(path: str, rows: int, users: int, items: int, times: str, seed: int = 0) -> None:
    """Write the event file, ``CHUNK`` rows at a time (gzipped when ``path`` ends in .gz)."""
    rng = np.random.default_rng(seed)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="\n") as f:
        f.write("user_id,item_id,timestamp\n")
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            u = rng.integers(0, users, n)
            i = (items * rng.random(n) ** 3).astype(np.int64)  # a few popular items, a long tail
            s = rng.integers(0, SPAN_S, n)
            if times == "iso":
                t = np.char.add(np.datetime_as_string(START + s, unit="s"), "Z")
            else:
                t = (START.astype(np.int64) + s).astype(str)
            f.write("".join(f"u{a},i{b},{c}\n" for a, b, c in zip(u.tolist(), i.tolist(), t.tolist())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=300_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--times", choices=("iso", "epoch"), default="iso")
    p.add_argument("--gzip", action="store_true", help="write events.csv.gz instead of events.csv")
    p.add_argument("--keep", metavar="DIR", help="write into DIR and keep it (default: a temp folder, removed)")
    args = p.parse_args(argv)
    if args.rows < 1 or args.users < 1 or args.items < 1:
        p.error("--rows, --users and --items must be 1 or more")
    folder = args.keep or tempfile.mkdtemp(prefix="bench-prepare-csv-")
    os.makedirs(folder, exist_ok=True)
    try:
        path = os.path.join(folder, "events.csv.gz" if args.gzip else "events.csv")
        t0 = time.perf_counter()
        generate(path, args.rows, args.users, args.items, args.times)
        print(f"generated {path}: {args.rows:,} rows, {os.path.getsize(path) / 2**20:.1f} MiB "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        out = os.path.join(folder, "out", "events")
        cmd = [sys.executable, "-m", "recbole_ssm.data", "prepare", "csv", "--input", path, "--output", out,
               "--force"]
        timer = ["/usr/bin/time", "-f", "peak_rss_kib=%M"] if os.access("/usr/bin/time", os.X_OK) else []
        t0 = time.perf_counter()
        proc = subprocess.run(timer + cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        measured = [line for line in proc.stderr.splitlines() if line.startswith("peak_rss_kib=")]
        if measured:
            peak_kib, how = int(measured[-1].split("=")[1]), "/usr/bin/time"
        else:
            peak_kib, how = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "getrusage"  # KiB on Linux
        print(f"prepare csv: {wall:.1f} s wall, peak RSS {peak_kib / 1024:.1f} MiB ({how}), "
              f"input {os.path.getsize(path) / 2**20:.1f} MiB, "
              f".inter {os.path.getsize(os.path.join(out, 'events.inter')) / 2**20:.1f} MiB", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
