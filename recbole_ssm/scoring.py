"""Top-k items for many users in bounded memory: item scores a chunk of the catalogue at a time.

Scoring B users against n items at once holds a (B, n) matrix: 4,096 users against 207,649 items
is 3.4 GB. :func:`chunked_topk` scores ``chunk`` items at a time and keeps a running top-k, so
at most (B, chunk + k) scores are alive. :func:`dense_topk` is the plain formula beside it.

Items excluded from a user's ranking (the padding item 0 always, and with ``exclude_seen`` the
items already in the user's history) score ``-inf``; a row with fewer than k rankable items ends
in ``-inf`` entries, which callers drop.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from recbole.evaluator.collector import Collector

SCORE_BUDGET_MIB = 64.0  # scores of one chunk of items for a batch of users (one buffer, reused)


class TopK(NamedTuple):
    values: torch.Tensor  # (B, k) best first
    indices: torch.Tensor  # (B, k) item ids


def seen_pairs(histories: Sequence[np.ndarray], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, items) of every item in each row's history: what ``exclude`` takes."""
    lengths = [len(h) for h in histories]
    rows = np.repeat(np.arange(len(histories)), lengths)
    items = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
    return (torch.as_tensor(rows, dtype=torch.long, device=device),
            torch.as_tensor(items, dtype=torch.long, device=device))


def chunk_items(batch: int, n_items: int, budget_mib: float | None = None, itemsize: int = 4) -> int:
    """Items a chunk scores so that (batch, chunk) scores fit ``budget_mib`` (default SCORE_BUDGET_MIB)."""
    budget = SCORE_BUDGET_MIB if budget_mib is None else budget_mib
    return max(1, min(n_items, int(budget * 2**20) // max(1, batch * itemsize)))


def dense_topk(scores: torch.Tensor, k: int, exclude: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Reference: top ``k`` of full (B, n) ``scores`` with item 0 and the ``exclude`` pairs at -inf."""
    scores = scores.clone()
    scores[:, 0] = -torch.inf
    if exclude is not None:
        scores[exclude[0], exclude[1]] = -torch.inf
    return TopK(*torch.topk(scores, min(k, scores.size(1)), dim=1))


@torch.no_grad()
def chunked_topk(hidden: torch.Tensor, weight: torch.Tensor, k: int,
                 exclude: tuple[torch.Tensor, torch.Tensor] | None = None, chunk: int | None = None):
    """Top ``k`` of ``hidden @ weight.T`` for each row, ``chunk`` items at a time.

    hidden (B, d), weight (n, d); ``exclude`` is (rows, items) pairs ranked last. Returns
    (values (B, k'), indices (B, k')) with k' = min(k, n), best first, as ``torch.topk`` orders them.
    """
    batch, n = hidden.size(0), weight.size(0)
    k = min(k, n)
    chunk = chunk or chunk_items(batch, n, itemsize=hidden.element_size())
    if exclude is not None:
        order = torch.argsort(exclude[1])
        ex_rows, ex_items = exclude[0][order], exclude[1][order]  # sorted by item: each chunk's pairs are a slice
    best_v = hidden.new_full((batch, 0), -torch.inf)
    best_i = torch.zeros(batch, 0, dtype=torch.long, device=hidden.device)
    buffer = hidden.new_empty(batch * chunk)  # one chunk's scores, reused: no allocation (and page faults) a chunk
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        scores = buffer[: batch * (stop - start)].view(batch, stop - start)  # (B, c)
        torch.mm(hidden, weight[start:stop].t(), out=scores)
        if start == 0:
            scores[:, 0] = -torch.inf  # the padding item
        if exclude is not None:
            lo, hi = torch.searchsorted(ex_items, torch.tensor([start, stop], device=ex_items.device)).tolist()
            scores[ex_rows[lo:hi], ex_items[lo:hi] - start] = -torch.inf
        top = torch.topk(scores, min(k, stop - start), dim=1)  # (B, k) of the chunk
        values = torch.cat([best_v, top.values], dim=1)  # (B, <= 2k)
        indices = torch.cat([best_i, top.indices + start], dim=1)
        top = torch.topk(values, min(k, values.size(1)), dim=1)
        best_v, best_i = top.values, indices.gather(1, top.indices)
    return TopK(best_v, best_i)


def scores_by_dot_product(model) -> bool:
    """Whether ``model.full_sort_predict`` is ``read_by_length(...) @ item_embedding.weight.T``
    (:class:`~recbole_ssm.models.causal.ReadByLength`'s, not overridden)."""
    from recbole_ssm.models.causal import ReadByLength

    return type(model).full_sort_predict is ReadByLength.full_sort_predict


def user_vectors(model, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor | None:
    """(B, d) the vectors a model scores items with (``scores = vectors @ item_embedding.weight.T``),
    or None for a model that scores otherwise (then use its ``full_sort_predict``)."""
    if not scores_by_dot_product(model):
        return None
    return model.read_by_length(item_seq, item_seq_len)


@torch.no_grad()
def topk_items(model, item_seq: torch.Tensor, item_seq_len: torch.Tensor, k: int,
               exclude: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Top ``k`` (values, indices) for a batch of right-padded histories (B, L) of lengths (B,), in
    bounded memory where the model scores by dot product with its item embeddings."""
    hidden = user_vectors(model, item_seq, item_seq_len)
    if hidden is not None:
        return chunked_topk(hidden, model.item_embedding.weight, k, exclude)
    from recbole.data.interaction import Interaction

    batch = Interaction({model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: item_seq_len})
    return dense_topk(model.full_sort_predict(batch), k, exclude)


def topk_suffices(collector) -> bool:
    """Whether the metrics read only a top-k (Hit, NDCG, MRR, Recall, Precision, ...): not
    ``rec.meanrank`` / ``rec.score`` (GAUC, ...) nor labels (value metrics), which need every score."""
    return not any(collector.register.need(key) for key in ("rec.meanrank", "rec.score", "data.label"))


def collect_topk(collector, top: TopK, positive_u: torch.Tensor, positive_i: torch.Tensor) -> None:
    """What RecBole's ``Collector.eval_batch_collect`` stores for ``rec.items`` and ``rec.topk``,
    from a batch's top-k instead of its (B, n) scores: the top items, and for ``rec.topk`` whether
    each is a positive plus each row's number of positives."""
    k = max(collector.topk)
    items = top.indices[:, :k]  # (B, k)
    if collector.register.need("rec.items"):
        collector.data_struct.update_tensor("rec.items", items)
    if collector.register.need("rec.topk"):
        n = int(max(int(items.max()) if items.numel() else 0, int(positive_i.max()) if positive_i.numel() else 0)) + 1
        keys = torch.unique(positive_u.to(items.device) * n + positive_i.to(items.device))  # (P,) a (row, item) each
        rows = torch.arange(items.size(0), device=items.device).unsqueeze(1)
        hit = torch.isin(rows * n + items, keys).int()  # (B, k)
        counts = torch.bincount(keys // n, minlength=items.size(0)).int().unsqueeze(1)  # (B, 1) positives a row
        collector.data_struct.update_tensor("rec.topk", torch.cat((hit, counts), dim=1))



class TopKCollector(Collector):
    """RecBole's Collector that also takes a batch's :class:`TopK` in place of its (B, n) scores."""

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        if isinstance(scores_tensor, TopK):
            return collect_topk(self, scores_tensor, positive_u, positive_i)
        return super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
