"""What bench reports are made of: statistics, table cells, markdown and csv, the machine line, plots."""

from __future__ import annotations

import collections
import math
import os
import statistics
import sys
from typing import Any, Iterable


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


def is_missing(value: Any) -> bool:
    """None or NaN: a value a record does not have (an older record, a failed point)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def decimals(value: float) -> int:
    """Decimals that show about three significant digits of ``value`` (times, memory, ratios)."""
    size = abs(value)
    if 0 < size < 1:
        return max(3, 2 - math.floor(math.log10(size)))
    return 2 if size < 10 else (1 if size < 100 else 0)


def cell(value: Any, std: float | None = None, digits: int | None = None) -> str:
    """One table cell, in the one format of every bench report: "-" for a missing value; ``value``
    to ``digits`` decimals (None: about three significant digits, for times and memory); then
    "± std" to as many decimals when ``std`` is given (a mean over seeds)."""
    if is_missing(value):
        return "-"
    places = decimals(value) if digits is None else digits
    text = f"{value:.{places}f}"
    return text if std is None or is_missing(std) else f"{text} ± {std:.{places}f}"


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


def save_png(fig, path: str) -> None:
    """Write a matplotlib figure to ``path`` whole or not at all (a temp file, then a rename) and
    close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
