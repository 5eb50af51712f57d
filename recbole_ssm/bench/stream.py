"""``bench stream``: the cost of one more recommendation after one new event, against history length.

For each history length n, in one process: a causal SSM model steps its cached user state
through the new item and scores all items (``step`` + ``score`` + top-k, O(1) in n), while a
model without a step-wise update (SASRec, or the SSM itself as a reference) re-encodes the
last n items with the new one (``full_sort_predict``). Models are untrained (timing only) and
built on synthetic data; all points of a length are measured one after the other, so the
ratios to the baseline are like for like.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

from recbole_ssm.bench.efficiency import SYNTH, synthetic_config, write_synthetic_dataset
from recbole_ssm.bench.records import parse_model_specs
from recbole_ssm.bench.report import csv_text, machine_line, markdown_table, median, save_png
from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help
from recbole_ssm.utils import atomic_write_text

USAGE = """\
usage: run_recbole_ssm.py bench stream [--models=Mamba4Rec,Mamba2Rec,SASRec] [--lengths=100,500,1000,2000,4000]
                                       [--baseline=SASRec] [--repeats=30] [--k=10] [--threads=1]
                                       [--hidden_size=64] [--n_items=3416] [--output=DIR] [--plot_only]

Per-event latency of a recommendation (one new item, top-k over all items) against the length of
the history before it: causal SSMs step a cached state ("step"), every model also re-encodes the
last n items ("re-encode"). Writes DIR/stream.md and DIR/stream.csv (default results/stream) with
each latency's ratio to the baseline's re-encoding at the same length, and the bytes of one
user's cached state, and DIR/stream.png (both latencies against n, log-log). --plot_only redraws
DIR/stream.png from DIR/stream.csv without measuring.
"""

# stream.csv's columns that --plot_only reads back
MODEL, HISTORY, STEP, REENCODE = "Model", "History n", "Step (ms/event)", "Re-encode (ms/event)"

OPTIONS = {
    "models": Opt("Mamba4Rec,Mamba2Rec,SASRec"), "lengths": Opt("100,500,1000,2000,4000", "ints", minimum=1),
    "baseline": Opt("SASRec"), "repeats": Opt(30, "whole", minimum=1), "k": Opt(10, "whole", minimum=1),
    "threads": Opt(1, "whole"), "hidden_size": Opt(64, "whole", minimum=1), "n_items": Opt(3416, "whole", minimum=2),
    "seed": Opt(2020, "whole"), "output": Opt(""), "plot_only": Opt(False, "flag"),
}


def build(name: str, data_root: str, length: int, hidden: int, seed: int, overrides: dict):
    import torch
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    from recbole_ssm import compat
    from recbole_ssm.quick_start import build_config

    spec = {"data_path": data_root, "length": length, "hidden_size": hidden, "device": "cpu", "seed": seed,
            "overrides": overrides}
    config, cls = build_config(name, SYNTH, [], synthetic_config(spec))
    init_seed(seed, True)
    with compat.quiet_recbole():
        dataset = create_dataset(config)
    return cls(config, dataset).eval(), dataset.num(config["ITEM_ID_FIELD"]), torch


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def measure(model, n_items: int, torch, n: int, repeats: int, k: int, seed: int) -> dict:
    from recbole.data.interaction import Interaction

    from recbole_ssm.serve import stepwise

    gen = torch.Generator().manual_seed(seed + n)
    history = torch.randint(1, n_items, (1, n + 1), generator=gen)
    new = torch.randint(1, n_items, (repeats + 1,), generator=gen).tolist()
    out: dict = {}
    with torch.no_grad():
        batch = Interaction({model.ITEM_SEQ: history, model.ITEM_SEQ_LEN: torch.tensor([n + 1])})
        out["reencode_ms"] = 1000 * timed(lambda: torch.topk(model.full_sort_predict(batch), k), repeats)
        if stepwise(model):
            state = model.state_from(history[:, :n], torch.tensor([n]))
            items = iter(new)

            def one_event():
                model.step(state, torch.tensor([next(items)]))
                return torch.topk(model.score(state), k)

            out["step_ms"] = 1000 * timed(one_event, repeats)
            out["state_bytes"] = state.nbytes()
    return out


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    own, overrides = parse(argv, OPTIONS, "bench stream")
    specs = parse_model_specs(own["models"])
    lengths, repeats, k, threads = own["lengths"], own["repeats"], own["k"], own["threads"]
    hidden, n_items, seed = own["hidden_size"], own["n_items"], own["seed"]
    labels = [s.label for s in specs]
    baseline = own["baseline"]
    if baseline not in labels:
        raise UsageError(f"--baseline={baseline} is not one of --models ({', '.join(labels)})")
    output = own["output"] or os.path.join("results", "stream")
    if own["plot_only"]:
        return _replot(output)
    data_root = os.path.abspath(os.path.join(output, "synthetic", f"items{n_items}"))
    if not os.path.isfile(os.path.join(data_root, SYNTH, f"{SYNTH}.inter")):
        write_synthetic_dataset(data_root, n_items)

    import logging

    models = {}
    logging.disable(logging.WARNING)  # RecBole's data set and model logging
    try:
        # one model per name, with positions (SASRec's, RecMamba's) for the longest history re-encoded and for
        # the last event stepped: n + 1 items re-encoded, n + 1 + repeats stepped (the warm-up call included)
        longest = max(lengths) + 1 + repeats
        for spec in specs:
            model, items, torch = build(spec.name, data_root, longest, hidden, seed,
                                        {**overrides, **spec.overrides})
            models[spec.label] = (model, items)
    finally:
        logging.disable(logging.NOTSET)
    if threads:
        torch.set_num_threads(threads)
    results: dict = {}
    for n in lengths:
        for label, (model, items) in models.items():
            print(f"bench stream: {label} n={n}", file=sys.stderr, flush=True)
            results[label, n] = measure(model, items, torch, n, repeats, k, seed)
    text, header, rows = _report(results, labels, lengths, baseline, argv, k, n_items, hidden, repeats, torch)
    os.makedirs(output, exist_ok=True)
    atomic_write_text(os.path.join(output, "stream.md"), text)
    atomic_write_text(os.path.join(output, "stream.csv"), csv_text(header, rows))
    plot(results, labels, lengths, os.path.join(output, "stream.png"),
         f"one event, top-{k} of {n_items} items, hidden {hidden}, {torch.get_num_threads()} thread(s)")
    print(text)
    return 0


def plot(results: dict, labels, lengths, path: str, title: str) -> None:
    """Per-event latency against history length, log-log: one line per model for re-encoding the
    history, one dashed line per model that steps a cached state (PNG, written whole or not at all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, label in enumerate(labels):
        colour = f"C{i}"
        ax.plot(lengths, [results[label, n]["reencode_ms"] for n in lengths], marker="o", color=colour,
                label=f"{label}: re-encode history")
        steps = [results[label, n].get("step_ms") for n in lengths]
        if all(steps):
            ax.plot(lengths, steps, marker="s", linestyle="--", color=colour, label=f"{label}: step cached state")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events in the history before the new one (n)")
    ax.set_ylabel("ms per new event")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    save_png(fig, path)


def _replot(output: str) -> int:
    """stream.png from a finished run's stream.csv (the measurements it holds, nothing new)."""
    import csv

    path = os.path.join(output, "stream.csv")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise UsageError(f"--plot_only: no {path}; run bench stream with --output={output} first") from None
    if not rows or not {MODEL, HISTORY, STEP, REENCODE} <= rows[0].keys():
        raise UsageError(f"--plot_only: {path} is not a bench stream table")
    labels = list(dict.fromkeys(r[MODEL] for r in rows))
    lengths = sorted({int(r[HISTORY]) for r in rows})
    results = {}
    for r in rows:
        point = {"reencode_ms": float(r[REENCODE])}
        if r[STEP] != "-":
            point["step_ms"] = float(r[STEP])
        results[r[MODEL], int(r[HISTORY])] = point
    missing = [(m, n) for m in labels for n in lengths if (m, n) not in results]
    if missing:
        raise UsageError(f"--plot_only: {path} lacks {missing[0][0]} at n={missing[0][1]}")
    plot(results, labels, lengths, os.path.join(output, "stream.png"), f"per-event latency (bench stream), from {path}")
    print(f"bench stream: wrote {os.path.join(output, 'stream.png')}", file=sys.stderr)
    return 0


def _report(results: dict, labels, lengths, baseline: str, argv, k: int, n_items: int, hidden: int, repeats: int,
            torch) -> tuple[str, list, list]:
    """stream.md's text, and the table's header and rows (for stream.csv)."""
    header = [MODEL, HISTORY, STEP, REENCODE, f"{baseline} re-encode / step",
              "Re-encode / baseline re-encode", "State (bytes/user)"]
    rows = []
    for label in labels:
        for n in lengths:
            r, base = results[label, n], results[baseline, n]["reencode_ms"]
            step = r.get("step_ms")
            rows.append([label, n, f"{step:.3f}" if step else "-", f"{r['reencode_ms']:.3f}",
                         f"{base / step:.1f}x" if step else "-", f"{r['reencode_ms'] / base:.2f}",
                         r.get("state_bytes", "-")])
    flat = []
    for label in labels:
        steps = [results[label, n].get("step_ms") for n in lengths]
        if all(steps):
            flat.append(f"{label}: slowest step / fastest step over n = {max(steps) / min(steps):.2f}")
    command = "python run_recbole_ssm.py bench stream " + " ".join(argv)
    text = (
        f"# Per-event recommendation latency against history length (top-{k} of {n_items} items)\n\n"
        f"Command: `{command}`\n\nMachine: {machine_line()}; {torch.get_num_threads()} torch thread(s), "
        f"hidden size {hidden}, median of {repeats} events after one warm-up.\n\n"
        f"Written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}.\n\n"
        + markdown_table(header, rows) + "\n\n" + "\n".join(f"- {line}" for line in flat) + "\n"
    )
    return text, header, rows
