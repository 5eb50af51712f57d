"""Cross-entropy over all items for many positions at once, in bounded memory.

Training on every position of a batch of histories scores P positions against all n items;
the (P, n) logits of ML-1M at L=200 (12,800 positions x 3,417 items) are 175 MB, and a
larger catalogue or batch grows that without bound. :func:`linear_cross_entropy` computes
``cross_entropy(hidden @ weight.T, targets)`` a chunk of positions at a time and, when a
gradient is wanted, computes the gradient of each chunk while its logits exist, so only one
chunk of logits is ever alive. :func:`linear_cross_entropy_ref` is the plain formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_ref(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets)``: hidden (P, d), weight (n, d), targets (P,)."""
    return F.cross_entropy(hidden @ weight.t(), targets, reduction=reduction)


def chunk_rows(n_items: int, budget_mib: float, itemsize: int = 4) -> int:
    """Positions per chunk so that one chunk of (positions, n_items) logits fits ``budget_mib``."""
    return max(1, int(budget_mib * 2**20) // max(1, n_items * itemsize))


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed CE; forward walks the positions in chunks and keeps d(loss)/d(inputs), not logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows: int, grad_enabled: bool):
        # forward runs with grad mode off: whether a backward can follow is passed in
        dhidden = torch.empty_like(hidden) if grad_enabled and ctx.needs_input_grad[0] else None
        dweight = torch.zeros_like(weight) if grad_enabled and ctx.needs_input_grad[1] else None
        want_grad = dhidden is not None or dweight is not None
        total = hidden.new_zeros(())
        for start in range(0, hidden.size(0), rows):
            h = hidden[start : start + rows]  # (p, d)
            t = targets[start : start + rows]  # (p,)
            logits = h @ weight.t()  # (p, n)
            target_logit = logits.gather(1, t.unsqueeze(1))  # (p, 1), before the logits are overwritten
            # log-sum-exp with one exp pass, in place: the exponentials are reused for the softmax
            top = logits.amax(dim=1, keepdim=True)  # (p, 1); finite for finite inputs
            expd = logits.sub_(top).exp_()  # exp(logits - top), in (0, 1]
            norm = expd.sum(dim=1, keepdim=True)  # (p, 1), >= 1
            total += (top + norm.log() - target_logit).sum()
            if want_grad:
                # d(sum of CE)/d(logits) = softmax - onehot, formed in place over the logits
                dlogits = expd.div_(norm)
                dlogits[torch.arange(t.numel(), device=t.device), t] -= 1.0
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
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    budget_mib: float = 128.0,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets)`` with at most ``budget_mib`` of logits alive.

    hidden (P, d) and weight (n, d) share a dtype; targets (P,) are indices into weight's rows.
    ``reduction`` is ``"mean"`` (over the P positions) or ``"sum"``. The gradients are exact
    (no sampling); they are formed during the forward pass, so a forward without a later
    backward costs the gradient work too (not under ``torch.no_grad()``).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        shapes = f"{tuple(hidden.shape)} and {tuple(targets.shape)}"
        raise ValueError(f"expected hidden (P, d) and targets (P,), got {shapes}")
    rows = chunk_rows(weight.size(0), budget_mib, hidden.element_size())
    total = _LinearCrossEntropy.apply(hidden, weight, targets, rows, torch.is_grad_enabled())
    if reduction == "mean":
        return total / max(1, hidden.size(0))
    return total
