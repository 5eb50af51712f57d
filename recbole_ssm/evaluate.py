"""``run_recbole_ssm.py evaluate``: the metrics of a saved checkpoint, under its own protocol or
with the user's history left out of the ranking (``--eval_filter_seen``, recbole_ssm/seen.py), for
all evaluated users or by how long their history before the target is (``--by_history``)."""

from __future__ import annotations

import json
import sys

import numpy as np

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help

USAGE = """\
usage: run_recbole_ssm.py evaluate --checkpoint=PATH [--split=test|valid|both]
                                   [--eval_filter_seen=true|false] [--by_history=N,N,...]
                                   [--format=text|json]

Scores a model a training run saved on its own data set's validation and/or test split, with
RecBole's full-sort evaluation, as the run did (same metrics, same numbers).
  --checkpoint        a .pth file written by a training run (its data set must be where it was)
  --split             test, valid or both (the default)
  --eval_filter_seen  true: leave each user's history before the target out of the ranking (as
                      SASRec+'s and LRURec's code do); false: rank every item (RecBole's way);
                      default: the checkpoint's own setting
  --by_history        also score the users in groups by how many items of their whole history
                      come before the evaluated target, cut at these counts: 200 gives 1-200 and
                      201+ (the model may read fewer: MAX_ITEM_LIST_LENGTH). Each group's metrics
                      are RecBole's on that group's rows alone
  --format            text (one line a split, like a training run's) or json
"""

OPTIONS = {
    "checkpoint": Opt(None),
    "split": Opt("both", "choice", choices=("test", "valid", "both")),
    "eval_filter_seen": Opt(None, "flag"),
    "by_history": Opt(None),
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
    cuts = None
    if opts["by_history"] is not None:
        cuts = sorted(Opt(None, "ints", minimum=1).read("by_history", opts["by_history"]))

    from recbole_ssm.checkpoint import evaluation_run, score_splits
    from recbole_ssm.seen import SeenItems
    from recbole_ssm.utils import format_metrics

    splits = ("valid", "test") if opts["split"] == "both" else (opts["split"],)
    config, trainer, dataset, loaders = evaluation_run(opts["checkpoint"], settings)
    results = score_splits(trainer, loaders, splits)
    groups = {}
    if cuts:
        seen = SeenItems.from_dataset(dataset)  # once, for every split
        groups = {name: metrics_by_history(trainer, dataset, loaders[name], cuts, seen) for name in splits}
    filtered = bool(config["eval_filter_seen"])
    if opts["format"] == "json":
        print(json.dumps({"model": config["model"], "dataset": config["dataset"], "eval_filter_seen": filtered,
                          **{name: {k: float(v) for k, v in res.items()} for name, res in results.items()},
                          **{f"{name}_by_history": rows for name, rows in groups.items()}}))
    else:
        print(f"model={config['model']} dataset={config['dataset']} eval_filter_seen={filtered}")
        for name, res in results.items():
            print(format_metrics(name, res))
            for row in groups.get(name, []):
                metrics = {k: v for k, v in row.items() if k not in ("history", "rows")}
                print(f"{format_metrics(name, metrics or None)}  history={row['history']} rows={row['rows']}")
    sys.stdout.flush()
    return 0


def history_lengths(seen, dataset, loader) -> np.ndarray:
    """For each row of an evaluation loader, how many items of the user's whole sequence come
    before the row's target (not capped at MAX_ITEM_LIST_LENGTH; ``seen.SeenItems.position``)."""
    rows = loader._dataset.inter_feat
    users = rows[dataset.uid_field].numpy()
    targets = rows[dataset.iid_field].numpy()
    lists = rows[dataset.item_id_list_field].numpy()
    lengths = rows[dataset.item_list_length_field].numpy()
    return np.array([seen.position(u, t, lists[r, :n], lists.shape[1])
                     for r, (u, t, n) in enumerate(zip(users, targets, lengths))], dtype=np.int64)


def metrics_by_history(trainer, dataset, loader, cuts: list[int], seen) -> list[dict]:
    """The loader's rows in groups by history length before the target (1..cuts[0],
    cuts[0]+1..cuts[1], ..., cuts[-1]+1 and more; ``seen``: the data set's ``SeenItems``), each
    scored by ``trainer.evaluate`` on a loader of that group's rows alone:
    ``{"history": "1-200", "rows": n, metric: value, ...}`` a group (no metrics for an empty one)."""
    import torch

    from recbole_ssm import compat

    group = np.searchsorted(cuts, history_lengths(seen, dataset, loader))  # cuts[g-1] < length <= cuts[g]
    edges = [0, *cuts]
    out = []
    for g, low in enumerate(edges):
        idx = np.flatnonzero(group == g)
        row = {"history": f"{low + 1}-{edges[g + 1]}" if g < len(cuts) else f"{low + 1}+", "rows": int(len(idx))}
        if len(idx):
            part = loader._dataset.copy(loader._dataset.inter_feat[torch.from_numpy(idx)])
            sub = type(loader)(trainer.config, part, loader._sampler, shuffle=False)
            sub.seen_items = getattr(loader, "seen_items", None)
            with compat.quiet_recbole():
                row.update({k: float(v) for k, v in trainer.evaluate(sub, load_best_model=False).items()})
        out.append(row)
    return out
