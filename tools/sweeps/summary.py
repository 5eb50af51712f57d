"""The sweeps' table for docs/results.md, from the files tools/sweeps/run.sh keeps.

    python tools/sweeps/summary.py [results/sweeps]

One row per sweep folder (``<dataset>-<model>/`` with ``trials.csv``, ``sweep.yaml`` and
``wall_clock.json``): trials by status, wall-clock hours, the best trial by RecBole's ranking on
the validation split with its settings and test metrics under both protocols, and the best trial
by the validation metric with the history left out where that is another trial.
"""

from __future__ import annotations

import csv
import json
import os
import sys

import yaml

from recbole_ssm.tune.report import HISTORY_OUT as OUT
from recbole_ssm.tune.report import STATUSES


def _num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _settings(row: dict, keys: list[str]) -> str:
    parts = []
    for k in keys:
        v = _num(row.get(k))
        parts.append(f"{k}={row.get(k)}" if v is None else f"{k}={v:.3g}")
    return ", ".join(parts)


def sweep_row(folder: str) -> str | None:
    trials_path = os.path.join(folder, "trials.csv")
    if not os.path.isfile(trials_path):
        return None
    with open(trials_path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(folder, "sweep.yaml"), encoding="utf-8") as f:
        sweep = yaml.safe_load(f)
    hours = None
    clock = os.path.join(folder, "wall_clock.json")
    if os.path.isfile(clock):
        with open(clock, encoding="utf-8") as f:
            hours = json.load(f)["total_seconds"] / 3600
    keys = list(sweep["space"])
    metric = next(k for k in rows[0] if k.startswith("valid ") and OUT not in k)  # "valid ndcg@10"
    name = metric[len("valid "):]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    scored = [r for r in rows if _num(r[metric]) is not None and r["status"] != "failed"]
    best = scored[0] if scored else None  # trials.csv is sorted, best first
    seen_col = f"{metric} {OUT}"
    finished = [r for r in rows if r["status"] == "finished" and _num(r.get(seen_col)) is not None]
    best_out = max(finished, key=lambda r: _num(r[seen_col])) if finished else None

    def test(r: dict, suffix: str = "") -> str:
        v = _num(r.get(f"test {name}{suffix}")) if r else None
        return "-" if v is None else f"{v:.4f}"

    status = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    cells = [os.path.basename(folder), f"{len(rows)} ({status})", "-" if hours is None else f"{hours:.1f}"]
    if best is None:
        cells += ["-"] * 5
    else:
        cells += [_settings(best, keys), f"{_num(best[metric]):.4f}", test(best), test(best, f" {OUT}")]
        if best_out is None or best_out["trial"] == best["trial"]:
            cells.append("same trial")
        else:
            cells.append(f"{_settings(best_out, keys)}: valid {_num(best_out[seen_col]):.4f}, "
                         f"test {test(best_out, f' {OUT}')}")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    root = argv[0] if argv else "results/sweeps"
    if not os.path.isdir(root):
        print(f"error: no folder {root}; run tools/sweeps/run.sh first", file=sys.stderr)
        return 2
    print("| Sweep | Trials | Hours | Best by the validation metric (RecBole's ranking) | Valid | Test | "
          "Test, history left out | Best by valid with the history left out |")
    print("|---|---|---|---|---|---|---|---|")
    for entry in sorted(os.listdir(root)):
        line = sweep_row(os.path.join(root, entry))
        if line:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
