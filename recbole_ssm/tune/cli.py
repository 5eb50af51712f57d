"""``python run_recbole_ssm.py tune --model=NAME --space=FILE [options] [--KEY=VALUE ...]``."""

from __future__ import annotations

import os
import sys
import time

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help

USAGE = """\
usage: run_recbole_ssm.py tune --model=NAME [--dataset=NAME] [--space=FILE] [--num_samples=N]
           [--scheduler=asha|fifo] [--search=random|grid] [--cpus_per_trial=1] [--gpus_per_trial=0]
           [--max_concurrent=N] [--address=auto|HOST:PORT|ray://HOST:PORT] [--storage=PATH]
           [--name=NAME] [--resume] [--grace_period=1] [--reduction_factor=2] [--time_budget_h=H]
           [--config_files="a.yaml b.yaml"] [--KEY=VALUE ...]

Ray Tune sweep: every trial runs the normal RecBole pipeline and reports the validation
metric after each epoch (ASHA stops poor trials early). At the end it prints all trials,
best first, and writes <storage>/<name>/trials.csv and best.yaml (use it with --config_files).
  --space           search space yaml (default properties/hyper/<model>.yaml)
  --num_samples     trials to sample (default 8); with --search=grid, repeats of the grid (default 1)
  --scheduler       asha (default: stop poor trials early) or fifo (run every trial to its end)
  --search          random (default) or grid (every combination of the space's lists)
  --cpus_per_trial  CPUs per trial (default 1; also its torch threads); --gpus_per_trial GPUs (default 0)
  --max_concurrent  trials at once (default: as many as the resources allow)
  --address         an existing Ray cluster (auto after 'ray start --head'); default: start Ray here
  --storage         folder of all runs (default ray_results); the run folder is <storage>/<name>
  --name            run folder name (default <model>_<dataset>)
  --resume          continue the sweep in <storage>/<name> (unfinished trials go on from their last epoch)
  --grace_period, --reduction_factor   ASHA: epochs before a trial may be stopped; 1/fraction kept
  --time_budget_h   wall-clock hours for the whole sweep (every call together; default: none): then a
                    trial still training ends after its epoch and is tested at its best epoch (status
                    cut), and a trial not yet started does not run (not run)
  --KEY=VALUE       any other RecBole or model setting, fixed for every trial (e.g. --epochs=10)
"""

# Every option defaults to None here ("not given": --resume compares only what was repeated);
# build_settings fills in the defaults the usage names.
OPTIONS = {
    **{k: Opt(None) for k in ("model", "dataset", "space", "address", "storage", "name", "config_files")},
    "num_samples": Opt(None, "whole", minimum=1),
    "scheduler": Opt(None, "choice", choices=("asha", "fifo")),
    "search": Opt(None, "choice", choices=("random", "grid")),
    "cpus_per_trial": Opt(None, "number", strict=True),
    "gpus_per_trial": Opt(None, "number"),
    "max_concurrent": Opt(None, "whole", minimum=1),
    "grace_period": Opt(None, "whole", minimum=1),
    "reduction_factor": Opt(None, "number", minimum=1, strict=True),
    "time_budget_h": Opt(None, "number", strict=True),
    "resume": Opt(None, "flag"),
}
DEFAULT_STORAGE = "ray_results"


def parse_args(argv: list[str]) -> tuple[dict, dict, bool]:
    """``argv`` -> (the tune options given, fixed overrides, resume)."""
    own, fixed = parse(argv, OPTIONS, "tune")
    opts = {k: v for k, v in own.items() if v is not None}
    return opts, fixed, bool(opts.pop("resume", False))


