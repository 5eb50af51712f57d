"""Cross-entropy over all items for many positions at once, in bounded memory.

Training on every position of a batch of histories scores P positions against all n items;
the (P, n) logits of ML-1M at L=200 (12,800 positions x 3,417 items) are 175 MB, and a
larger catalogue or batch grows that without bound. :func:`linear_cross_entropy` computes
``cross_entropy(hidden @ weight.T, targets)`` a chunk of positions at a time and, when a
gradient is wanted, computes the gradient of each chunk while its logits exist, so only one
chunk of logits is ever alive. :func:`linear_cross_entropy_ref` is the plain formula.

Beside it, sampled softmax (``ce_negatives``): :func:`sampled_softmax_cross_entropy` scores each
position against its own target and N negatives shared by the whole batch, drawn by
:func:`sample_negatives`, so its cost is O(P x N) whatever the number of items;
:func:`sampled_softmax_cross_entropy_ref` is the same loss written one row at a time in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def linear_cross_entropy_ref(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
    label_smoothing: float = 0.0, exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets)``: hidden (P, d), weight (n, d), targets (P,);
    ``label_smoothing`` as torch's (that share of the target spread evenly over all n rows);
    ``exclude = (rows, cols)``: the logit of item ``cols[e]`` is ``-inf`` in row ``rows[e]``."""
    logits = hidden @ weight.t()
    if exclude is not None:
        logits = logits.index_put(tuple(exclude), logits.new_tensor(float("-inf")))
    return F.cross_entropy(logits, targets, reduction=reduction, label_smoothing=label_smoothing)


