"""Filtering interactions: duplicates, iterative k-core, a rating threshold, each user's last rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbole_ssm.data.reading import Interactions


@dataclass
class Filtered:
    """Row indices to write, in output order, and what each step dropped."""

    order: np.ndarray
    steps: dict


def _drop_duplicates(u, i, r, t, keep: np.ndarray) -> int:
    """Clear ``keep`` where a row equals an earlier kept one in all four columns; return how many."""
    idx = np.flatnonzero(keep)
    o = idx[np.lexsort((r[idx], i[idx], t[idx], u[idx]))]  # stable: the first of equal rows comes first
    same = np.zeros(len(o), dtype=bool)
    if len(o) > 1:
        same[1:] = (u[o[1:]] == u[o[:-1]]) & (i[o[1:]] == i[o[:-1]]) & (t[o[1:]] == t[o[:-1]]) & (
            r[o[1:]] == r[o[:-1]])
    keep[o[same]] = False
    return int(same.sum())


def _kcore(u, i, keep: np.ndarray, kcore: int, n_users: int, n_items: int) -> dict:
    """Clear ``keep`` for rows of users or items with fewer than ``kcore`` kept rows, until none is left;
    return what was dropped."""
    users_before = int(np.unique(u[keep]).size)
    items_before = int(np.unique(i[keep]).size)
    rows_before = int(keep.sum())
    passes = 0
    if kcore > 1:
        while True:
            ucnt = np.bincount(u[keep], minlength=n_users)
            icnt = np.bincount(i[keep], minlength=n_items)
            drop = keep & ((ucnt[u] < kcore) | (icnt[i] < kcore))
            if not drop.any():
                break
            keep &= ~drop
            passes += 1
    return {"k": kcore, "passes": passes, "rows": rows_before - int(keep.sum()),
            "users": users_before - int(np.unique(u[keep]).size),
            "items": items_before - int(np.unique(i[keep]).size)}


def filter_rows(table: Interactions, kcore: int, min_rating: float | None, last: int | None = None) -> Filtered:
    """Min-rating filter, exact-duplicate removal, iterative k-core, then stable ordering; with
    ``last``, each user's last ``last`` rows only (after the k-core filter, as for lifelong data).

    Output order is (user in order of first appearance, timestamp, original position).
    A duplicate is a row equal to an earlier one in user, item, rating and timestamp; the
    first is kept. k-core drops users and items with fewer than ``kcore`` rows, again and
    again until every remaining user and item has at least ``kcore``.
    """
    u, i, r, t = table.columns()
    n = len(u)
    keep = np.ones(n, dtype=bool)
    steps: dict = {"rows_in": int(n)}

    if min_rating is not None:
        low = r < np.float32(min_rating)
        keep &= ~low
        steps["below_min_rating"] = int(low.sum())

    steps["duplicates"] = _drop_duplicates(u, i, r, t, keep)
    steps["kcore"] = _kcore(u, i, keep, kcore, len(table.users), len(table.items))
    idx = np.flatnonzero(keep)
    order = idx[np.lexsort((t[idx], u[idx]))]  # lexsort is stable: ties keep file order
    if last is not None:
        users = u[order]  # each user's rows are one run, oldest first
        ends = np.append(np.flatnonzero(np.diff(users)) + 1, len(users))  # end (exclusive) of each run
        run_end = np.repeat(ends, np.diff(np.concatenate([[0], ends])))
        newest = run_end - np.arange(len(users)) <= last
        steps["last"] = {"n": last, "rows": int((~newest).sum())}
        order = order[newest]
    steps["rows_out"] = int(len(order))
    return Filtered(order=order, steps=steps)
