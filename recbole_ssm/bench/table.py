"""``bench table``: the seed paper's per-data-set table, mean +- std over seeds.

Each (model, seed) trains and tests through :func:`recbole_ssm.quick_start.run` in its own
process and leaves a JSON record under ``OUTPUT/runs/``; a later call with the same settings
reuses finished records (partial runs resume). Then ``table.md`` and ``table.csv`` are written.

Columns (definitions in docs/benchmarks.md): test Hit@10, NDCG@10, MRR@10; inference latency
in milliseconds per user for full-sort scoring at batch 1 and at batch 256 (median after
warm-up); mean training time per epoch; epochs run; peak memory of training and of the whole
run; parameters with and without embeddings.
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
import sys
import time

from recbole_ssm.bench.memory import CpuPeakMemory, process_peak_rss_mib
from recbole_ssm.bench.records import (
    ModelSpec,
    fingerprint,
    parse_model_specs,
    read_record,
    record_name,
    settings_files_digest,
)
from recbole_ssm.bench.report import (
    cell,
    cpu_model,
    csv_text,
    machine_line,
    markdown_table,
    mean_std,
    median,
    runs_line,
)
from recbole_ssm.bench.workers import Point, exit_on_sigterm, measure_points, reuse_or_schedule, worker_main
from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help
from recbole_ssm.utils import atomic_write_text, best_epoch

USAGE = """\
usage: run_recbole_ssm.py bench table --models=A,B[:key=value...] [--dataset=NAME] [--seeds=3]
           [--first_seed=2020] [--output=DIR] [--config_files="a.yaml b.yaml"] [--timeout=SECONDS]
           [--latency_repeats=50] [--latency_batch=256] [--threads=0] [--overwrite] [--report_only]
           [--KEY=VALUE ...]

