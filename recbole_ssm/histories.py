"""Users' histories rebuilt from a built RecBole data set: the one home of that logic.

- :func:`training_histories`: each user's training history, from RecBole's prefix rows of the
  training split (``last``), as flat ``(items, offsets, users)`` tensors;
- :func:`histories_of`: the same triple, kept by a window regime's data set or rebuilt;
- :func:`user_histories`: every user's items over all of the data set's interactions (training,
  validation and test), as a dict, for serving, recommending and ``eval_filter_seen``.

A leaf module: numpy and torch only.
"""

from __future__ import annotations

import numpy as np
import torch


def training_histories(dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each user's training history, rebuilt from RecBole's prefix samples of the training split.

    RecBole keeps a user's prefix samples together and in time order; the first sample's item
    list starts the history and each sample's target extends it. Returns
    ``(items, offsets, users)``: the histories concatenated (N,), their bounds (U + 1,) and
    their users (U,). Raises ValueError where the samples do not chain (a RecBole change).
    """
    feat = dataset.inter_feat
    seq_field, len_field = dataset.item_id_list_field, dataset.item_list_length_field
    users = feat[dataset.uid_field].numpy()
    targets = feat[dataset.iid_field].numpy()
    lengths = feat[len_field].numpy()
    lists = feat[seq_field].numpy()
    n = len(users)
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, torch.zeros(1, dtype=torch.long), empty
    first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])  # first sample of each user's run
    if len(np.unique(users[first])) != len(first):
        raise ValueError("training samples of a user are not contiguous: cannot rebuild histories")
    # inside a run, sample r + 1's item list ends with sample r's target
    inner = np.setdiff1d(np.arange(1, n), first)
    last_input = lists[inner, lengths[inner] - 1]
    if not np.array_equal(last_input, targets[inner - 1]):
        raise ValueError("training samples do not chain in time order: cannot rebuild histories")
    run_ends = np.r_[first[1:], n]
    parts = []
    for start, end in zip(first, run_ends):  # the first sample's item list, then the run's targets
        parts += [lists[start, : lengths[start]], targets[start:end]]
    sizes = (lengths[first] + run_ends - first).astype(np.int64)  # (U,)
    items = torch.from_numpy(np.concatenate(parts).astype(np.int64))
    offsets = torch.from_numpy(np.r_[0, np.cumsum(sizes)])
    return items, offsets, torch.from_numpy(users[first].astype(np.int64))


def histories_of(dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``training_histories``'s triple for a training split: the flat histories a
    :class:`~recbole_ssm.regime.WindowDataset` keeps (``all``, ``cloze``), else rebuilt from
    RecBole's prefix rows (``last``)."""
    flat = getattr(dataset, "train_histories", None)
    return flat if flat is not None else training_histories(dataset)


def user_histories(dataset) -> dict[int, np.ndarray]:
    """Every user's items (internal ids) in time order, over all of the data set's interactions.

    A :class:`~recbole_ssm.regime.WindowDataset` keeps them (``user_sequences``). RecBole's
    SequentialDataset holds one row per prefix: a user's first row lists the first item, and
    the rows' targets are the items after it.
    """
    kept = getattr(dataset, "user_sequences", None)
    if kept is not None:
        return kept
    inter = dataset.inter_feat
    users = inter[dataset.uid_field].numpy()
    items = inter[dataset.iid_field].numpy()
    lists = inter[dataset.item_id_list_field].numpy()
    keys: list[np.ndarray] = [users]
    if dataset.time_field and dataset.time_field in inter:
        keys.insert(0, inter[dataset.time_field].numpy())
    order = np.lexsort(keys)  # by user, then time; stable
    users, items, lists = users[order], items[order], lists[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    return {int(u[0]): np.r_[first[0, :1], i] for u, i, first in
            zip(np.split(users, cuts), np.split(items, cuts), np.split(lists, cuts)) if len(u)}