def chunk_rows(n_items: int, budget_mib: float, itemsize: int = 4) -> int:
    """Positions per chunk so that one chunk of (positions, n_items) logits fits ``budget_mib``."""
    return max(1, int(budget_mib * 2**20) // max(1, n_items * itemsize))


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed CE; forward walks the positions in chunks and keeps d(loss)/d(inputs), not logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows: int, grad_enabled: bool, smoothing: float, ex_rows, ex_cols):
        # forward runs with grad mode off: whether a backward can follow is passed in
        dhidden = torch.empty_like(hidden) if grad_enabled and ctx.needs_input_grad[0] else None
        dweight = torch.zeros_like(weight) if grad_enabled and ctx.needs_input_grad[1] else None
        want_grad = dhidden is not None or dweight is not None
        total = hidden.new_zeros(())
        if ex_rows is not None:  # where each chunk's excluded pairs start (ex_rows is sorted)
            cuts = torch.searchsorted(ex_rows, torch.arange(0, hidden.size(0) + rows, rows, device=ex_rows.device))
            cuts = cuts.tolist()
        for k, start in enumerate(range(0, hidden.size(0), rows)):
            h = hidden[start : start + rows]  # (p, d)
            t = targets[start : start + rows]  # (p,)
            logits = h @ weight.t()  # (p, n)
            if ex_rows is not None and cuts[k + 1] > cuts[k]:  # left out of the softmax: exp(-inf) = 0
                a, b = cuts[k], cuts[k + 1]
                logits[ex_rows[a:b] - start, ex_cols[a:b]] = float("-inf")
            target_logit = logits.gather(1, t.unsqueeze(1))  # (p, 1), before the logits are overwritten
            if smoothing:  # the smoothed target: (1 - e) on the target, e / n on every item
                target_logit = (1.0 - smoothing) * target_logit + smoothing * logits.mean(dim=1, keepdim=True)
            # log-sum-exp with one exp pass, in place: the exponentials are reused for the softmax
            top = logits.amax(dim=1, keepdim=True)  # (p, 1); finite for finite inputs
            expd = logits.sub_(top).exp_()  # exp(logits - top), in (0, 1]
            norm = expd.sum(dim=1, keepdim=True)  # (p, 1), >= 1
            total += (top + norm.log() - target_logit).sum()
            if want_grad:
                # d(sum of CE)/d(logits) = softmax - the (smoothed) target, in place over the logits
                dlogits = expd.div_(norm)
                if smoothing:
                    dlogits.sub_(smoothing / logits.size(1))
                dlogits[torch.arange(t.numel(), device=t.device), t] -= 1.0 - smoothing
                if dhidden is not None:
                    dhidden[start : start + rows] = dlogits @ weight  # (p, d)
                if dweight is not None:
                    dweight.addmm_(dlogits.t(), h)  # (n, d)
        ctx.save_for_backward(dhidden, dweight)
        return total  # hidden's dtype

    @staticmethod
    def backward(ctx, dloss):
        dhidden, dweight = ctx.saved_tensors
        return (
            dhidden * dloss if dhidden is not None else None,
            dweight * dloss if dweight is not None else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    budget_mib: float = 128.0,
    label_smoothing: float = 0.0,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets)`` with at most ``budget_mib`` of logits alive.

    hidden (P, d) and weight (n, d) share a dtype; targets (P,) are indices into weight's rows.
    ``reduction`` is ``"mean"`` (over the P positions) or ``"sum"``. The gradients are exact
    (no sampling); they are formed during the forward pass, so a forward without a later
    backward costs the gradient work too (not under ``torch.no_grad()``). ``label_smoothing`` in
    [0, 1) is torch's: the target keeps 1 - e of its weight and every one of the n items gets e / n.

    ``exclude = (rows, cols)``, two (E,) long tensors with ``rows`` ascending: item ``cols[e]`` is
    left out of row ``rows[e]``'s softmax (its logit is ``-inf``: no share of the normaliser, no
    gradient). A pair may repeat; a row's own target may not be left out. Not with label smoothing.
    """
    _check_inputs(hidden, targets, reduction)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), not {label_smoothing}")
    ex_rows, ex_cols = _check_exclude(exclude, targets, label_smoothing)
    rows = chunk_rows(weight.size(0), budget_mib, hidden.element_size())
    total = _LinearCrossEntropy.apply(hidden, weight, targets, rows, torch.is_grad_enabled(), float(label_smoothing),
                                      ex_rows, ex_cols)
    return _reduce(total, hidden.size(0), reduction)


def _check_exclude(exclude, targets: torch.Tensor, label_smoothing: float):
    """``(rows, cols)`` of :func:`linear_cross_entropy`'s ``exclude``, checked; ``(None, None)`` if none."""
    if exclude is None:
        return None, None
    ex_rows, ex_cols = exclude
    if ex_rows.dim() != 1 or ex_rows.shape != ex_cols.shape:
        shapes = f"{tuple(ex_rows.shape)} and {tuple(ex_cols.shape)}"
        raise ValueError(f"exclude takes rows (E,) and cols (E,), got {shapes}")
    if not ex_rows.numel():
        return None, None
    if label_smoothing:
        raise ValueError("exclude and label_smoothing do not go together: smoothing spreads weight over every item")
    if bool((ex_rows[1:] < ex_rows[:-1]).any()):
        raise ValueError("exclude's rows must be in ascending order")
    if int(ex_rows[0]) < 0 or int(ex_rows[-1]) >= targets.numel():
        raise ValueError(f"exclude's rows must be in [0, {targets.numel()})")
    if bool((targets[ex_rows] == ex_cols).any()):
        raise ValueError("exclude leaves out a row's own target")
    return ex_rows, ex_cols