def build_settings(opts: dict, fixed: dict):
    """Validated :class:`SweepSettings` from the command line (no Ray needed)."""
    from recbole_ssm.config import DEFAULT_DATASET, PROPERTIES_DIR, merged_user_config, read_yaml
    from recbole_ssm.registry import canonical_name
    from recbole_ssm.tune.space import model_has_properties, parse_space
    from recbole_ssm.tune.sweep import SweepSettings

    model = opts.get("model")
    if not model:
        raise UsageError("no model given: pass --model=NAME (e.g. --model=Hydra4Rec or --model=SASRec)")
    model = canonical_name(model)
    if not model_has_properties(model):
        raise UsageError(
            f"unknown model {model!r}: no property file names its settings "
            f"(properties/model/{model}.yaml or RecBole's); check --model"
        )
    if fixed.get("nproc", 1) != 1:
        # a trial reports each epoch from its own process (ASHA needs it); ranks in other processes cannot
        raise UsageError("--nproc is not available in a sweep: each trial is one process (use --cpus_per_trial "
                         "for its threads, and run trials side by side)")
    files = [os.path.abspath(p) for p in (opts.get("config_files") or "").split()]
    dataset = opts.get("dataset") or merged_user_config(files, None).get("dataset") or DEFAULT_DATASET
    space_file = opts.get("space") or os.path.join(PROPERTIES_DIR, "hyper", f"{model}.yaml")
    if not os.path.isfile(space_file):
        raise UsageError(f"space file not found: {space_file} (pass --space=FILE; see properties/hyper/)")
    space = read_yaml(space_file)
    parse_space(space, model, dataset, source=f"space file {space_file}")
    overlap = [k for k in space if k in fixed]
    if overlap:
        keys = ", ".join(overlap)
        print(f"note: {keys} fixed on the command line; not searched", file=sys.stderr)
        space = {k: v for k, v in space.items() if k not in fixed}
        if not space:
            raise UsageError(f"every key of {space_file} is fixed on the command line: nothing to search")
    search = opts.get("search", "random")
    if "data_path" in fixed and isinstance(fixed["data_path"], str):
        fixed = {**fixed, "data_path": os.path.abspath(fixed["data_path"])}
    return SweepSettings(
        model=model,
        dataset=dataset,
        space=space,
        space_file=os.path.abspath(space_file),
        num_samples=opts.get("num_samples", 1 if search == "grid" else 8),
        scheduler=opts.get("scheduler", "asha"),
        search=search,
        cpus_per_trial=float(opts.get("cpus_per_trial", 1.0)),
        gpus_per_trial=float(opts.get("gpus_per_trial", 0.0)),
        max_concurrent=opts.get("max_concurrent"),
        grace_period=opts.get("grace_period", 1),
        reduction_factor=float(opts.get("reduction_factor", 2.0)),
        time_budget_h=opts.get("time_budget_h"),
        config_files=files,
        fixed=fixed,
    )


def _trial_fixed(settings, dataset_embedded: bool) -> dict:
    """Fixed settings as trials see them: trials run in their own folders, so paths are absolute."""
    fixed = dict(settings.fixed)
    if "data_path" not in fixed and not dataset_embedded:
        fixed["data_path"] = os.path.abspath("dataset/")
    return fixed


RESUME_NAMES = {"space": "the search space", "fixed": "the fixed --KEY=VALUE settings",
                "config_files": "--config_files"}