Trains and tests each model once per seed (RecBole pipeline, one process per run), then writes
DIR/table.md and DIR/table.csv (default DIR: results/<dataset>/) with mean +- std over seeds.
Finished (model, seed) runs are kept in DIR/runs/ and not retrained by a later call with the
same settings; --report_only writes the table from the finished runs without training.
--threads=N sets torch's CPU threads in each run (0: torch's default).
--KEY=VALUE settings (e.g. --epochs=10 --stopping_step=3) apply to every model;
NAME:key=value applies to one (e.g. SASRec:n_layers=1, Mamba4Rec:trim_padding=False).
"""

OPTIONS = {
    "models": Opt(None),
    "dataset": Opt("ml-100k"),
    "seeds": Opt(3, "whole", minimum=1),
    "first_seed": Opt(2020, "whole"),
    "output": Opt(None),
    "config_files": Opt(""),
    "timeout": Opt(0, "number"),
    "latency_repeats": Opt(50, "whole", minimum=1),
    "latency_batch": Opt(256, "whole", minimum=1),
    "overwrite": Opt(False, "flag"),
    "report_only": Opt(False, "flag"),
    "progress": Opt(True, "flag"),
    "threads": Opt(0, "whole"),
}

# (record key, column header) of the test metrics shown when present, in this order.
METRICS = [("hit@10", "Hit@10"), ("ndcg@10", "NDCG@10"), ("mrr@10", "MRR@10")]


# ---------------------------------------------------------------------------------------
def epoch_seconds(epoch_times: list[float]) -> float:
    """A run's epoch time: the median of its training epochs, so that a few epochs slowed by a
    pause or by another job on the machine do not move it (nan without epochs)."""
    return statistics.median(epoch_times) if epoch_times else math.nan


# worker: one (model, seed)


def _first_rows(loader, n: int):
    """The first ``n`` evaluation rows of a full-sort loader, as one Interaction."""
    from recbole.data.interaction import cat_interactions

    parts, total = [], 0
    for batch in loader:
        inter = batch[0] if isinstance(batch, tuple) else batch
        parts.append(inter)
        total += len(inter)
        if total >= n:
            break
    inter = cat_interactions(parts) if len(parts) > 1 else parts[0]
    return inter[: min(n, len(inter))]


def measure_latency(model, rows, batch: int, repeats: int, device, warmup: int = 3) -> tuple[float, int]:
    """Median milliseconds per user of ``model.full_sort_predict`` on batches of ``batch`` rows.

    At batch 1 each repeat scores the next user of ``rows`` (cycling), so the median is over
    users as well as over calls; larger batches score the first ``batch`` rows every time.
    Returns (ms per user, batch actually used: at most the number of rows available).
    """
    import torch

    n = len(rows)
    batch = min(batch, n)
    model.eval()
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def chunk(i: int):
        if batch == 1:
            return rows[[i % n]].to(device)
        return rows[:batch].to(device)

    times = []
    with torch.no_grad():
        for i in range(warmup):
            model.full_sort_predict(chunk(i))
        for i in range(repeats):
            x = chunk(i)
            sync()
            t0 = time.perf_counter()
            model.full_sort_predict(x)
            sync()
            times.append(time.perf_counter() - t0)
    return median(times) * 1000.0 / batch, batch


def _work(spec: dict) -> dict:
    """Train, test and time one (model, seed) in this process; return its record."""
    import torch

    from recbole_ssm.quick_start import run
    from recbole_ssm.seen import evaluate_history_left_out

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    config_dict = {**spec["overrides"], "seed": spec["seed"], "checkpoint_dir": spec["checkpoint_dir"]}
    resume_file = spec.get("resume_file")
    if resume_file and os.path.isfile(resume_file):  # a run of these settings was stopped: continue it
        print(f"bench table: resuming from {resume_file}", flush=True)
        out = run(resume=resume_file, fit_memory=CpuPeakMemory)
    else:
        out = run(spec["model"], spec["dataset"], spec["config_files"], config_dict, saved=True,
                  fit_memory=CpuPeakMemory, resume_file=resume_file)
    epoch_times = out.trainer.epoch_times
    valid_scores = [list(p) for p in out.trainer.valid_scores]
    test = {k.lower(): float(v) for k, v in (out.result["test_result"] or {}).items()}
    valid = {k.lower(): float(v) for k, v in (out.result["best_valid_result"] or {}).items()}
    # the kept checkpoint (the trainer's model after its test) scored again with each user's history
    # left out of the ranking, as SASRec+'s and LRURec's published numbers are (recbole_ssm/seen.py)
    seen_out = evaluate_history_left_out(out.trainer, out.dataset, out.test_data)
    test_seen_out = {k.lower(): float(v) for k, v in seen_out.items()}

    device = out.config["device"]
    rows = _first_rows(out.test_data, max(spec["latency_batch"], spec["latency_repeats"]))
    lat1, _ = measure_latency(out.model, rows, 1, spec["latency_repeats"], device)
    latb, used = measure_latency(out.model, rows, spec["latency_batch"], max(3, spec["latency_repeats"] // 5), device)
    return {
        "status": "ok",
        "test": test,
        "test_seen_out": test_seen_out,
        "valid": valid,
        "valid_metric": str(out.config["valid_metric"]).lower(),
        "valid_scores": valid_scores,
        "best_epoch": best_epoch(valid_scores, bool(out.config["valid_metric_bigger"])),
        "params": out.params[0],
        "params_no_emb": out.params[1],
        "epochs": len(epoch_times),
        "epoch_s": epoch_seconds(epoch_times),
        "epoch_times": epoch_times,
        "fit_s": out.timings.get("fit_s"),
        "data_s": out.timings.get("data_s"),
        "fit_peak_mib": out.trainer.fit_peak_mib,
        "fit_peak_kind": out.trainer.fit_peak_kind,
        "process_peak_rss_mib": process_peak_rss_mib(),
        "latency_b1_ms": lat1,
        "latency_bn_ms": latb,
        "latency_bn": used,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
    }


# ---------------------------------------------------------------------------------------
# the table


COLUMNS = [
    # (csv name, markdown header, record getter, formatter or None for ints)
    *[(key, head, (lambda r, k=key: r["test"].get(k)), "metric") for key, head in METRICS],
    # the best validation score (the metric early stopping reads) and the epoch it came from (0-based)
    ("valid", "Valid", lambda r: _best_valid(r), "metric"),
    ("best_epoch", "Best epoch", lambda r: r.get("best_epoch"), "sig"),
    # the same checkpoint's test with the user's history left out of the ranking (not in older records)
    *[(f"{key}_seen_out", f"{head}, history left out", (lambda r, k=key: _seen_out(r, k)), "metric")
      for key, head in METRICS[:2]],
    ("latency_b1_ms", "Latency b=1 (ms/user)", lambda r: r["latency_b1_ms"], "sig"),
    ("latency_bn_ms", "Latency b=256 (ms/user)", lambda r: r["latency_bn_ms"], "sig"),
    ("epoch_s", "Epoch (s)", lambda r: r["epoch_s"], "sig"),
    ("epochs", "Epochs", lambda r: r["epochs"], "sig"),
    ("fit_peak_mib", "Train peak (MiB)", lambda r: r["fit_peak_mib"], "sig"),
    ("process_peak_rss_mib", "Process peak RSS (MiB)", lambda r: r["process_peak_rss_mib"], "sig"),
    ("params", "Params", lambda r: r["params"], "int"),
    ("params_no_emb", "Params w/o emb.", lambda r: r["params_no_emb"], "int"),
]


def build_rows(specs: list[ModelSpec], records: dict[tuple[str, int], dict], seeds: list[int],
               latency_batch: int) -> tuple[list[str], list[list], list[str], list[list]]:
    """(markdown header, markdown rows, csv header, csv rows) from the finished records."""
    md_header = ["Model", "Seeds"] + [c[1] for c in COLUMNS]
    md_header = _name_valid_metric([h.replace("b=256", f"b={latency_batch}") for h in md_header], records)
    csv_header = ["model", "seeds"]
    for name, _h, _g, kind in COLUMNS:
        csv_header += [name] if kind == "int" else [f"{name}_mean", f"{name}_std"]
    md_rows, csv_rows = [], []
    for spec in specs:
        done = [records[(spec.label, s)] for s in seeds
                if records.get((spec.label, s), {}).get("status") == "ok"]
        failed = [records[(spec.label, s)] for s in seeds
                  if (spec.label, s) in records and records[(spec.label, s)].get("status") != "ok"]
        md = [spec.label, f"{len(done)}/{len(seeds)}"]
        row: list = [spec.label, len(done)]
        for _name, _h, get, kind in COLUMNS:
            values = [get(r) for r in done]
            if kind == "int":
                md.append(str(values[0]) if values else (failed[0]["status"] if failed else "-"))
                row.append(values[0] if values else "")
                continue
            m, s = mean_std(values)
            md.append(cell(m, s, 4 if kind == "metric" else None))
            if not values and failed:
                md[-1] = failed[0]["status"]
            row += ["" if math.isnan(m) else f"{m:.6g}", "" if math.isnan(s) else f"{s:.6g}"]
        md_rows.append(md)
        csv_rows.append(row)
    return md_header, md_rows, csv_header, csv_rows


def _best_valid(record: dict) -> float | None:
    """A run's best validation score: its ``valid_metric`` (NDCG@10 in records made before it was kept)."""
    return record["valid"].get(record.get("valid_metric", "ndcg@10"))


