"""What ``bench table`` and ``bench efficiency`` share: model specs, workers, memory, tables.

Every measured point (a trained (model, seed) or a (model, length) efficiency point) runs in
its own Python process, so its peak memory is its own, a crash or an out-of-memory is one
failed point, and a finished point is a JSON record on disk that a later run reuses.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

from recbole_ssm.errors import UsageError
from recbole_ssm.utils import atomic_write_text

_SPEC_KEY = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class ModelSpec:
    """A model name plus per-model settings, written ``NAME`` or ``NAME:key=value:key=value``.

    ``SASRec:n_layers=1`` is SASRec with one layer; its label (the row name) is the spec as typed.
    """

    label: str
    name: str
    overrides: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def canonical(self) -> str:
        from recbole_ssm.registry import canonical_name

        return canonical_name(self.name)


def parse_model_specs(text: str | None) -> list[ModelSpec]:
    """``"SASRec,SASRec:n_layers=1,Mamba4Rec"`` -> specs; unknown models raise the registry's error."""
    from recbole_ssm.config import parse_value
    from recbole_ssm.registry import get_model

    if not text or not isinstance(text, str):
        raise UsageError("--models takes a comma-separated list, e.g. --models=SASRec,Mamba4Rec")
    specs: list[ModelSpec] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"empty model name in --models={text!r}")
        name, *pairs = item.split(":")
        overrides = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not _SPEC_KEY.fullmatch(key):
                raise UsageError(f"malformed model spec {item!r}: expected NAME or NAME:key=value[:key=value]")
            overrides[key] = parse_value(value)
        get_model(name)  # unknown model -> the registry's one-line error
        if any(s.label == item for s in specs):
            raise UsageError(f"model {item!r} is listed twice in --models")
        specs.append(ModelSpec(item, name, overrides))
    return specs


def fingerprint(settings: dict) -> str:
    """A short hash of the settings a record was measured with (resume only reuses equal ones)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Settings that, at these values, behave as the package did before they existed: a property file
# that adds one at its neutral value keeps its digest, so the records measured before still count.
NEUTRAL_SETTINGS = {"ce_negatives": 0, "ce_negative_sampler": "uniform", "eval_score_chunks": True}


def without_neutral(mapping):
    """``mapping`` less the keys of :data:`NEUTRAL_SETTINGS` that hold their neutral value."""
    if not isinstance(mapping, dict):
        return mapping
    return {k: v for k, v in mapping.items() if not (k in NEUTRAL_SETTINGS and v == NEUTRAL_SETTINGS[k])}


def settings_files_digest(model_name: str, dataset: str, files: Iterable[str] = ()) -> dict:
    """``{file: sha256 prefix}`` of the property and config files a run reads.

    Part of every record's fingerprint: after a change of a model's defaults (e.g. in
    properties/model/NAME.yaml) old records are no longer reused. What is hashed is the mapping
    a file holds, not its bytes, so comments, blank lines and key order do not count.
    """
    from recbole_ssm.config import property_files
    from recbole_ssm.registry import canonical_name

    out = {}
    for path in [*property_files(canonical_name(model_name), dataset), *files]:
        key = os.path.basename(path) if path not in files else os.path.abspath(path)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError:
            out[key] = "missing"
            continue
        try:
            text = json.dumps(without_neutral(yaml.safe_load(raw)), sort_keys=True, default=str)
        except yaml.YAMLError:  # not YAML: its bytes
            text = raw.hex()
        out[key] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def record_name(*parts: Any) -> str:
    """File-system-safe name for a record."""
    text = "-".join(str(p) for p in parts)
    return re.sub(r"[^\w.=\-]+", "_", text) + ".json"


def read_record(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_record(path: str, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------------------
# worker processes


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


# ---------------------------------------------------------------------------------------
# memory


def status_kib(field_name: str, pid: int | str = "self") -> int | None:
    """A memory field of /proc/PID/status (VmRSS, VmHWM, ...) in KiB; None where there is none."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so a region's new allocations show in RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class CpuPeakMemory:
    """Peak resident memory of a code region above the resident memory when it started (MiB).

    On Linux the kernel's peak-RSS mark (VmHWM) is reset through ``/proc/self/clear_refs``
    before the region (after returning freed heap memory to the OS with ``malloc_trim``), so
    the peak is the region's own; where that is not possible, the
    process peak (``getrusage`` ru_maxrss) is used, which can only overstate the baseline and
    thus understate the region (``method`` says which was used).
    """

    def __init__(self) -> None:
        self.method = "VmHWM reset"
        self.baseline_kib = 0
        self.peak_kib = 0

    def __enter__(self) -> CpuPeakMemory:
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
        except OSError:
            self.method = "ru_maxrss"
        self.baseline_kib = status_kib("VmRSS") or 0
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "VmHWM reset":
            self.peak_kib = status_kib("VmHWM") or 0
        else:
            import resource

            self.peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @property
    def mib(self) -> float:
        return max(0, self.peak_kib - self.baseline_kib) / 1024.0


def process_peak_rss_mib() -> float:
    """Peak resident memory of this process since it started (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------
# statistics and tables


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN for none."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; numbers should already be strings."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in cells[1:]:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(out) + "\n"


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux: ``model name`` in /proc/cpuinfo), else platform's, else "?".

    Part of every benchmark's machine line: hosts of one kind can differ in CPU from day to day,
    and absolute times are only comparable on the same CPU."""
    import platform

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or "?"


def runs_line(records: list[dict], noun: str = "runs") -> str:
    """What a report says of the runs behind it: their torch threads and the CPU each ran on (a run
    record's ``cpu``, the host's when the run finished; "not recorded" for records older than it).

    A table's machine line names the host that wrote it; finished runs are reused across sessions,
    and hosts of one kind can differ in CPU from day to day."""
    threads = sorted({str(r.get("torch_threads", "?")) for r in records}) or ["?"]
    cpus = collections.Counter(r.get("cpu") or "not recorded" for r in records)
    on = "; ".join(f"{cpu} ({n} {noun[:-1] if n == 1 else noun})" for cpu, n in sorted(cpus.items()))
    return f"{noun} used {' and '.join(threads)} torch threads" + (f"; CPU of the {noun}: {on}" if on else "")


def machine_line() -> str:
    """One line naming the machine: OS, CPU model and cores, memory, torch version, threads, GPU."""
    import platform

    import torch

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem_text = f"{mem:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        mem_text = "? GiB"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {cpu_model()}, {os.cpu_count()} CPU cores, {mem_text}, {gpu}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def progress(iterable, total: int, desc: str, enabled: bool = True):
    """A tqdm progress bar on stderr (RecBole depends on tqdm)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                leave=True)


# ---------------------------------------------------------------------------------------
# the measuring loop every bench command runs


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
    import datetime

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


def save_png(fig, path: str) -> None:
    """Write a matplotlib figure to ``path`` whole or not at all (a temp file, then a rename) and
    close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