def _check_resume(stored, given, opts: dict, fixed: dict, run_dir: str) -> None:
    """The options repeated with ``--resume`` must match the stored sweep (the rest is read from it)."""
    for key in stored.FIXED_ON_RESUME:
        repeated = bool(fixed) if key == "fixed" else key in opts
        if repeated and getattr(stored, key) != getattr(given, key):
            what = RESUME_NAMES.get(key, f"--{key}")
            raise UsageError(
                f"--resume: {what} not as in the sweep stored in {run_dir}; "
                "repeat the original options (or only --resume with --storage/--name)"
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``run_recbole_ssm.py tune``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    from recbole_ssm.config import EMBEDDED_DATASETS
    from recbole_ssm.tune.sweep import SETTINGS_FILE, SweepSettings, can_restore, check_address

    opts, fixed, resume = parse_args(argv)
    if opts.get("address"):
        check_address(str(opts["address"]))  # an unreachable cluster fails first, within seconds
    storage = os.path.abspath(opts.get("storage") or DEFAULT_STORAGE)
    given = build_settings(opts, fixed) if (opts.get("model") or not resume) else None
    name = opts.get("name") or (f"{given.model}_{given.dataset}" if given else None)
    if not name:
        raise UsageError("--resume needs --name=NAME (or the original --model/--dataset) to find its folder")
    if os.sep in name or name in (".", ".."):
        raise UsageError(f"--name={name!r} must be a plain folder name")
    run_dir = os.path.join(storage, name)
    settings_path = os.path.join(run_dir, SETTINGS_FILE)
    if resume:
        if not os.path.isfile(settings_path) or not can_restore(run_dir):
            raise UsageError(f"--resume: no sweep to continue in {run_dir}; check --storage/--name")
        settings = SweepSettings.from_yaml(settings_path)
        if given is not None:
            _check_resume(settings, given, opts, fixed, run_dir)
        elif fixed or set(opts) - {"storage", "name", "address"}:
            raise UsageError(
                f"--resume reads the sweep's settings from {settings_path}; pass only --storage, --name "
                "and --address, or repeat the original command with --resume"
            )
    else:
        if can_restore(run_dir):
            raise UsageError(
                f"run folder {run_dir} already holds a sweep: add --resume to continue it, "
                "or pick another --name/--storage"
            )
        settings = given
    return run(settings, storage, name, resume, opts.get("address"),
               dataset_embedded=settings.dataset in EMBEDDED_DATASETS)


def run(settings, storage: str, name: str, resume: bool, address: str | None, dataset_embedded: bool) -> int:
    """Run the sweep and write its results; returns the exit code."""
    import ray

    from recbole_ssm.tune import report
    from recbole_ssm.tune.sweep import (
        SETTINGS_FILE,
        RayTempDir,
        init_ray,
        resolve,
        run_tuner,
        trial_states,
    )
    from recbole_ssm.utils import atomic_write_text

    info = resolve(settings)  # unknown model, dataset or setting: fails before Ray starts
    run_dir = os.path.join(storage, name)
    os.makedirs(run_dir, exist_ok=True)
    if not resume:
        atomic_write_text(os.path.join(run_dir, SETTINGS_FILE), settings.to_yaml())
    t0 = time.perf_counter()
    deadline = None
    if settings.time_budget_h is not None:
        left = settings.time_budget_h * 3600 - _wall_clock_so_far(run_dir)
        deadline = time.time() + left
        print(f"time budget: {settings.time_budget_h:g} h, {max(left, 0) / 3600:.2f} h left", file=sys.stderr)
    temp = RayTempDir(run_dir)
    with temp as temp_dir:
        try:
            init_ray(address, None if address else temp_dir, run_dir)
            grid = run_tuner(settings, info, _trial_fixed(settings, dataset_embedded), storage, name, resume,
                             deadline)
        finally:
            ray.shutdown()
    elapsed = _add_wall_clock(run_dir, time.perf_counter() - t0)

    results = report.rows_from_results(grid, list(settings.space), *trial_states(grid, run_dir))
    rows = report.sort_rows(results, info.bigger)
    counts = _write_trials(rows, info, run_dir, elapsed)
    best = report.best_row(rows, info.bigger)
    if best is None:
        if counts.get(report.UNFINISHED_S):
            return _interrupted(counts, storage, name)
        print(f"error: every trial failed; see error.txt in the trial folders under {run_dir}",
              file=sys.stderr)
        return 1
    _write_best(best, settings, info, run_dir, name, dataset_embedded)
    _write_best_seen_out(report.best_row_seen_out(rows, info.valid_metric, info.bigger), best, settings, info,
                         run_dir, name, dataset_embedded)
    return _interrupted(counts, storage, name)


WALL_CLOCK_FILE = "wall_clock.json"


def _wall_clock_calls(run_dir: str) -> list[dict]:
    """The calls recorded in the sweep's ``wall_clock.json`` (none for a new sweep)."""
    import json

    path = os.path.join(run_dir, WALL_CLOCK_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("calls", [])


def _wall_clock_so_far(run_dir: str) -> float:
    """Seconds the sweep in ``run_dir`` has run in its earlier calls (0 for a new one)."""
    return sum(float(c["seconds"]) for c in _wall_clock_calls(run_dir))


def _add_wall_clock(run_dir: str, seconds: float) -> float:
    """Add this call's wall clock to the sweep's (``wall_clock.json``: one entry per call, so a
    sweep resumed over several calls has its whole time); returns the total."""
    import json
    from datetime import datetime, timezone

    from recbole_ssm.utils import atomic_write_text

    calls = _wall_clock_calls(run_dir)
    calls.append({"ended": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 1)})
    total = sum(float(c["seconds"]) for c in calls)
    text = json.dumps({"total_seconds": round(total, 1), "calls": calls}, indent=1) + "\n"
    atomic_write_text(os.path.join(run_dir, WALL_CLOCK_FILE), text)
    return total


def _write_trials(rows, info, run_dir: str, elapsed: float) -> dict:
    """trials.csv and the printed table; returns the number of trials in each status."""
    from recbole_ssm.tune import report

    frame = report.to_frame(rows, info.valid_metric)
    csv_path = os.path.join(run_dir, "trials.csv")
    report.write_csv(frame, csv_path)
    counts = {s: sum(r.status == s for r in rows) for s in report.STATUSES}
    print(report.format_table(frame))
    print(f"{len(rows)} trials in {elapsed:.0f}s ({elapsed / 3600:.2f} h, every call of this sweep together): "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    print(f"table: {csv_path}")
    return counts


def _best_yaml(row, settings, info, path: str, dataset_embedded: bool, header: str) -> str:
    """Write ``row``'s settings to ``path`` (ready for --config_files); returns the command that reruns it."""
    from recbole_ssm.config import merged_user_config
    from recbole_ssm.tune import report

    base = merged_user_config(settings.config_files, None)
    fixed = _trial_fixed(settings, dataset_embedded)
    config = report.best_config(base, fixed, row.params, settings.model, settings.dataset,
                                info.seed, info.reproducibility)
    rerun = (f"python run_recbole_ssm.py --model={settings.model} --dataset={settings.dataset} "
             f"--config_files={path}")
    report.write_best_yaml(path, config, f"{header}\n{rerun}")
    return rerun


def _write_best(best, settings, info, run_dir: str, name: str, dataset_embedded: bool) -> None:
    """best.yaml (the best trial's settings, ready for --config_files) and its summary lines."""
    best_path = os.path.join(run_dir, "best.yaml")
    header = (f"Best trial {best.trial} of sweep {name}: valid {info.valid_metric}={best.best_valid:.6g} "
              f"(best of its {best.epochs} epochs).")
    rerun = _best_yaml(best, settings, info, best_path, dataset_embedded, header)
    print(f"best: trial {best.trial}, valid {info.valid_metric}={best.best_valid:.6g}; config: {best_path}")
    if best.test:
        print(f"best test: {_metrics_line(best.test)}")
        if best.test_seen_out:
            print(f"best test, history left out: {_metrics_line(best.test_seen_out)}")
    else:
        print(f"best test: not evaluated (the trial was {best.status}); run {rerun}")


def _write_best_seen_out(chosen, best, settings, info, run_dir: str, name: str, dataset_embedded: bool) -> None:
    """The choice by the validation metric with each user's history left out of the ranking: the
    same trial as best.yaml, or best_history_left_out.yaml."""
    if chosen is None:
        return
    score = chosen.valid_seen_out[info.valid_metric]
    if chosen.trial == best.trial:
        print(f"with the history left out the same trial is best: valid {info.valid_metric}={score:.6g}")
        return
    path = os.path.join(run_dir, "best_history_left_out.yaml")
    header = (f"Best trial {chosen.trial} of sweep {name} by valid {info.valid_metric} with each user's history "
              f"left out of the ranking: {score:.6g} (at its best epoch by RecBole's ranking).")
    _best_yaml(chosen, settings, info, path, dataset_embedded, header)
    print(f"best with the history left out: trial {chosen.trial}, valid {info.valid_metric}={score:.6g}; "
          f"config: {path}")
    print(f"its test, history left out: {_metrics_line(chosen.test_seen_out)}")


def _metrics_line(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _interrupted(counts: dict, storage: str, name: str) -> int:
    """Exit code: 130 (and how to go on) when the sweep was interrupted with trials left."""
    from recbole_ssm.tune.report import UNFINISHED_S

    if not counts.get(UNFINISHED_S):
        return 0
    print(f"error: interrupted with {counts[UNFINISHED_S]} trials unfinished; continue with: "
          f"python run_recbole_ssm.py tune --resume --storage={storage} --name={name}", file=sys.stderr)
    return 130