def _name_valid_metric(header: list[str], records: dict) -> list[str]:
    """``header`` with its "Valid" column named after the validation metric, as RecBole prints it
    (NDCG@10), from the finished records."""
    names = {r.get("valid_metric", "ndcg@10") for r in records.values() if r.get("status") == "ok"}
    shown = dict(METRICS)
    metric = " / ".join(sorted(shown.get(n, n) for n in names)) or "NDCG@10"
    return [f"Valid {metric}" if h == "Valid" else h for h in header]


def _seen_out(record: dict, metric: str) -> float | None:
    """A run's test ``metric`` with the history left out (None in records made before it was kept)."""
    return record.get("test_seen_out", {}).get(metric)


RUN_HEADER = ["Model", "Seed", "Hit@10", "NDCG@10", "MRR@10", "Valid", "NDCG@10, history left out", "Epochs",
              "Best epoch", "Epoch (s)"]


def run_rows(specs: list[ModelSpec], records: dict[tuple[str, int], dict], seeds: list[int]) -> list[list[str]]:
    """One markdown row per finished (model, seed): the values behind each mean ± std."""
    rows = []
    for spec in specs:
        for seed in seeds:
            r = records.get((spec.label, seed))
            if not r or r.get("status") != "ok":
                continue
            best = r.get("best_epoch")
            rows.append([spec.label, str(seed), *[cell(r["test"].get(k), digits=4) for k, _ in METRICS],
                         cell(_best_valid(r), digits=4), cell(_seen_out(r, "ndcg@10"), digits=4), str(r["epochs"]),
                         cell(best, digits=0), cell(r["epoch_s"])])
    return rows


