"""``run_recbole_ssm.py bench {table,lengths,efficiency,regimes,stream,ddp,recommend,serve,ops}``
(or ``python -m recbole_ssm.bench ...``)."""

from __future__ import annotations

import sys

from recbole_ssm.errors import UsageError
from recbole_ssm.options import wants_help

USAGE = """\
usage: run_recbole_ssm.py bench table --models=A,B --dataset=NAME [--seeds=3] [--output=DIR] [...]
       run_recbole_ssm.py bench lengths --models=A,B --lengths=50,200 --dataset=NAME [...]
       run_recbole_ssm.py bench efficiency --models=A,B --lengths=50,200 [--batch=16] [--device=cpu] [...]
       run_recbole_ssm.py bench regimes --models=A,B --dataset=NAME [--batches=5] [...]
       run_recbole_ssm.py bench stream [--models=A,B] [--lengths=100,2000] [...]
       run_recbole_ssm.py bench ddp [--model=A] [--nprocs=1,2] [...]
       run_recbole_ssm.py bench recommend (--checkpoint=PATH | --synthetic) [...]
       run_recbole_ssm.py bench serve (--models=A,B --dataset=NAME | --checkpoints=CK1,CK2) [...]
       run_recbole_ssm.py bench ops [...]       kernel micro-benchmarks (when installed)

  table       train and test each model per seed; mean +- std table (table.md, table.csv)
  lengths     bench table at several history lengths (MAX_ITEM_LIST_LENGTH); accuracy against
              length (lengths.md, lengths.csv, lengths.png)
  efficiency  training-step time, inference time and peak memory against sequence length on
              synthetic sequences (efficiency.csv, PNG plots), with ratios to SASRec
  regimes     training epoch time and memory under train_targets=last against all, on real data
  stream      per-event recommendation latency against history length: stepping a cached SSM
              state against re-encoding the history (SASRec)
  ddp         training epoch time with 1, 2, ... data-parallel processes (--nproc)
  recommend   every user's top-k: batched against one user at a time (a checkpoint), or the
              export of a synthetic catalogue (wall time, peak RSS)
  serve       the HTTP service under a closed-loop load on loopback: throughput, p50/p99
              latency and RSS per model, answers checked against the offline recommendation
Run `bench COMMAND --help` for a command's options.
"""

COMMANDS = {
    "table": "recbole_ssm.bench.table",
    "lengths": "recbole_ssm.bench.lengths",
    "efficiency": "recbole_ssm.bench.efficiency",
    "ops": "recbole_ssm.bench.ops",
    "regimes": "recbole_ssm.bench.regimes",
    "stream": "recbole_ssm.bench.stream",
    "ddp": "recbole_ssm.bench.ddp",
    "recommend": "recbole_ssm.bench.recommend",
    "serve": "recbole_ssm.bench.serve",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a bench command; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or wants_help(argv):
        print(USAGE, end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module = COMMANDS.get(name)
    if module is None:
        raise UsageError(f"unknown bench command {name!r}: use one of {', '.join(COMMANDS)}")
    from recbole_ssm.entry import load_command

    return int(load_command(module, f"bench {name!r}").main(rest) or 0)


def console_main(argv: list[str] | None = None) -> int:
    """``python -m recbole_ssm.bench``: like ``run_recbole_ssm.py bench`` with one-line errors."""
    from recbole_ssm.entry import guarded

    return guarded(main, argv)
