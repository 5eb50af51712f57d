"""``bench lengths``: test accuracy against the history length a model reads (MAX_ITEM_LIST_LENGTH).

For each length L it runs ``bench table`` with ``--MAX_ITEM_LIST_LENGTH=L`` into ``OUTPUT/L<L>/``
(so every run keeps its record, resumes after a stop and is reused by a later call, as in
``bench table``), then writes ``OUTPUT/lengths.md``, ``lengths.csv`` and ``lengths.png``:
Hit@10, NDCG@10 and MRR@10 of every model at every length (mean ± std over the seeds), and
NDCG@10 against L. Under ``train_targets: all`` a model trains on windows of L items and is
evaluated on each user's last L items, so the table says what reading a longer history gives.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import sys

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help
from recbole_ssm.utils import atomic_write_text

USAGE = """\
usage: run_recbole_ssm.py bench lengths --models=A,B --lengths=50,200,1000 [--dataset=NAME] [--seeds=1]
           [--first_seed=2020] [--output=DIR] [--threads=0] [--overwrite] [--report_only]
           [--progress=true] [--KEY=VALUE ...]

Runs `bench table` once per history length L (--MAX_ITEM_LIST_LENGTH=L, into DIR/L<L>/; finished
runs are reused, a stopped run resumes), then writes DIR/lengths.md, lengths.csv and lengths.png
(default DIR: results/lengths-<dataset>/): test Hit@10, NDCG@10 and MRR@10 of each model at each
length, and NDCG@10 against L. --KEY=VALUE settings apply to every run (e.g.
--train_targets=all --train_window_batch_size=32); NAME:key=value to one model, as in bench table.
A run recorded in DIR with other settings stops the command, unless --overwrite (then it is rerun).
"""

OPTIONS = {
    "models": Opt(None),
    "lengths": Opt(None, "ints", minimum=1),
    "dataset": Opt("ml-100k"),
    "seeds": Opt(1, "whole", minimum=1),
    "first_seed": Opt(2020, "whole"),
    "output": Opt(None),
    "threads": Opt(0, "whole"),
    "overwrite": Opt(False, "flag"),
    "report_only": Opt(False, "flag"),
    "progress": Opt(True, "flag"),
}

METRICS = [("hit@10", "Hit@10"), ("ndcg@10", "NDCG@10"), ("mrr@10", "MRR@10")]


def read_table(path: str) -> dict[str, dict]:
    """``bench table``'s table.csv: {model: row} (missing file: {})."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return {row["model"]: row for row in csv.DictReader(f)}


def _value(row: dict | None, metric: str) -> tuple[float, float, int]:
    """(mean, std, seeds finished) of a metric in a table.csv row; NaNs where it did not finish."""
    if not row or not row.get(f"{metric}_mean"):
        return math.nan, math.nan, 0
    std = row.get(f"{metric}_std") or "nan"
    return float(row[f"{metric}_mean"]), float(std), int(row.get("seeds") or 0)


def collect(output: str, models: list[str], lengths: list[int]) -> dict[tuple[str, int, str], tuple]:
    """{(model, L, metric): (mean, std, seeds)} from each length's table.csv."""
    out = {}
    for length in lengths:
        rows = read_table(os.path.join(output, f"L{length}", "table.csv"))
        for model in models:
            for metric, _ in METRICS:
                out[(model, length, metric)] = _value(rows.get(model), metric)
    return out


def write_report(output: str, models: list[str], lengths: list[int], values: dict, dataset: str,
                 argv: list[str]) -> str:
    """lengths.md, lengths.csv and lengths.png (each whole or not at all); returns the markdown table."""
    from recbole_ssm.bench.report import cell, machine_line, markdown_table

    header = ["Model", "Metric"] + [f"L={n}" for n in lengths]
    rows, csv_lines = [], ["model,metric,length,mean,std,seeds"]
    for model in models:
        for metric, head in METRICS:
            cells = (values[(model, n, metric)] for n in lengths)  # (mean, std, seeds)
            rows.append([model, head] + [cell(m, sd if k > 1 else None, 4) for m, sd, k in cells])
            for n in lengths:
                m, s, k = values[(model, n, metric)]
                csv_lines.append(f"{model},{metric},{n},{'' if math.isnan(m) else f'{m:.6g}'},"
                                 f"{'' if math.isnan(s) else f'{s:.6g}'},{k}")
    table = markdown_table(header, rows)
    text = (f"# {dataset}: test metrics against the history length (MAX_ITEM_LIST_LENGTH)\n\n"
            f"Command: `python run_recbole_ssm.py bench lengths {' '.join(argv)}`\n\n"
            f"Machine: {machine_line()}.\n\n"
            f"Written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}. "
            "Each length's runs: L<n>/table.md.\n\n" + table)
    os.makedirs(output, exist_ok=True)
    atomic_write_text(os.path.join(output, "lengths.md"), text)
    atomic_write_text(os.path.join(output, "lengths.csv"), "\n".join(csv_lines) + "\n")
    _plot(os.path.join(output, "lengths.png"), models, lengths, values, dataset)
    return table


def _plot(path: str, models: list[str], lengths: list[int], values: dict, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from recbole_ssm.bench.report import save_png

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model in models:
        points = [(n, *values[(model, n, "ndcg@10")][:2]) for n in lengths]
        points = [p for p in points if not math.isnan(p[1])]
        if not points:
            continue
        xs, ys, errs = zip(*points)
        ax.errorbar(xs, ys, yerr=[0 if math.isnan(e) else e for e in errs], marker="o", capsize=3, label=model)
    ax.set_xscale("log")
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(n) for n in lengths])
    # The log axis also labels its minor ticks (2x10^3 beside 2048): only the lengths are labelled.
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("history length read (MAX_ITEM_LIST_LENGTH)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"{dataset}: accuracy against history length")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_png(fig, path)


def main(argv: list[str]) -> int:
    """Entry point of ``bench lengths``."""
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    own, overrides = parse(argv, OPTIONS, "bench lengths")
    if not own["models"]:
        raise UsageError("bench lengths needs --models=A,B (models as bench table takes them)")
    if "MAX_ITEM_LIST_LENGTH" in overrides:
        raise UsageError("--MAX_ITEM_LIST_LENGTH is set by bench lengths itself: use --lengths=50,200")
    lengths = sorted(own["lengths"])
    dataset = own["dataset"]
    output = own["output"] or os.path.join("results", f"lengths-{dataset}")
    from recbole_ssm.bench import table
    from recbole_ssm.bench.records import parse_model_specs

    labels = [spec.label for spec in parse_model_specs(own["models"])]
    rest = [a for a in argv if a.partition("=")[0].lstrip("-") not in OPTIONS]
    code = 0
    for length in lengths:
        args = [f"--models={own['models']}", f"--dataset={dataset}", f"--seeds={own['seeds']}",
                f"--first_seed={own['first_seed']}", f"--output={os.path.join(output, f'L{length}')}",
                f"--threads={own['threads']}", f"--progress={str(own['progress']).lower()}",
                f"--MAX_ITEM_LIST_LENGTH={length}", *rest]
        if own["report_only"]:
            args.append("--report_only")
        if own["overwrite"]:
            args.append("--overwrite")
        print(f"bench lengths: L={length}", file=sys.stderr, flush=True)
        code = max(code, table.main(args))
    report = write_report(output, labels, lengths, collect(output, labels, lengths), dataset, argv)
    print(report, end="", flush=True)
    print(f"wrote {os.path.join(output, 'lengths.md')}, lengths.csv and lengths.png", file=sys.stderr)
    return code