def _data_path(dataset: str, files: list[str], overrides: dict) -> str | None:
    from recbole_ssm.config import merged_user_config, property_files, read_yaml

    user = merged_user_config(files, overrides)
    if user.get("data_path"):
        return user["data_path"]
    path = None
    for f in property_files("SASRec", dataset):
        path = read_yaml(f).get("data_path", path)
    return path


def main(argv: list[str]) -> int:
    """Entry point of ``bench table``."""
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    own, overrides = parse(argv, OPTIONS, "bench table")
    exit_on_sigterm()
    specs = parse_model_specs(own["models"])
    dataset = own["dataset"]
    seeds = list(range(own["first_seed"], own["first_seed"] + own["seeds"]))
    timeout = own["timeout"] or None
    lat_repeats, lat_batch = own["latency_repeats"], own["latency_batch"]
    threads, show = own["threads"], own["progress"]
    files = own["config_files"].split()
    for key in ("model", "seed"):
        if key in overrides:
            raise UsageError(f"--{key} is set by bench table itself: use --models / --seeds")
    output = own["output"] or os.path.join("results", dataset)

    from recbole_ssm.config import resolve_dataset
    from recbole_ssm.quick_start import build_config

    resolve_dataset(dataset, _data_path(dataset, files, overrides))  # one-line error before any work
    tuned = {}  # whether each model's runs read its tuned settings (tuned_defaults)
    for spec in specs:  # invalid settings fail here, before hours of training
        config, _cls = build_config(spec.name, dataset, files, {**overrides, **spec.overrides})
        tuned[spec.label] = config["tuned_defaults"] is not False

    runs_dir = os.path.join(output, "runs")
    points = _points(specs, seeds, dataset, files, overrides, threads, lat_repeats, lat_batch, output, tuned)
    for p in points:  # each record keeps the command that made it (the table of a later call names it)
        p.labels["command"] = _command(argv)
    records, todo = reuse_or_schedule(points, own["overwrite"], schedule=not own["report_only"])
    if records:
        print(f"bench table: {len(records)} finished run(s) reused from {runs_dir}", file=sys.stderr)
    measure_points(todo, "recbole_ssm.bench.table", "bench table", records, show, timeout)
    _write_table(specs, records, seeds, lat_batch, dataset, output, argv, {p.key for p in points})
    bad = [r for r in records.values() if r.get("status") != "ok"]
    return 1 if bad else 0


def _points(specs, seeds, dataset, files, overrides, threads, lat_repeats, lat_batch, output, tuned) -> list:
    """One run per (seed, model): every model's first seed before any model's second, so partial
    tables stay even. A run stopped midway continues from its resume state (same settings only)."""
    points = []
    for seed in seeds:
        for spec in specs:
            settings = {"threads": threads, "dataset": dataset, "model": spec.name, "spec": spec.overrides,
                        "overrides": overrides,
                        "files": settings_files_digest(spec.name, dataset, files, tuned[spec.label])}
            work = {
                "model": spec.name, "dataset": dataset, "config_files": files,
                "overrides": {**overrides, **spec.overrides}, "seed": seed,
                "checkpoint_dir": os.path.abspath(os.path.join(output, "saved")),
                "latency_repeats": lat_repeats, "latency_batch": lat_batch, "threads": threads,
            }
            name = record_name(spec.label, "seed", seed)
            digest = fingerprint(settings)
            work["resume_file"] = os.path.abspath(os.path.join(output, "saved", f"{name[:-5]}-{digest}-resume.pth"))
            points.append(Point((spec.label, seed), os.path.join(output, "runs", name), digest, work,
                                {"model": spec.label, "seed": seed}, os.path.join(output, "logs", name[:-5] + ".log"),
                                f"{spec.label} seed={seed}"))
    return points


