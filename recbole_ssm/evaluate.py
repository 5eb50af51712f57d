"""``run_recbole_ssm.py evaluate``: the metrics of a saved checkpoint, under its own protocol or
with the user's history left out of the ranking (``--eval_filter_seen``, recbole_ssm/seen.py), for
all evaluated users or by how long their history before the target is (``--by_history``), and
where the target's rank falls under both protocols, with how peaked the model's scores are
(``--ranks``)."""

from __future__ import annotations

import json
import sys

import numpy as np

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help

USAGE = """\
usage: run_recbole_ssm.py evaluate --checkpoint=PATH [--split=test|valid|both]
                                   [--eval_filter_seen=true|false] [--by_history=N,N,...]
                                   [--ranks=N] [--format=text|json]

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
  --ranks             also profile each split's ranking, under RecBole's ranking and with the
                      history left out: how many targets land at each rank 1..N (and past N),
                      how much of the top 10 goes to items of the user's history, and how peaked
                      the scores are (softmax probability of the top item and of the target,
                      entropy in nats); json gives the whole histogram
  --format            text (one line a split, like a training run's) or json
"""

OPTIONS = {
    "checkpoint": Opt(None),
    "split": Opt("both", "choice", choices=("test", "valid", "both")),
    "eval_filter_seen": Opt(None, "flag"),
    "by_history": Opt(None),
    "ranks": Opt(None, "whole", minimum=10),
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
    seen = SeenItems.from_dataset(dataset) if cuts or opts["ranks"] else None  # once, for every split
    groups = {name: metrics_by_history(trainer, dataset, loaders[name], cuts, seen) for name in splits} if cuts else {}
    profiles = {name: rank_profile(trainer, loaders[name], seen, opts["ranks"]) for name in splits} \
        if opts["ranks"] else {}
    filtered = bool(config["eval_filter_seen"])
    if opts["format"] == "json":
        print(json.dumps({"model": config["model"], "dataset": config["dataset"], "eval_filter_seen": filtered,
                          **{name: {k: float(v) for k, v in res.items()} for name, res in results.items()},
                          **{f"{name}_by_history": rows for name, rows in groups.items()},
                          **{f"{name}_ranks": profile for name, profile in profiles.items()}}))
    else:
        print(f"model={config['model']} dataset={config['dataset']} eval_filter_seen={filtered}")
        for name, res in results.items():
            print(format_metrics(name, res))
            for row in groups.get(name, []):
                metrics = {k: v for k, v in row.items() if k not in ("history", "rows")}
                print(f"{format_metrics(name, metrics or None)}  history={row['history']} rows={row['rows']}")
            if name in profiles:
                print(format_profile(name, profiles[name]))
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


# buckets of the text output; json gives every rank
RANK_BUCKETS = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 50))


def rank_profile(trainer, loader, seen, max_rank: int) -> dict:
    """Where each evaluated target's rank falls and how peaked the scores are, on ``loader``.

    Scores are RecBole's full-sort scores (the padding item at minus infinity). The target's rank
    is 1 + the number of items scored above it, under RecBole's ranking (``all``) and with the
    user's history before the target left out (``seen_out``: ``seen``, a ``SeenItems``; a target
    in that history counts as past every rank). Returns, for each protocol: ``hist`` (targets at
    ranks 1..max_rank), ``past`` (beyond max_rank), ``rows``, ``hit@10`` and ``ndcg@10`` from those
    ranks; and ``top10_in_history`` (share of RecBole's top-10 slots on history items),
    ``p_top`` and ``p_target`` (mean softmax probability of the top item and of the target, under
    RecBole's ranking) and ``entropy`` (mean entropy of that softmax, nats)."""
    import math

    import torch
    from recbole.trainer import Trainer

    c = trainer.config
    fields = (c["USER_ID_FIELD"], c["ITEM_ID_FIELD"], c["ITEM_ID_FIELD"] + c["LIST_SUFFIX"],
              c["ITEM_LIST_LENGTH_FIELD"])
    ranks = {"all": [], "seen_out": []}
    in_history = p_top = p_target = entropy = 0.0
    rows = 0
    trainer.tot_item_num = loader._dataset.item_num  # what RecBole's evaluate sets for its scoring
    trainer.model.eval()
    with torch.no_grad():
        for batch in loader:
            interaction, scores, positive_u, positive_i = Trainer._full_sort_batch_eval(trainer, batch)
            scores = scores.double().cpu()
            at_target = (positive_u.cpu(), positive_i.cpu())  # (row, target item) of each row
            target = scores[at_target].unsqueeze(1)  # (B, 1)
            ranks["all"].append(1 + (scores > target).sum(1))
            r, i = seen.mask(interaction, *fields)
            history = torch.zeros_like(scores, dtype=torch.bool)
            history[r, i] = True
            left = scores.masked_fill(history, -math.inf)
            hidden = history[at_target]  # the target is in the user's history
            rank = 1 + (left > target).sum(1)
            ranks["seen_out"].append(torch.where(hidden, torch.full_like(rank, max_rank + 1), rank))
            in_history += history.gather(1, scores.topk(10, dim=1).indices).double().sum().item() / 10
            logp = torch.log_softmax(scores, dim=1)
            p = logp.exp()
            p_top += p.max(1).values.sum().item()
            p_target += p[at_target].sum().item()
            entropy -= torch.where(p > 0, p * logp, torch.zeros_like(p)).sum().item()
            rows += scores.size(0)
    out = {"rows": rows, "top10_in_history": in_history / max(rows, 1), "p_top": p_top / max(rows, 1),
           "p_target": p_target / max(rows, 1), "entropy": entropy / max(rows, 1)}
    for name, parts in ranks.items():
        rank = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        hist = torch.bincount(rank.clamp(max=max_rank + 1), minlength=max_rank + 2)[1:]
        gain = torch.where(rank <= 10, 1.0 / torch.log2(rank.double() + 1), torch.zeros(len(rank), dtype=torch.float64))
        out[name] = {"hist": hist[:max_rank].tolist(), "past": int(hist[max_rank]),
                     "hit@10": float((rank <= 10).double().mean()) if rows else math.nan,
                     "ndcg@10": float(gain.mean()) if rows else math.nan}
    return out


def format_profile(split: str, profile: dict) -> str:
    """The text lines of ``rank_profile``: per protocol, the share of targets in each rank bucket."""
    lines = []
    for name, label in (("all", "ranks, RecBole's ranking"), ("seen_out", "ranks, history left out")):
        part, rows = profile[name], max(profile["rows"], 1)
        cells = [f"{lo}{'' if lo == hi else f'-{hi}'}={sum(part['hist'][lo - 1:hi]) / rows:.4f}"
                 for lo, hi in RANK_BUCKETS if hi <= len(part["hist"])]
        lines.append(f"{split:5s} {label}: " + "  ".join(cells) + f"  past {len(part['hist'])}="
                     f"{part['past'] / rows:.4f}  hit@10={part['hit@10']:.4f}  ndcg@10={part['ndcg@10']:.4f}")
    lines.append(f"{split:5s} scores: top10_in_history={profile['top10_in_history']:.4f}  p_top={profile['p_top']:.4f}"
                 f"  p_target={profile['p_target']:.4f}  entropy={profile['entropy']:.3f}")
    return "\n".join(lines)

