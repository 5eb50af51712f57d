"""The measuring loop every bench command runs, and the worker processes it runs points in.

The protocol (docs/benchmarks.md, "How every bench command measures"):

1. The command lists its points (a trained (model, seed), a (model, length) efficiency point, a
   served checkpoint, ...), each with a record file under ``--output`` and a fingerprint of the
   settings it is measured with (``records.fingerprint``, property files included).
2. A finished record with the same fingerprint is reused; one measured with other settings stops
   the command unless ``--overwrite`` (:func:`reuse_or_schedule`).
3. Each point left runs in its own Python process, one at a time (:func:`measure_points`): its peak
   memory is its own, a crash, a timeout or an out-of-memory is one failed point, and its record is
   written whole (temp file, rename) as soon as it ends.
4. The report (markdown, csv, plots) is written from the records, with the machine line and the
   command that produced it (``report``).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from recbole_ssm.bench.records import read_record, write_record
from recbole_ssm.bench.report import progress
from recbole_ssm.errors import UsageError


def package_env() -> dict:
    """Environment for a worker: this copy of recbole_ssm first on the path."""
    import recbole_ssm

    root = os.path.dirname(os.path.dirname(os.path.abspath(recbole_ssm.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _limit_address_space(limit_bytes: int | None):
    if not limit_bytes:
        return None

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


OOM_PATTERNS = ("out of memory", "can't allocate memory", "cannot allocate memory", "memoryerror",
                "std::bad_alloc", "outofmemoryerror")


def run_worker(module: str, spec: dict, timeout_s: float | None, memory_limit_gb: float | None = None,
               log_path: str | None = None) -> dict:
    """Run ``python -m module --worker SPEC.json`` and return its result record.

    The worker writes its result as JSON to ``spec["result_path"]``. A run past ``timeout_s``
    becomes ``{"status": "timeout"}``; an allocation failure or a kill by the kernel's OOM
    killer becomes ``{"status": "OOM"}``; any other failure ``{"status": "failed", "error": ...}``.
    """
    with tempfile.TemporaryDirectory(prefix="recbole-ssm-bench-") as tmp:
        spec = {**spec, "result_path": os.path.join(tmp, "result.json")}
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f, default=str)
        err_path = log_path or os.path.join(tmp, "worker.log")
        os.makedirs(os.path.dirname(os.path.abspath(err_path)), exist_ok=True)
        limit = int(memory_limit_gb * 2**30) if memory_limit_gb else None
        t0 = time.perf_counter()
        # appended to: a run resumed after a stop keeps the lines of its earlier attempts
        with open(err_path, "a", encoding="utf-8") as log:
            start = log.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", module, "--worker", spec_path],
                stdout=log, stderr=subprocess.STDOUT, env=package_env(),
                preexec_fn=_limit_address_space(limit), start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"status": "timeout", "error": f"over {timeout_s:g} s", "wall_s": time.perf_counter() - t0}
            except BaseException:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        wall = time.perf_counter() - t0
        result = read_record(spec["result_path"])
        if rc == 0 and result is not None:
            return {**result, "wall_s": wall}
        with open(err_path, encoding="utf-8", errors="replace") as f:
            f.seek(start)
            tail = f.read()[-4000:]  # this attempt's output only
        if rc == -signal.SIGKILL or any(p in tail.lower() for p in OOM_PATTERNS):
            return {"status": "OOM", "error": last_line(tail) or f"killed (exit {rc})", "wall_s": wall}
        return {"status": "failed", "error": last_line(tail) or f"exit code {rc}", "wall_s": wall}


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a killed bench command also kills its running worker."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def worker_entry(argv: list[str], work) -> int:
    """``--worker SPEC.json``: run ``work(spec) -> dict`` and write the dict to the result path."""
    if len(argv) != 2 or argv[0] != "--worker":
        return -1
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    result = work(spec)
    with open(spec["result_path"], "w", encoding="utf-8") as f:
        json.dump(result, f, default=str)
    return 0


@dataclass
class Point:
    """One measurement: its key in the records, its record file, and the worker's spec."""

    key: tuple
    path: str
    fingerprint: str
    work: dict
    labels: dict  # written into the record beside the results (e.g. model, seed)
    log: str
    desc: str  # the point in progress and failure lines, e.g. "SASRec L=200"


def reuse_or_schedule(points: list[Point], overwrite: bool, keep: tuple = ("ok",),
                      schedule: bool = True) -> tuple[dict, list[Point]]:
    """Finished records of ``points`` (status in ``keep``, same fingerprint) and the points to measure.

    A record measured with other settings stops the command (one line) unless ``overwrite``;
    ``schedule=False`` only collects what is finished.
    """
    records: dict = {}
    todo: list[Point] = []
    for p in points:
        rec = read_record(p.path)
        if rec is not None and rec.get("fingerprint") != p.fingerprint and not overwrite:
            raise UsageError(f"{p.path} was measured with other settings; use another --output or add --overwrite")
        if rec is not None and rec.get("fingerprint") == p.fingerprint and rec.get("status") in keep:
            records[p.key] = rec
        elif schedule:
            todo.append(p)
    return records, todo


def measure_points(todo: list[Point], module: str, name: str, records: dict, show: bool,
                   timeout_s: float | None, memory_limit_gb: float | None = None) -> None:
    """Run each point's worker (``python -m module --worker``), one at a time, writing its record."""

    bar = progress(todo, len(todo), name, show)
    for p in bar:
        bar.set_postfix_str(p.desc)
        rec = run_worker(module, p.work, timeout_s, memory_limit_gb, log_path=os.path.abspath(p.log))
        rec.update({"fingerprint": p.fingerprint, **p.labels,
                    "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        write_record(p.path, rec)
        records[p.key] = rec
        if rec["status"] != "ok":
            bar.write(f"{name}: {p.desc}: {rec['status']}: {rec.get('error', '')} (log: {p.log})")


def worker_main(argv: list[str], work, command: str) -> int:
    """A bench module's ``__main__``: run as a worker, or say which command runs it (exit 2)."""
    code = worker_entry(argv, work)
    if code == -1:
        print(f"error: this module is run by `run_recbole_ssm.py bench {command}`", file=sys.stderr)
        code = 2
    return code