def _command(argv: list[str]) -> str:
    return "python run_recbole_ssm.py bench table " + " ".join(argv)


def other_runs(output: str, keys: set) -> dict[tuple[str, int], dict]:
    """The finished records in ``output/runs/`` of (model, seed) pairs this call does not run: an
    earlier call's other ``--models`` into the same folder."""
    runs_dir = os.path.join(output, "runs")
    found = {}
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        rec = read_record(os.path.join(runs_dir, name)) if name.endswith(".json") else None
        if not rec or rec.get("status") != "ok" or "model" not in rec or "seed" not in rec:
            continue
        key = (rec["model"], int(rec["seed"]))
        if key not in keys:
            found[key] = rec
    return found


def _other_runs_section(others: dict[tuple[str, int], dict], lat_batch: int) -> str:
    """table.md's section on ``other_runs``: their table and the command of each model's runs."""
    if not others:
        return ""
    labels = sorted({label for label, _ in others})
    specs = [ModelSpec(label, label.partition(":")[0], {}) for label in labels]
    seeds = sorted({seed for _, seed in others})
    md_header, md_rows, _, _ = build_rows(specs, others, seeds, lat_batch)
    md_rows = [[row[0], row[1].split("/")[0] + " run(s)", *row[2:]] for row in md_rows]
    commands = []
    for label in labels:
        used = sorted({r.get("command") or "not recorded (made before records kept their command)"
                       for (lab, _), r in others.items() if lab == label})
        commands += [f"- {label}: " + ("; ".join(f"`{c}`" if c.startswith("python") else c for c in used))]
    return ("\n## Other runs in this folder\n\nFinished runs of other models, from earlier `bench table` calls "
            "into this folder; each was measured with its own command (below), whose settings may differ "
            "from the command above.\n\n" + markdown_table(md_header, md_rows) + "\n"
            + "\n".join(commands) + "\n\nEach run:\n\n"
            + markdown_table(_name_valid_metric(RUN_HEADER, others), run_rows(specs, others, seeds)))


def _write_table(specs, records: dict, seeds: list[int], lat_batch: int, dataset: str, output: str,
                 argv: list[str], keys: set) -> None:
    """table.md and table.csv from the finished runs (table.md also those of the folder's other
    models); the table on stdout."""
    md_header, md_rows, csv_header, csv_rows = build_rows(specs, records, seeds, lat_batch)
    table = markdown_table(md_header, md_rows)
    per_run = markdown_table(_name_valid_metric(RUN_HEADER, records), run_rows(specs, records, seeds))
    command = _command(argv)
    done = [r for r in records.values() if r.get("status") == "ok"]
    header = (
        f"# {dataset}: test metrics, mean ± std over seeds {seeds[0]}..{seeds[-1]}\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {machine_line()}; {runs_line(done)}.\n\n"
        f"Written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}. "
        "Definitions of latency, epoch time and memory: docs/benchmarks.md.\n\n"
    )
    os.makedirs(output, exist_ok=True)
    atomic_write_text(os.path.join(output, "table.md"),
                      header + table + "\nEach run (test metrics of the best-validation checkpoint; epochs "
                      "counted from 0; epoch time the median of the run's epochs):\n\n" + per_run
                      + _other_runs_section(other_runs(output, keys), lat_batch))
    atomic_write_text(os.path.join(output, "table.csv"), csv_text(csv_header, csv_rows))
    print(table, end="", flush=True)
    print(f"wrote {os.path.join(output, 'table.md')} and table.csv", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], _work, "table"))
