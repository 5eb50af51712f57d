"""``bench ddp``: training epoch time of one model with 1, 2, ... data-parallel processes (``--nproc``).

Each process count trains the same model, data and seed for a few epochs, one run after the
other in this process's machine; the table gives the median epoch time, its ratio to the first
process count, and the test metrics (rank 0's single evaluation). On a CPU every run has the
machine's cores: ``nproc`` processes get ``cores // nproc`` torch threads each.
"""

from __future__ import annotations

import datetime
import os
import sys

from recbole_ssm.bench import report
from recbole_ssm.options import Opt, parse, wants_help
from recbole_ssm.utils import atomic_write_text

USAGE = """\
usage: run_recbole_ssm.py bench ddp [--model=Mamba2Rec] [--dataset=ml-100k] [--nprocs=1,2] [--epochs=3]
                                    [--train_targets=all] [--output=DIR] [--KEY=VALUE ...]

Trains --model on --dataset for --epochs with each process count of --nprocs (docs/distributed.md)
and writes DIR/ddp.md and DIR/ddp.csv (default results/ddp): median epoch time, its ratio to the
first count, and test metrics. Other --KEY=VALUE settings go to every run.
"""

OPTIONS = {"model": Opt("Mamba2Rec"), "dataset": Opt("ml-100k"), "nprocs": Opt("1,2", "ints", minimum=1),
           "epochs": Opt(3, "whole", minimum=1), "train_targets": Opt("all"), "output": Opt("")}


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    own, overrides = parse(argv, OPTIONS, "bench ddp")
    nprocs, epochs = own["nprocs"], own["epochs"]
    output = own["output"] or os.path.join("results", "ddp")

    from recbole_ssm.quick_start import run

    rows, first = [], None
    for nproc in nprocs:
        print(f"bench ddp: {own['model']} nproc={nproc}", file=sys.stderr, flush=True)
        settings = {**overrides, "epochs": epochs, "nproc": nproc, "train_targets": own["train_targets"],
                    "stopping_step": epochs + 1, "show_progress": False, "state": "WARNING"}
        out = run(own["model"], own["dataset"], None, settings, saved=False)
        times = out.timings.get("epoch_times") or list(out.trainer.epoch_times)
        epoch_s = report.median(times)
        first = first or epoch_s
        test = out.result["test_result"] or {}
        rows.append([own["model"], nproc, f"{epoch_s:.1f}", f"{first / epoch_s:.2f}x", len(times),
                     *(f"{test.get(k, float('nan')):.4f}" for k in ("hit@10", "ndcg@10"))])
    header = ["Model", "nproc", "Epoch (s, median)", f"Speed-up vs nproc={nprocs[0]}", "Epochs", "Test Hit@10",
              "Test NDCG@10"]
    command = "python run_recbole_ssm.py bench ddp " + " ".join(argv)
    text = (
        f"# Data-parallel training: epoch time against process count ({own['dataset']}, "
        f"train_targets={own['train_targets']})\n\n"
        f"Command: `{command}`\n\nMachine: {report.machine_line()}; {os.cpu_count()} cores shared by the processes.\n\n"
        f"Written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}.\n\n"
        + report.markdown_table(header, rows) + "\n"
    )
    os.makedirs(output, exist_ok=True)
    atomic_write_text(os.path.join(output, "ddp.md"), text)
    atomic_write_text(os.path.join(output, "ddp.csv"), report.csv_text(header, rows))
    print(text)
    return 0
