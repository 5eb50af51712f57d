"""Full-sort evaluation without the items a user has already seen (``eval_filter_seen: True``).

RecBole ranks every item when it evaluates a sequential model, the items of the user's own
history included. Some published protocols remove those items from the ranking first (the
SASRec+ code of Klenitskiy & Vasilev and LRURec's, both on MovieLens-1M), which lifts Hit and
NDCG wherever a model gives part of its top 10 to items the user has had. ``eval_filter_seen``
gives that protocol, so such numbers can be compared like with like; RecBole's stays the default.

What is removed: every item of the user's whole history before the evaluated target, not only
the last ``MAX_ITEM_LIST_LENGTH`` items the model reads. A target the user had seen before is
removed too, so it counts as a miss (the same as in those protocols; it cannot happen on
MovieLens, where a user rates a movie once).

:class:`SeenItems` keeps each user's whole item sequence in time order and finds an evaluation
row's place in it: the row's target with the row's item list right before it. The evaluation
loaders carry it (``loader.seen_items``, set by :func:`attach`), and
:class:`recbole_ssm.trainer.TrainerHooks` sets the scores of those items to minus infinity.
"""

from __future__ import annotations

import numpy as np
import torch

from recbole_ssm.errors import ConfigError
from recbole_ssm.histories import user_histories


class SeenItems:
    """Each user's items in time order; ``mask(interaction)`` gives the (row, item) pairs to leave out."""

    def __init__(self, sequences: dict[int, np.ndarray]) -> None:
        self.sequences = {int(u): np.asarray(s, dtype=np.int64) for u, s in sequences.items()}

    @classmethod
    def from_dataset(cls, dataset) -> SeenItems:
        """From a built sequential data set (RecBole's prefix rows or a window regime's histories)."""
        return cls(user_histories(dataset))

    def position(self, user: int, target: int, history: np.ndarray, width: int) -> int:
        """Index of the row's target in the user's sequence. ``history`` is the row's item list
        (oldest first), ``width`` the list's capacity: a list that is not full is the whole prefix,
        so the target is right after it; a full one is the end of the prefix, and the target is the
        last place where it follows those items (two such places hold the same items before them
        but for a stretch that repeats). Raises ValueError where there is none."""
        seq = self.sequences.get(int(user))
        if seq is None:
            raise ValueError(f"user {user} has no sequence")
        k = len(history)
        places = [k] if k < width else np.flatnonzero(seq == target)[::-1]
        for p in places:
            if k <= p < len(seq) and seq[p] == target and np.array_equal(seq[p - k: p], history):
                return int(p)
        raise ValueError(f"the evaluation row of user {user} (target {target}) is not in the user's sequence")

    def mask(self, interaction, uid_field: str, iid_field: str, list_field: str, len_field: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, items) of the batch whose scores are to be minus infinity: for each row, the
        distinct items of its user's sequence before its target."""
        users = interaction[uid_field].cpu().numpy()
        targets = interaction[iid_field].cpu().numpy()
        lists = interaction[list_field].cpu().numpy()
        lengths = interaction[len_field].cpu().numpy()
        rows, cols = [], []
        for r, (u, t, n) in enumerate(zip(users, targets, lengths)):
            p = self.position(u, t, lists[r, :n], lists.shape[1])
            seen = np.unique(self.sequences[int(u)][:p])
            rows.append(np.full(len(seen), r, dtype=np.int64))
            cols.append(seen)
        if not rows:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        return torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))


def check(config) -> bool:
    """``config['eval_filter_seen']`` (False when unset); a ConfigError where it cannot apply."""
    value = config["eval_filter_seen"]
    if not value:
        return False
    mode = config["eval_args"]["mode"] if config["eval_args"] else "full"
    modes = mode.values() if isinstance(mode, dict) else [mode]
    if any(m != "full" for m in modes):
        raise ConfigError(f"eval_filter_seen=True needs full-sort evaluation (eval_args mode: full), not {mode!r}; "
                          "set eval_filter_seen=False or mode: full")
    return True


def attach(config, dataset, *loaders) -> None:
    """Give the evaluation loaders the data set's :class:`SeenItems` when ``eval_filter_seen`` is on."""
    if not check(config):
        return
    seen = SeenItems.from_dataset(dataset)
    for loader in loaders:
        loader.seen_items = seen


def evaluate_history_left_out(trainer, dataset, loader) -> dict:
    """The metrics of ``trainer``'s model as it is now on ``loader`` (an evaluation split of
    ``dataset``), with each user's history before the target left out of the ranking: what
    ``eval_filter_seen: True`` would have reported, whatever the run's own setting."""
    from recbole_ssm import compat

    kept = getattr(loader, "seen_items", None)
    loader.seen_items = SeenItems.from_dataset(dataset)
    try:
        with compat.quiet_recbole():
            return trainer.evaluate(loader, load_best_model=False)
    finally:
        loader.seen_items = kept
