"""The end of a sweep: the trial table (printed and ``trials.csv``) and ``best.yaml``."""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

from recbole_ssm.tune.trainable import BEST_VALID, CUT, EPOCHS_TRAINED, FINISHED, NOT_RUN, SEEN_OUT, native
from recbole_ssm.utils import atomic_write_text

FINISHED_S, STOPPED_S, FAILED_S, UNFINISHED_S = "finished", "stopped", "failed", "unfinished"
CUT_S, NOT_RUN_S = "cut", "not run"  # the sweep's time budget: ended after an epoch (and tested), never started
STATUSES = (FINISHED_S, CUT_S, STOPPED_S, FAILED_S, UNFINISHED_S, NOT_RUN_S)
TESTED = (FINISHED_S, CUT_S)  # statuses of trials tested at their best epoch
HISTORY_OUT = "(history left out)"  # column suffix of the metrics with each user's history left out


@dataclass
class TrialRow:
    """One trial as the table shows it."""

    trial: str
    # finished | cut (by the time budget, then tested) | stopped (by the scheduler) | failed
    # | unfinished (sweep interrupted) | not run (the time budget ended first)
    status: str
    epochs: int
    best_valid: float | None
    params: dict
    valid: dict = field(default_factory=dict)  # metric -> value (best epoch, when finished)
    test: dict = field(default_factory=dict)  # metric -> value (finished trials)
    # the same checkpoint with each user's history left out of the ranking (finished trials)
    valid_seen_out: dict = field(default_factory=dict)
    test_seen_out: dict = field(default_factory=dict)
    error: str = ""
    path: str = ""


def _error_line(error: Any) -> str:
    text = str(error).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Tune wraps the trial's traceback; its last line names the real exception.
    return lines[-1] if lines else type(error).__name__


def rows_from_results(results: Iterable[Any], space_keys: list[str], configs: list[dict] | None = None,
                      tune_status: list[str] | None = None) -> list[TrialRow]:
    """Rows from Ray Tune ``Result`` objects (only their in-memory fields).

    ``configs`` and ``tune_status``, where given, are the trials' sampled settings and Tune
    statuses in the same order (a trial that never reported has no config in its Result; an
    interrupted sweep leaves its running and waiting trials PENDING).
    """
    rows = []
    for i, r in enumerate(results):
        metrics = dict(r.metrics or {})
        config = native(dict((configs[i] if configs else None) or r.config or {}))
        trial = str(metrics.get("trial_id") or os.path.basename(str(getattr(r, "path", "") or "")))
        best = metrics.get(BEST_VALID)
        best = float(best) if best is not None and not math.isnan(float(best)) else None
        state = tune_status[i] if tune_status else None
        if r.error is not None or state == "ERROR":
            status = FAILED_S
        elif metrics.get(FINISHED):
            status = CUT_S if metrics.get(CUT) else FINISHED_S
        elif metrics.get(NOT_RUN):
            status = NOT_RUN_S
        elif state in (None, "TERMINATED"):
            status = STOPPED_S
        else:
            status = UNFINISHED_S
        rows.append(TrialRow(
            trial=trial,
            status=status,
            epochs=int(metrics.get(EPOCHS_TRAINED, 0) or 0),
            best_valid=best,
            params={k: config.get(k) for k in space_keys},
            valid=_prefixed(metrics, "valid/"),
            test=_prefixed(metrics, "test/"),
            valid_seen_out=_prefixed(metrics, f"valid{SEEN_OUT}/"),
            test_seen_out=_prefixed(metrics, f"test{SEEN_OUT}/"),
            error=_error_line(r.error) if r.error is not None else ("see error.txt" if state == "ERROR" else ""),
            path=str(getattr(r, "path", "") or ""),
        ))
    return rows


def _prefixed(metrics: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def sort_rows(rows: list[TrialRow], bigger: bool) -> list[TrialRow]:
    """Best validation first; trials without a score (failed before any epoch) last."""
    def key(row: TrialRow):
        if row.best_valid is None:
            return (1, 0.0)
        return (0, -row.best_valid if bigger else row.best_valid)

    return sorted(rows, key=key)


def best_row(rows: list[TrialRow], bigger: bool) -> TrialRow | None:
    scored = [r for r in sort_rows(rows, bigger) if r.best_valid is not None and r.status != FAILED_S]
    return scored[0] if scored else None


def best_row_seen_out(rows: list[TrialRow], valid_metric: str, bigger: bool) -> TrialRow | None:
    """The tested trial (finished, or cut by the time budget) whose best-epoch checkpoint scores best
    on the validation split with the history left out (trials stopped early have no such score;
    ``None`` when no trial has one)."""
    scored = [r for r in rows if r.status in TESTED and r.valid_seen_out.get(valid_metric) is not None]
    if not scored:
        return None
    sign = -1.0 if bigger else 1.0
    return min(scored, key=lambda r: sign * float(r.valid_seen_out[valid_metric]))


def to_frame(rows: list[TrialRow], valid_metric: str):
    """A pandas DataFrame of the sorted rows (one column per parameter and test metric; the
    validation metric and the test metrics with the history left out where trials have them)."""
    import pandas as pd

    test_keys: list[str] = []
    seen_out_keys: list[str] = []
    for r in rows:
        test_keys += [k for k in r.test if k not in test_keys]
        seen_out_keys += [k for k in r.test_seen_out if k not in seen_out_keys]
    seen_out = any(valid_metric in r.valid_seen_out for r in rows)
    records = []
    for rank, r in enumerate(rows, 1):
        rec: dict[str, Any] = {"rank": rank, "trial": r.trial, "status": r.status, "epochs": r.epochs,
                               f"valid {valid_metric}": math.nan if r.best_valid is None else r.best_valid}
        rec.update({f"test {k}": r.test.get(k) for k in test_keys})
        if seen_out:
            rec[f"valid {valid_metric} {HISTORY_OUT}"] = r.valid_seen_out.get(valid_metric)
        rec.update({f"test {k} {HISTORY_OUT}": r.test_seen_out.get(k) for k in seen_out_keys})
        rec.update(r.params)
        rec["error"] = r.error
        records.append(rec)
    return pd.DataFrame.from_records(records)


def format_table(frame) -> str:
    def fmt(x: Any) -> str:
        return f"{x:.6g}" if isinstance(x, float) else str(x)

    shown = frame.copy()
    if not shown["error"].astype(bool).any():
        shown = shown.drop(columns=["error"])
    return shown.to_string(index=False, na_rep="-", float_format=lambda x: fmt(float(x)))


def write_csv(frame, path: str) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def best_config(base: dict, fixed: dict, params: dict, model: str, dataset: str, seed: int,
                reproducibility: bool) -> dict:
    """Settings that rerun the best trial: model, dataset, the config files' and fixed settings,
    the sampled values, and the seed."""
    return {"model": model, "dataset": dataset, **base, **fixed, **native(params),
            "seed": seed, "reproducibility": reproducibility}


def write_best_yaml(path: str, config: dict, header: str) -> None:
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comment + body)