def _check_inputs(hidden: torch.Tensor, targets: torch.Tensor, reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        shapes = f"{tuple(hidden.shape)} and {tuple(targets.shape)}"
        raise ValueError(f"expected hidden (P, d) and targets (P,), got {shapes}")


def _reduce(total: torch.Tensor, positions: int, reduction: str) -> torch.Tensor:
    """The summed loss of ``positions`` rows, as a mean over them or as it is."""
    return total / max(1, positions) if reduction == "mean" else total


# ---------------------------------------------------------------------------------------
# sampled softmax


def sample_negatives(
    n_items: int,
    count: int,
    generator: torch.Generator | None = None,
    probs: torch.Tensor | None = None,
    *,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` item ids drawn with replacement, and the log of each one's probability of being drawn.

    Uniform over the items ``1 .. n_items - 1`` (item 0 is padding, never drawn) unless ``probs``
    (n_items,) gives each item's probability, or any non-negative weight proportional to it
    (popularity: its count in the training data); ``probs[0]`` must be 0. Items of weight 0 are
    never drawn. Returns ``(ids (count,) long, log_q (count,) float64)``, where ``log_q`` is the
    log probability of one draw (not of the expected count ``count * q``: the two differ by
    ``log(count)`` for every item alike). ``generator=None`` is torch's default generator of the
    device (RecBole's seed makes it reproducible); a generator must live on ``device``.
    """
    if n_items < 2 or count < 1:
        raise ValueError(f"need n_items >= 2 (padding and one item) and count >= 1, got {n_items} and {count}")
    if probs is None:
        ids = torch.randint(1, n_items, (count,), generator=generator, device=device)  # (N,)
        return ids, torch.full((count,), -math.log(n_items - 1), dtype=torch.float64, device=ids.device)
    log_probs = log_probabilities(probs)
    if log_probs.numel() != n_items:
        raise ValueError(f"probs has {log_probs.numel()} entries for {n_items} items")
    ids = torch.multinomial(log_probs.exp(), count, replacement=True, generator=generator)  # (N,)
    return ids, log_probs[ids]


def log_probabilities(weights: torch.Tensor) -> torch.Tensor:
    """(n,) non-negative weights with weight 0 at item 0 (padding) -> (n,) float64 log probabilities
    of one draw (``-inf`` where the weight is 0)."""
    weights = weights.to(torch.float64)
    if weights.dim() != 1 or not bool((weights >= 0).all()) or float(weights.sum()) <= 0:
        raise ValueError("sampling weights must be a 1-d tensor of non-negative numbers, not all 0")
    if float(weights[0]) != 0.0:
        raise ValueError("item 0 is padding: its sampling weight must be 0")
    return (weights / weights.sum()).log()


def sampled_softmax_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor | None = None,
    target_log_q: torch.Tensor | None = None,
    reduction: str = "mean",
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Cross-entropy of each position over its target and N negatives shared by the batch.

    hidden (P, d), weight (n, d), targets (P,) and negatives (N,) indices into weight's rows. Row p
    has the logits ``[s_t - log q_t, s_j - log q_j for each negative j]`` with ``s_i = hidden[p] .
    weight[i]``, the target first; its loss is the cross-entropy of that row with class 0:
    ``logsumexp(row) - row[0]``. A negative equal to the row's own target (an "accidental hit")
    gets ``-inf`` there, so the target is never counted as its own negative; a negative drawn
    twice counts twice (the draws are with replacement). The costs are O(P x N), not O(P x n).

    The correction (``log_q`` (N,) for the negatives, ``target_log_q`` (P,) for the targets; 0
    where None) is subtracted from every logit in the row, the target's included: the logQ
    correction of Yi et al. (RecSys 2019) and of candidate sampling (Jean et al. 2015; TensorFlow's
    ``sampled_softmax_loss``), under which the row's softmax is the probability that each
    candidate is the target given the candidates, when the logits are the model's log
    probabilities. ``log q`` is the log probability of one draw; the log of the expected count,
    ``log(N q)``, differs by ``log N`` in every logit alike and would give the same loss. Under a
    uniform sampler the correction is the same constant in every logit, the target's included,
    and cancels: the loss is the uncorrected one.

    The models (``CausalLoss.target_loss``) pass ``log_q = log(N q_j)`` for the negatives of a
    non-uniform sampler and no ``target_log_q``: the importance-sampling estimate of the
    normaliser, which tends to full CE as N grows (see below for the all-logits convention).

    ``exclude = (rows, cols)`` (E,) each, as for :func:`linear_cross_entropy`: item ``cols[e]`` is
    not a negative of row ``rows[e]`` (every draw of it gets ``-inf`` there), for ``ce_filter_seen``.
    Rows ascending; a row's own target is never excluded.

    What it estimates: with every item but padding as a negative exactly once and no correction
    it is full CE over the items ``1 .. n - 1`` (tests/test_sampled_softmax.py). With random
    negatives it is a biased estimate of full CE for any finite N. With accidental hits masked,
    the target's own term is one among about ``N q_t`` draws of the other items: when ``N q_t``
    is not small (a tiny catalogue, or N near n) the loss moves towards CE with the target left
    out of the normaliser, not towards full CE; for full CE use :func:`linear_cross_entropy`.
    """
    _check_inputs(hidden, targets, reduction)
    if negatives.dim() != 1 or negatives.numel() == 0:
        raise ValueError(f"expected negatives (N,) with N >= 1, got {tuple(negatives.shape)}")
    target_logit = (hidden * weight[targets]).sum(-1)  # (P,)
    logits = hidden @ weight[negatives].t()  # (P, N)
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype)  # (P, N)
    if target_log_q is not None:
        target_logit = target_logit - target_log_q.to(target_logit.dtype)  # (P,)
    hit = targets.unsqueeze(1) == negatives.unsqueeze(0)  # (P, N) accidental hits
    ex_rows, ex_cols = _check_exclude(exclude, targets, 0.0)
    if ex_rows is not None:
        rows, slots = _draws_of(ex_rows, ex_cols, negatives)
        hit[rows, slots] = True
    logits = torch.cat([target_logit.unsqueeze(1), logits.masked_fill(hit, float("-inf"))], dim=1)  # (P, 1 + N)
    # row 0 is finite, so every row's logsumexp (and its gradient) is finite
    total = (torch.logsumexp(logits, dim=1) - target_logit).sum()
    return _reduce(total, hidden.size(0), reduction)


def _draws_of(rows: torch.Tensor, cols: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows', slots): for each pair (rows[e], cols[e]), every slot k with ``negatives[k] == cols[e]``
    (none where the item was not drawn, several where it was drawn more than once). Through the
    sorted draws: O(E log N) time, and memory for the pairs that meet a draw only."""
    order = negatives.argsort()
    drawn = negatives[order]  # (N,) ascending
    first = torch.searchsorted(drawn, cols)  # (E,)
    count = torch.searchsorted(drawn, cols, right=True) - first  # (E,): draws of each pair's item
    pair = torch.repeat_interleave(torch.arange(cols.numel(), device=cols.device), count)  # (H,)
    offset = torch.arange(pair.numel(), device=cols.device) - (count.cumsum(0) - count)[pair]
    return rows[pair], order[first[pair] + offset]


def sampled_softmax_cross_entropy_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor | None = None,
    target_log_q: torch.Tensor | None = None,
    reduction: str = "mean",
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`sampled_softmax_cross_entropy` one row at a time, in float64: the negatives that are
    neither the row's target nor excluded from the row are listed, and the row's loss is
    -log(softmax of [target, them])[0]."""
    h, w = hidden.to(torch.float64), weight.to(torch.float64)
    left_out: dict[int, set] = {}
    for r, c in zip(*(exclude if exclude is not None else ((), ()))):
        left_out.setdefault(int(r), set()).add(int(c))
    losses = []
    for p in range(h.size(0)):
        t = int(targets[p])
        row = [h[p] @ w[t] - (float(target_log_q[p]) if target_log_q is not None else 0.0)]
        for k, j in enumerate(negatives.tolist()):
            if j != t and j not in left_out.get(p, ()):
                row.append(h[p] @ w[j] - (float(log_q[k]) if log_q is not None else 0.0))
        losses.append(-torch.log_softmax(torch.stack(row), dim=0)[0])
    total = torch.stack(losses).sum() if losses else h.new_zeros(())
    return total / max(1, h.size(0)) if reduction == "mean" else total
