"""``bench efficiency``: training-step time, inference time and peak memory against length.

No data set is needed: a small synthetic atomic data set (``--n_items`` items) gives RecBole
the item count, and every point feeds random full-length sequences (no padding, so models
that drop padding do the same work as the others). Each (model, length) point runs in its own
process; an out-of-memory or a time-out there is recorded as ``OOM`` / ``timeout``.

Definitions (docs/benchmarks.md):
- training step: ``zero_grad`` + ``calculate_loss`` (CE over all items) + ``backward`` + Adam
  ``step`` on one (batch, L) batch, after one warm-up step; median of ``--repeats``.
- inference: ``full_sort_predict`` (scores for every item) under ``torch.no_grad`` in eval
  mode on ``--infer_batch`` sequences, after one warm-up call; median; also per user.
- peak memory: CPU, the peak resident memory (VmHWM, reset before the measured region) above
  the resident memory at its start; CUDA, ``max_memory_allocated`` above ``memory_allocated``
  at its start.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from typing import Any

from recbole_ssm.bench.memory import CpuPeakMemory
from recbole_ssm.bench.records import ModelSpec, fingerprint, parse_model_specs, record_name, settings_files_digest
from recbole_ssm.bench.report import (
    cell,
    cpu_model,
    csv_text,
    machine_line,
    markdown_table,
    median,
    runs_line,
    save_png,
)
from recbole_ssm.bench.workers import Point, exit_on_sigterm, measure_points, reuse_or_schedule, worker_main
from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help
from recbole_ssm.utils import atomic_write_text

USAGE = """\
usage: run_recbole_ssm.py bench efficiency --models=A,B[:key=value...] --lengths=50,200,1000
           [--batch=16] [--infer_batch=BATCH] [--device=cpu|cuda] [--hidden_size=64]
           [--n_items=3000] [--repeats=3] [--time_budget=30] [--timeout=600]
           [--memory_limit_gb=0] [--threads=0] [--baseline=SASRec] [--output=DIR] [--overwrite]
           [--KEY=VALUE ...]

Times one training step and one full-sort inference per model and sequence length on
synthetic sequences, with the peak memory of each, every point in its own process. Writes
DIR/efficiency.csv, DIR/efficiency.md, DIR/efficiency_time.png and DIR/efficiency_memory.png
(default DIR: results/efficiency-<device>/) and prints ratios to the baseline model measured in
the same run. Finished points are reused by a later call with the same settings.
--KEY=VALUE settings apply to every model; NAME:key=value to one (e.g. SASRec:n_layers=1).
"""

OPTIONS = {
    "models": Opt(None),
    "lengths": Opt(None, "ints", minimum=1),
    "batch": Opt(16, "whole", minimum=1),
    "infer_batch": Opt(None, "whole", minimum=1),
    "device": Opt("cpu", "choice", choices=("cpu", "cuda")),
    "hidden_size": Opt(64, "whole", minimum=1),
    "n_items": Opt(3000, "whole", minimum=2),
    "repeats": Opt(3, "whole", minimum=1),
    "time_budget": Opt(30, "number"),
    "timeout": Opt(600, "number"),
    "memory_limit_gb": Opt(0, "number"),
    "threads": Opt(0, "whole"),
    "baseline": Opt(None),
    "output": Opt(None),
    "overwrite": Opt(False, "flag"),
    "progress": Opt(True, "flag"),
    "seed": Opt(2020, "whole"),
}

SYNTH = "bench-synth"


def write_synthetic_dataset(root: str, n_items: int, per_user: int = 10) -> str:
    """Write ``root/bench-synth/bench-synth.inter``: every item 1..n_items once; return root."""
    from recbole_ssm.utils import atomic_write_text as write

    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for i in range(n_items):
        rows.append(f"{i // per_user + 1}\t{i + 1}\t{i}")
    write(os.path.join(root, SYNTH, f"{SYNTH}.inter"), "\n".join(rows) + "\n")
    return root


def synthetic_config(spec: dict) -> dict:
    """Settings of every point: the synthetic data, length, width, device; then the user's."""
    return {
        "data_path": spec["data_path"],
        "MAX_ITEM_LIST_LENGTH": spec["length"],
        "hidden_size": spec["hidden_size"],
        "device": spec["device"],
        "use_gpu": spec["device"] == "cuda",
        "seed": spec["seed"],
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "state": "WARNING",
        "show_progress": False,
        **spec["overrides"],
    }


