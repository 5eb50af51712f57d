"""``bench regimes``: training epoch time and memory of ``train_targets: last`` against the
window regime of each model: ``all`` for the causal ones and the one-layer Hydra4Rec, ``cloze`` for
BERT4Rec and a deeper Hydra4Rec.

Each (model, regime) point runs in its own process on the real data set: RecBole's data
pipeline, the regime's training loader, the model and an Adam optimizer, then timed training
steps (loading the batch, forward, backward, optimizer step) over the start of an epoch.
``--batches=N`` times N steps after one warm-up step and extrapolates to the epoch (mean step
time x steps per epoch); ``--batches=0`` times the whole epoch. Peak memory is the resident
memory of the timed steps above what the process held before them. Finished points are kept
in ``OUTPUT/runs/`` and reused by a later call with the same settings.
"""

from __future__ import annotations

import functools
import os
import sys
import time

from recbole_ssm.bench.memory import CpuPeakMemory
from recbole_ssm.bench.records import fingerprint, parse_model_specs, record_name, settings_files_digest
from recbole_ssm.bench.report import cpu_model, csv_text, machine_line, markdown_table, runs_line
from recbole_ssm.bench.workers import Point, exit_on_sigterm, measure_points, reuse_or_schedule, worker_main
from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help
from recbole_ssm.utils import atomic_write_text

USAGE = """\
usage: run_recbole_ssm.py bench regimes --models=A,B [--dataset=ml-100k] [--batches=5] [--threads=0]
           [--regimes=both|last|windows] [--memory_limit_gb=0] [--output=DIR] [--timeout=SECONDS]
           [--overwrite] [--KEY=VALUE ...]

Times training under train_targets=last (RecBole's one sample per prefix) and under the model's
window regime (all: whole history windows, a target at every position; cloze for BERT4Rec and
Hydra4Rec with more than one layer: the same windows, masked items as targets) for each model
on the real data set, in separate processes of one run, and writes DIR/regimes.md and DIR/regimes.csv (default DIR:
results/regimes/<dataset>/) with the ratio of the epochs per model. --batches=N times N training
steps after a warm-up step and extrapolates to the epoch; --batches=0 times whole epochs.
--regimes=windows measures only the window regimes (e.g. long histories, where an epoch of
prefixes is out of reach). --memory_limit_gb=G caps each point's address space: a point that
needs more is recorded as OOM (e.g. SASRec at a length where attention no longer fits).
"""

OPTIONS = {
    "models": Opt(None), "dataset": Opt("ml-100k"), "batches": Opt(5, "whole"), "threads": Opt(0, "whole"),
    "output": Opt(None), "timeout": Opt(0, "number"), "overwrite": Opt(False, "flag"), "progress": Opt(True, "flag"),
    "regimes": Opt("both", "choice", choices=("both", "last", "windows")), "memory_limit_gb": Opt(0, "number"),
}


def window_regime(name: str, settings: dict) -> str:
    """The model's one-pass-per-window regime: ``all`` where it trains every prefix with these
    settings (the causal models, the one-layer Hydra4Rec), else ``cloze`` where it has that
    (BERT4Rec, a deeper Hydra4Rec), else ``all`` (whose config error then names the fix)."""
    from recbole_ssm.registry import get_model
    from recbole_ssm.targets import supported_targets, trains_every_prefix

    cls = get_model(name)
    targets = supported_targets(cls)
    if "all" in targets and trains_every_prefix(settings, cls):
        return "all"
    return "cloze" if "cloze" in targets else "all"


def regimes_of(window: str, which: str = "both") -> tuple[str, ...]:
    """("last", the window regime), or one of them (``which``: both, last or windows)."""
    both = ("last", window)
    return {"both": both, "last": both[:1], "windows": both[1:]}[which]


def data_setup(model_name: str, dataset: str, settings: dict):
    """RecBole's data pipeline for ``settings`` (``train_targets`` among them). Returns (config, model
    class, (train, valid, test) loaders, seconds spent on the data)."""
    from recbole.utils import init_seed

    from recbole_ssm import compat
    from recbole_ssm.quick_start import build_config
    from recbole_ssm.regime import create_dataset, prepare_data

    config, model_class = build_config(model_name, dataset, [], settings)
    init_seed(config["seed"], config["reproducibility"])
    t0 = time.perf_counter()
    with compat.quiet_recbole():
        loaders = prepare_data(config, create_dataset(config))
    return config, model_class, loaders, time.perf_counter() - t0


