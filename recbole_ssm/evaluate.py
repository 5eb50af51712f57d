"""``run_recbole_ssm.py evaluate``: the metrics of a saved checkpoint, under its own protocol or
with the user's history left out of the ranking (``--eval_filter_seen``, recbole_ssm/seen.py)."""

from __future__ import annotations

import json
import sys

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help

USAGE = """\
usage: run_recbole_ssm.py evaluate --checkpoint=PATH [--split=test|valid|both]
                                   [--eval_filter_seen=true|false] [--format=text|json]

Scores a model a training run saved on its own data set's validation and/or test split, with
RecBole's full-sort evaluation, as the run did (same metrics, same numbers).
  --checkpoint        a .pth file written by a training run (its data set must be where it was)
  --split             test, valid or both (the default)
  --eval_filter_seen  true: leave each user's history before the target out of the ranking (as
                      SASRec+'s and LRURec's code do); false: rank every item (RecBole's way);
                      default: the checkpoint's own setting
  --format            text (one line a split, like a training run's) or json
"""

OPTIONS = {
    "checkpoint": Opt(None),
    "split": Opt("both", "choice", choices=("test", "valid", "both")),
    "eval_filter_seen": Opt(None, "flag"),
    "format": Opt("text", "choice", choices=("text", "json")),
}


def main(argv: list[str]) -> int:
    if wants_help(argv) or any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    opts = parse(argv, OPTIONS, "evaluate", settings=False)[0]
    if opts["checkpoint"] is None:
        raise UsageError("evaluate needs --checkpoint=PATH (a .pth file written by a training run)")
    settings = {} if opts["eval_filter_seen"] is None else {"eval_filter_seen": opts["eval_filter_seen"]}

    from recbole_ssm.quick_start import evaluate_splits, format_metrics

    splits = ("valid", "test") if opts["split"] == "both" else (opts["split"],)
    config, results = evaluate_splits(opts["checkpoint"], splits, settings)
    filtered = bool(config["eval_filter_seen"])
    if opts["format"] == "json":
        print(json.dumps({"model": config["model"], "dataset": config["dataset"], "eval_filter_seen": filtered,
                          **{name: {k: float(v) for k, v in res.items()} for name, res in results.items()}}))
    else:
        print(f"model={config['model']} dataset={config['dataset']} eval_filter_seen={filtered}")
        for name, res in results.items():
            print(format_metrics(name, res))
    sys.stdout.flush()
    return 0