def _timed(fn, repeats: int, budget_s: float, sync) -> list[float]:
    """Call ``fn`` up to ``repeats`` times (at least once; stop when ``budget_s`` is spent)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return times


def _build(spec: dict):
    """The model of one point on the synthetic data set, on its device; and the number of items."""
    import logging

    import torch
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    from recbole_ssm import compat
    from recbole_ssm.quick_start import build_config

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    logging.disable(logging.WARNING)
    config, model_class = build_config(spec["model"], SYNTH, [], synthetic_config(spec))
    init_seed(config["seed"], True)
    with compat.quiet_recbole():
        dataset = create_dataset(config)
    model = model_class(config, dataset).to(torch.device(spec["device"]))
    return model, dataset.num(config["ITEM_ID_FIELD"])


def _work(spec: dict) -> dict:
    """Measure one (model, length) point in this process; return its record."""
    import torch
    from recbole.data.interaction import Interaction

    from recbole_ssm.utils import count_parameters

    model, n_items = _build(spec)
    total, no_emb = count_parameters(model)
    device = torch.device(spec["device"])
    batch, infer_batch, length = spec["batch"], spec["infer_batch"], spec["length"]
    gen = torch.Generator().manual_seed(spec["seed"])

    def make(rows: int) -> Interaction:
        return Interaction({
            model.ITEM_SEQ: torch.randint(1, n_items, (rows, length), generator=gen),
            model.ITEM_SEQ_LEN: torch.full((rows,), length, dtype=torch.long),
            model.POS_ITEM_ID: torch.randint(1, n_items, (rows,), generator=gen),
        }).to(device)

    cuda = device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_batch = make(batch)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model.calculate_loss(train_batch)
        loss.backward()
        optimizer.step()

    measure = _PeakTimer(spec, cuda)
    model.train()
    train_step()  # warm-up; allocates the optimizer state
    train_times, train_mem = measure(train_step)
    optimizer.zero_grad(set_to_none=True)

    model.eval()
    infer_rows = make(infer_batch)
    with torch.no_grad():
        model.full_sort_predict(infer_rows)  # warm-up
        infer_times, infer_mem = measure(lambda: model.full_sort_predict(infer_rows))
    infer_ms = median(infer_times) * 1000.0
    methods = ", ".join(sorted(measure.methods))
    memory_kind = "cuda max_memory_allocated" if cuda else f"RSS above start ({methods})"
    return {
        "status": "ok",
        "train_ms": median(train_times) * 1000.0,
        "train_repeats": len(train_times),
        "infer_ms": infer_ms,
        "infer_ms_per_user": infer_ms / infer_batch,
        "infer_repeats": len(infer_times),
        "train_mem_mib": train_mem,
        "infer_mem_mib": infer_mem,
        "memory_kind": memory_kind,
        "params": total,
        "params_no_emb": no_emb,
        "n_items": n_items,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "kernels": ops_kernels(device),
    }


def ops_kernels(device) -> dict[str, str]:
    """Which implementation each SSM op runs on ``device`` in this process: ``cuda`` (mamba-ssm /
    causal-conv1d), ``cpp`` (the fused CPU selective scan) or ``torch`` (recbole-ssm's PyTorch path)."""
    from recbole_ssm.ops.backend import dispatch

    return {op: dispatch(op, device)[0] for op in ("selective_scan", "ssd", "causal_conv1d")}


def kernels_line(records) -> str:
    """The kernels of the finished points, one line (``-`` for records made before they were kept)."""
    seen = sorted({", ".join(f"{op}={impl}" for op, impl in r["kernels"].items()) for r in records if r.get("kernels")})
    return "; ".join(seen) or "-"


class _PeakTimer:
    """``measure(fn) -> (times, peak MiB)``: repeated timings of ``fn`` and the peak memory they took."""

    def __init__(self, spec: dict, cuda: bool):
        import torch

        self.spec, self.cuda, self.torch = spec, cuda, torch
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.methods: set = set()

    def __call__(self, fn) -> tuple[list[float], float]:
        torch = self.torch
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with CpuPeakMemory() as mem:
            times = _timed(fn, self.spec["repeats"], self.spec["time_budget"], self.sync)
        self.methods.add(mem.method)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if self.cuda else mem.mib
        return times, peak


# ---------------------------------------------------------------------------------------
# output


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def compute_rows(specs: list[ModelSpec], lengths: list[int], records: dict, baseline: str | None) -> list[dict]:
    """One dict per (model, length) with the measurements and the ratios to ``baseline``."""
    rows = []
    for spec in specs:
        for length in lengths:
            rec = records.get((spec.label, length), {"status": "missing"})
            base = records.get((baseline, length), {}) if baseline else {}
            ok = rec.get("status") == "ok"
            base_ok = base.get("status") == "ok"
            row = {"model": spec.label, "length": length, "status": rec.get("status")}
            for key in ("train_ms", "infer_ms", "infer_ms_per_user", "train_mem_mib", "infer_mem_mib",
                        "params", "params_no_emb"):
                row[key] = rec.get(key) if ok else None
            for key in ("train_ms", "infer_ms", "train_mem_mib", "infer_mem_mib"):
                row[f"{key}_vs_base"] = _ratio(row[key], base.get(key)) if ok and base_ok else None
                if ok and base_ok and row[f"{key}_vs_base"] is None:
                    row[f"{key}_vs_base"] = "n/a"  # the baseline measured 0
            row["error"] = "" if ok else rec.get("error", "")
            rows.append(row)
    return rows


CSV_COLUMNS = ["model", "length", "batch", "infer_batch", "device", "status", "train_ms", "infer_ms",
               "infer_ms_per_user", "train_mem_mib", "infer_mem_mib", "params", "params_no_emb",
               "train_ms_vs_base", "infer_ms_vs_base", "train_mem_mib_vs_base", "infer_mem_mib_vs_base",
               "baseline", "error"]


def _csv(rows: list[dict], batch: int, infer_batch: int, device: str, baseline: str | None) -> str:
    out = []
    for r in rows:
        full = {**r, "batch": batch, "infer_batch": infer_batch, "device": device, "baseline": baseline or ""}
        out.append(["" if full.get(c) is None else (f"{full[c]:.6g}" if isinstance(full[c], float) else full[c])
                    for c in CSV_COLUMNS])
    return csv_text(CSV_COLUMNS, out)


def summary_table(rows: list[dict], baseline: str | None) -> str:
    """Markdown summary: times, memory and the ratios to the baseline (x = model / baseline)."""
    header = ["Model", "L", "Train step (ms)", "Infer (ms/user)", "Train mem (MiB)", "Infer mem (MiB)"]
    if baseline:
        header += [f"Train time vs {baseline}", f"Infer vs {baseline}", f"Train mem vs {baseline}"]
    body = []
    for r in rows:
        if r["status"] != "ok":
            cells = [r["model"], str(r["length"])] + [r["status"]] * (len(header) - 2)
        else:
            cells = [r["model"], str(r["length"]), cell(r["train_ms"]), cell(r["infer_ms_per_user"]),
                     cell(r["train_mem_mib"]), cell(r["infer_mem_mib"])]
            if baseline:
                cells += [("-" if r[k] is None else (r[k] if isinstance(r[k], str) else f"{r[k]:.2f}x"))
                          for k in ("train_ms_vs_base", "infer_ms_vs_base", "train_mem_mib_vs_base")]
        body.append(cells)
    return markdown_table(header, body)


def plot(rows: list[dict], path_time: str, path_mem: str, title: str) -> None:
    """Log-log plots of time and memory against length, one line per model (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))

    def series(model: str, key: str):
        pts = [(r["length"], r[key]) for r in rows if r["model"] == model and r.get(key)]
        return [p[0] for p in pts], [p[1] for p in pts]

    for path, panels in (
        (path_time, (("train_ms", "training step (ms)"), ("infer_ms_per_user", "inference (ms per user)"))),
        (path_mem, (("train_mem_mib", "training step peak memory (MiB)"),
                    ("infer_mem_mib", "inference peak memory (MiB)"))),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (key, label) in zip(axes, panels):
            for model in models:
                xs, ys = series(model, key)
                if xs:
                    ax.plot(xs, ys, marker="o", label=model)
                lost = [r for r in rows if r["model"] == model and r["status"] != "ok"]
                for r in lost:
                    ax.annotate(r["status"], (r["length"], ax.get_ylim()[1]), fontsize=7, rotation=90,
                                va="top", ha="center")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("sequence length L")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=8)
        fig.suptitle(title, fontsize=9)
        save_png(fig, path)


# ---------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Entry point of ``bench efficiency``."""
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    exit_on_sigterm()
    opt = _options(argv)
    os.makedirs(opt["output"], exist_ok=True)
    data_root = os.path.abspath(os.path.join(opt["output"], "synthetic", f"items{opt['n_items']}"))
    if not os.path.isfile(os.path.join(data_root, SYNTH, f"{SYNTH}.inter")):
        write_synthetic_dataset(data_root, opt["n_items"])

    from recbole_ssm.quick_start import build_config

    for spec in opt["specs"]:  # invalid settings fail here with one line, before any measuring
        build_config(spec.name, SYNTH, [], synthetic_config({
            "data_path": data_root, "length": opt["lengths"][0], "hidden_size": opt["hidden"],
            "device": opt["device"], "seed": opt["seed"], "overrides": {**opt["overrides"], **spec.overrides}}))
    points_dir = os.path.join(opt["output"], "points")
    records, todo = reuse_or_schedule(_points(opt, data_root, points_dir), opt["overwrite"],
                                      keep=("ok", "OOM", "timeout"))
    if records:
        print(f"bench efficiency: {len(records)} finished point(s) reused from {points_dir}", file=sys.stderr)
    measure_points(todo, "recbole_ssm.bench.efficiency", "bench efficiency", records, opt["show"], opt["timeout"],
                   opt["mem_limit"])
    _write_report(opt, records, argv)
    return 0


def _options(argv: list[str]) -> dict:
    """The command's options, checked (one-line errors), and the settings passed to every model."""
    own, overrides = parse(argv, OPTIONS, "bench efficiency")
    opt = {
        "specs": parse_model_specs(own["models"]), "lengths": own["lengths"], "batch": own["batch"],
        "infer_batch": own["infer_batch"] or own["batch"], "hidden": own["hidden_size"], "n_items": own["n_items"],
        "repeats": own["repeats"], "budget": own["time_budget"], "timeout": own["timeout"] or None,
        "mem_limit": own["memory_limit_gb"] or None, "threads": own["threads"], "seed": own["seed"],
        "show": own["progress"], "device": own["device"], "overrides": overrides, "overwrite": own["overwrite"],
    }
    if opt["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device=cuda but torch sees no CUDA device")
        opt["mem_limit"] = None  # an address-space limit breaks CUDA initialisation
    for key in ("MAX_ITEM_LIST_LENGTH", "model", "dataset", "data_path"):
        if key in overrides:
            raise UsageError(f"--{key} is set by bench efficiency itself (use --lengths / --models)")
    labels = [s.label for s in opt["specs"]]
    opt["baseline"] = own["baseline"] or ("SASRec" if "SASRec" in labels else None)
    if opt["baseline"] is not None and opt["baseline"] not in labels:
        raise UsageError(f"--baseline={opt['baseline']} is not one of --models ({', '.join(labels)})")
    opt["output"] = own["output"] or os.path.join("results", f"efficiency-{opt['device']}")
    return opt


def _points(opt: dict, data_root: str, points_dir: str) -> list:
    """One point per (length, model): all models at one length, then the next (close in time, like for like)."""
    points = []
    for length in opt["lengths"]:
        for spec in opt["specs"]:
            work = {"model": spec.name, "length": length, "batch": opt["batch"], "infer_batch": opt["infer_batch"],
                    "hidden_size": opt["hidden"], "device": opt["device"], "seed": opt["seed"],
                    "threads": opt["threads"], "repeats": opt["repeats"], "time_budget": opt["budget"],
                    "overrides": {**opt["overrides"], **spec.overrides}, "n_items": opt["n_items"],
                    "timeout": opt["timeout"], "memory_limit_gb": opt["mem_limit"],
                    "files": settings_files_digest(spec.name, SYNTH)}
            name = record_name(spec.label, "L", length)
            points.append(Point((spec.label, length), os.path.join(points_dir, name), fingerprint(work),
                                {**work, "data_path": data_root}, {"model": spec.label, "length": length},
                                os.path.join(opt["output"], "logs", name[:-5] + ".log"), f"{spec.label} L={length}"))
    return points


def _write_report(opt: dict, records: dict, argv: list[str]) -> None:
    """efficiency.csv, efficiency.md and the two plots; the summary table on stdout."""
    output, device, batch, infer_batch = opt["output"], opt["device"], opt["batch"], opt["infer_batch"]
    rows = compute_rows(opt["specs"], opt["lengths"], records, opt["baseline"])
    summary = summary_table(rows, opt["baseline"])
    ok = [r for r in records.values() if r.get("status") == "ok"]
    command = "python run_recbole_ssm.py bench efficiency " + " ".join(argv)
    atomic_write_text(os.path.join(output, "efficiency.csv"), _csv(rows, batch, infer_batch, device, opt["baseline"]))
    atomic_write_text(os.path.join(output, "efficiency.md"), (
        f"# Efficiency on {device}: training step (batch {batch}) and inference (batch {infer_batch}), "
        f"hidden size {opt['hidden']}, {opt['n_items']} items\n\n"
        f"Command: `{command}`\n\nMachine: {machine_line()}; {runs_line(ok, 'points')}.\n\n"
        f"Kernels of the SSM ops (cuda: mamba-ssm / causal-conv1d, cpp: the fused CPU scan, torch: "
        f"recbole-ssm's PyTorch path): {kernels_line(ok)}.\n\n"
        f"Written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}. "
        "Ratios are model / baseline at the same length, measured in the same run. "
        "Definitions: docs/benchmarks.md.\n\n" + summary))
    plot(rows, os.path.join(output, "efficiency_time.png"), os.path.join(output, "efficiency_memory.png"),
         f"{device}, train batch {batch}, infer batch {infer_batch}, hidden {opt['hidden']}, {opt['n_items']} items")
    print(summary, end="", flush=True)
    print(f"wrote {output}/efficiency.csv, efficiency.md, efficiency_time.png, efficiency_memory.png",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], _work, "efficiency"))