def training_setup(model_name: str, dataset: str, settings: dict):
    """RecBole's data pipeline for ``settings`` (``train_targets`` among them), the regime's training
    loader, the model in train mode and Adam. Returns (loader, model, optimizer, seconds spent on
    the data)."""
    import torch

    config, model_class, (train, _valid, _test), data_s = data_setup(model_name, dataset, settings)
    model = model_class(config, train._dataset)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    model.train()
    return train, model, optimizer, data_s


def train_step(model, optimizer, batch) -> None:
    """One optimizer step on ``batch``."""
    optimizer.zero_grad(set_to_none=True)
    model.calculate_loss(batch).backward()
    optimizer.step()


def _work(spec: dict) -> dict:
    """Time one (model, regime) point in this process; return its record."""
    import logging

    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    logging.disable(logging.WARNING)
    settings = {**spec["overrides"], "train_targets": spec["regime"]}
    train, model, optimizer, data_s = training_setup(spec["model"], spec["dataset"], settings)
    steps = len(train)
    limit = spec["batches"] + 1 if spec["batches"] else steps  # + the warm-up step

    times, mem = _timed_steps(functools.partial(train_step, model, optimizer), iter(train), limit)
    measured = len(times)
    step_s = sum(times) / measured if measured else float("nan")
    return {
        "status": "ok",
        "steps_per_epoch": steps,
        "steps_timed": measured,
        "step_s": step_s,
        # the warm-up step is not timed: the epoch estimate counts it at the mean step time
        "epoch_s": step_s * steps,
        "extrapolated": measured < steps - 1,
        "peak_mib": mem.mib,
        "peak_method": mem.method,
        "data_s": data_s,
        "targets_per_epoch": int(getattr(train, "n_targets", len(train._dataset))),
        "samples_per_epoch": int(getattr(train, "sample_size", len(train._dataset))),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
    }


def _timed_steps(step, batches, limit: int) -> tuple[list[float], CpuPeakMemory]:
    """One untimed warm-up step (optimizer state, CPU kernels), then up to ``limit - 1`` timed ones."""
    times: list[float] = []
    step(next(batches))
    with CpuPeakMemory() as mem:
        t = time.perf_counter()
        for i, batch in enumerate(batches, start=1):
            step(batch)
            now = time.perf_counter()
            times.append(now - t)
            t = now
            if i + 1 >= limit:
                break
    return times, mem


def _rows(specs, records, windows) -> tuple[list[str], list[list], list[str], list[list]]:
    md_header = ["Model", "Regime", "Samples/epoch", "Targets/epoch", "Steps/epoch", "Step (s)", "Epoch (s)",
                 "Train peak (MiB)", "Epoch last/windows"]
    csv_header = ["model", "regime", "samples_per_epoch", "targets_per_epoch", "steps_per_epoch", "steps_timed",
                  "step_s", "epoch_s", "extrapolated", "peak_mib", "epoch_ratio_last_all"]
    md_rows, csv_rows = [], []
    for spec in specs:
        regimes = regimes_of(windows[spec.label])
        last, every = records.get((spec.label, "last"), {}), records.get((spec.label, regimes[1]), {})
        ok = last.get("status") == "ok" and every.get("status") == "ok"
        ratio = last["epoch_s"] / every["epoch_s"] if ok else None
        for regime in regimes:
            r = records.get((spec.label, regime))
            if r is None:
                continue
            if r.get("status") != "ok":
                md_rows.append([spec.label, regime] + [r.get("status")] + ["-"] * 6)
                csv_rows.append([spec.label, regime] + [""] * 9)
                continue
            est = "~" if r["extrapolated"] else ""
            epoch = f"{r['epoch_s']:.0f}" if r["epoch_s"] >= 100 else f"{r['epoch_s']:.1f}"
            md_rows.append([spec.label, regime, r["samples_per_epoch"], r["targets_per_epoch"], r["steps_per_epoch"],
                            f"{r['step_s']:.3f}", est + epoch, f"{r['peak_mib']:.0f}",
                            f"{ratio:.1f}x" if ratio and regime != "last" else ""])
            csv_rows.append([spec.label, regime, r["samples_per_epoch"], r["targets_per_epoch"], r["steps_per_epoch"],
                             r["steps_timed"], f"{r['step_s']:.6g}", f"{r['epoch_s']:.6g}", r["extrapolated"],
                             f"{r['peak_mib']:.6g}", f"{ratio:.6g}" if ratio else ""])
    return md_header, md_rows, csv_header, csv_rows


