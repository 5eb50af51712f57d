"""One table across several ``bench table`` outputs: the same models under different settings.

    python tools/compare_runs.py LABEL=DIR [LABEL=DIR ...] [--models=A,B] [--seeds=2020,2021,2022]
        [--columns=ndcg@10,hit@10,ndcg@10_seen_out,epoch_s,epochs,fit_peak_mib]

Each DIR is a ``bench table --output`` folder; its finished runs (``runs/*.json``) are grouped by
model, and each (model, LABEL) row gives mean ± std over the seeds found (or those of
``--seeds``), as ``bench table`` computes them (bench.table.COLUMNS, bench.report.mean_std).
Rows are ordered by model, then by the order of the arguments. Prints a markdown table, e.g.

    python tools/compare_runs.py "full CE=results/beauty-all-ce0" 64=results/beauty-all-ce64 \\
        256=results/beauty-all-ce256 1024=results/beauty-all-ce1024
"""

from __future__ import annotations

import os
import sys

DEFAULT_COLUMNS = "ndcg@10,hit@10,ndcg@10_seen_out,valid,epoch_s,epochs,fit_peak_mib"


def load_runs(folder: str) -> list[dict]:
    """The finished runs of one ``bench table`` output folder (read as bench table reads them)."""
    from recbole_ssm.bench.table import other_runs

    return list(other_runs(folder, set()).values())


def compare(groups: list[tuple[str, list[dict]]], columns: list[str], models: list[str] | None = None,
            seeds: list[int] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per (model, label) with runs; cells as ``bench table`` writes them."""
    from recbole_ssm.bench.report import cell, mean_std
    from recbole_ssm.bench.table import COLUMNS, _name_valid_metric

    by_name = {name: (head, get, kind) for name, head, get, kind in COLUMNS}
    unknown = [c for c in columns if c not in by_name or by_name[c][2] == "int"]
    if unknown:
        usable = ", ".join(n for n, (_h, _g, k) in by_name.items() if k != "int")
        raise SystemExit(f"error: unknown column(s) {', '.join(unknown)}; choose from {usable}")
    order = models or list(dict.fromkeys(r["model"] for _label, runs in groups for r in runs))
    every = {(i, j): r for i, (_label, runs) in enumerate(groups) for j, r in enumerate(runs)}
    header = _name_valid_metric(["Model", "Setting", "Seeds"] + [by_name[c][0] for c in columns], every)
    rows = []
    for model in order:
        for label, runs in groups:
            chosen = [r for r in runs if r["model"] == model and (seeds is None or r["seed"] in seeds)]
            if not chosen:
                continue
            row = [model, label, ",".join(str(s) for s in sorted(r["seed"] for r in chosen))]
            for c in columns:
                _head, get, kind = by_name[c]
                m, s = mean_std(get(r) for r in chosen)
                row.append(cell(m, s, 4 if kind == "metric" else None))
            rows.append(row)
    return header, rows


def main(argv: list[str]) -> int:
    from recbole_ssm.bench.report import markdown_table
    from recbole_ssm.errors import UsageError
    from recbole_ssm.options import Opt, parse

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    pairs = [a for a in argv if not a.startswith("--")]
    spec = {"models": Opt(None), "seeds": Opt(None), "columns": Opt(DEFAULT_COLUMNS)}
    try:
        opts, _ = parse([a for a in argv if a.startswith("--")], spec, "compare_runs", settings=False)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not pairs or any("=" not in p for p in pairs):
        print("error: pass LABEL=DIR pairs and only --models, --seeds, --columns (see --help)", file=sys.stderr)
        return 2
    groups = []
    for pair in pairs:
        label, folder = pair.split("=", 1)
        if not os.path.isdir(os.path.join(folder, "runs")):
            print(f"error: {folder} has no runs/ folder: give a bench table --output folder", file=sys.stderr)
            return 2
        groups.append((label, load_runs(folder)))
    models = opts["models"].split(",") if opts.get("models") else None
    seeds = [int(s) for s in opts["seeds"].split(",")] if opts.get("seeds") else None
    header, rows = compare(groups, opts["columns"].split(","), models, seeds)
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