WINDOW_ONLY = ("train_window_positions", "train_window_stride")  # settings of the window regimes only


def settings_for(settings: dict, regime: str) -> dict:
    """``settings`` as a run under ``regime`` takes them: ``last`` leaves out the window-only ones."""
    return {k: v for k, v in settings.items() if regime != "last" or k not in WINDOW_ONLY}


def main(argv: list[str]) -> int:
    """Entry point of ``bench regimes``."""
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    own, overrides = parse(argv, OPTIONS, "bench regimes")
    exit_on_sigterm()
    specs = parse_model_specs(own["models"])
    dataset = own["dataset"]
    batches, threads, timeout, show = own["batches"], own["threads"], own["timeout"] or None, own["progress"]
    if "train_targets" in overrides:
        raise UsageError("--train_targets is set by bench regimes itself: choose with --regimes=both|last|windows")
    output = own["output"] or os.path.join("results", "regimes", dataset)

    from recbole_ssm.quick_start import build_config

    which = own["regimes"]
    windows = {}
    merged = {spec.label: {**overrides, **spec.overrides} for spec in specs}
    for spec in specs:  # invalid settings (e.g. a model without `all`) fail before any work
        config, _ = build_config(spec.name, dataset, [], settings_for(merged[spec.label], "last"))
        windows[spec.label] = window_regime(spec.name, config)
        for regime in regimes_of(windows[spec.label], which):
            build_config(spec.name, dataset, [], {**settings_for(merged[spec.label], regime), "train_targets": regime})

    points = []
    for spec in specs:
        for regime in regimes_of(windows[spec.label], which):
            work = {"model": spec.name, "dataset": dataset, "overrides": settings_for(merged[spec.label], regime),
                    "regime": regime, "batches": batches, "threads": threads}
            fp = fingerprint({"dataset": dataset, "model": spec.name, "spec": spec.overrides, "regime": regime,
                              "overrides": overrides, "batches": batches, "threads": threads,
                              "files": settings_files_digest(spec.name, dataset)})
            name = record_name(spec.label, regime)
            log = os.path.join(output, "logs", name[:-5] + ".log")
            points.append(Point((spec.label, regime), os.path.join(output, "runs", name), fp, work,
                                {"model": spec.label, "regime": regime}, log, f"{spec.label} {regime}"))
    records, todo = reuse_or_schedule(points, own["overwrite"])
    measure_points(todo, "recbole_ssm.bench.regimes", "bench regimes", records, show, timeout,
                   own["memory_limit_gb"] or None)

    md_header, md_rows, csv_header, csv_rows = _rows(specs, records, windows)
    table = markdown_table(md_header, md_rows)
    done = [r for r in records.values() if r.get("status") == "ok"]
    header = (
        f"# {dataset}: training epoch, train_targets=last against the window regime (all, or cloze)\n\n"
        f"Command: `python run_recbole_ssm.py bench regimes {' '.join(argv)}`\n\n"
        f"Machine: {machine_line()}; {runs_line(done)}.\n\n"
        + ("'~': epoch time extrapolated from the timed steps (mean step time x steps per epoch).\n\n"
           if any(r.get("extrapolated") for r in done) else "")
    )
    os.makedirs(output, exist_ok=True)
    atomic_write_text(os.path.join(output, "regimes.md"), header + table)
    atomic_write_text(os.path.join(output, "regimes.csv"), csv_text(csv_header, csv_rows))
    print(table, end="", flush=True)
    print(f"wrote {os.path.join(output, 'regimes.md')} and regimes.csv", file=sys.stderr)
    return 0 if len(done) == len(records) else 1


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], _work, "regimes"))
