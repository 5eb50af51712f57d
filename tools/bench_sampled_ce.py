"""Time of one CE forward + backward: full CE over all items against sampled softmax (``ce_negatives``).

    python tools/bench_sampled_ce.py [ITEMS[,ITEMS...]] [TARGETS] [HIDDEN] [NEGATIVES] [REPEATS]
    python tools/bench_sampled_ce.py 3416,12101,207649 1600 64 256 5

For each catalogue size, random float32 hidden states (TARGETS, HIDDEN) and an item embedding
(ITEMS, HIDDEN), both with gradients, go through the models' own loss (``CausalLoss.target_loss``):
full CE (``ce_negatives: 0``, chunks of ``ce_chunk_mib: 128``), and sampled softmax with NEGATIVES
negatives from the uniform sampler and from the popularity sampler (synthetic Zipf counts,
count of item i proportional to 1/i; the draw and the logQ correction are part of the time). One
torch thread; the three are timed in turn, REPEATS times after one warm-up each, and the table
gives each one's median and the ratios full / sampled of the same run.
"""

from __future__ import annotations

import statistics
import sys
import time
from types import SimpleNamespace

import torch

DEFAULTS = ("3416,12101,207649", "1600", "64", "256", "5")


def loss_owner(n_items: int, hidden: int, negatives: int, weights: torch.Tensor | None) -> SimpleNamespace:
    """What ``CausalLoss.target_loss`` reads of a model, for CE over ``n_items`` items."""
    g = torch.Generator().manual_seed(n_items)
    embedding = torch.nn.Embedding(n_items, hidden)
    with torch.no_grad():
        embedding.weight.copy_(0.02 * torch.randn(n_items, hidden, generator=g))
    return SimpleNamespace(loss_type="CE", item_embedding=embedding, n_items=n_items, ce_chunk_mib=128.0,
                           ce_negatives=negatives, ce_sampling_weights=weights, ce_label_smoothing=0.0,
                           ce_temperature=1.0)


def time_step(owner: SimpleNamespace, hidden: torch.Tensor, targets: torch.Tensor) -> float:
    """Seconds of one loss forward + backward (gradients of the hidden states and the embedding)."""
    from recbole_ssm.models.causal import CausalLoss

    owner.item_embedding.weight.grad = None
    h = hidden.detach().requires_grad_()
    start = time.perf_counter()
    CausalLoss.target_loss(owner, h, targets).backward()
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    if len(argv) > len(DEFAULTS):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    args = list(argv) + list(DEFAULTS[len(argv):])
    sizes = [int(x) for x in args[0].split(",")]
    n_targets, hidden_size, negatives, repeats = (int(x) for x in args[1:])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"one CE forward + backward, {n_targets} targets, hidden {hidden_size}, median of {repeats}, "
          f"1 torch thread (torch {torch.__version__})")
    print(f"| items | full CE (ms) | {negatives} uniform (ms) | {negatives} popularity (ms) "
          "| full / uniform | full / popularity |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        g = torch.Generator().manual_seed(n + 1)
        hidden = torch.randn(n_targets, hidden_size, generator=g)  # (P, d)
        targets = torch.randint(1, n, (n_targets,), generator=g)  # (P,)
        zipf = 1.0 / torch.arange(n, dtype=torch.float64).clamp_min(1.0)
        zipf[0] = 0.0  # padding
        owners = {"full": loss_owner(n, hidden_size, 0, None),
                  "uniform": loss_owner(n, hidden_size, negatives, None),
                  "popularity": loss_owner(n, hidden_size, negatives, zipf)}
        times: dict[str, list[float]] = {name: [] for name in owners}
        for owner in owners.values():
            time_step(owner, hidden, targets)  # warm-up
        for _ in range(repeats):
            for name, owner in owners.items():
                times[name].append(time_step(owner, hidden, targets))
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        print(f"| {n:,} | {ms['full']:.1f} | {ms['uniform']:.2f} | {ms['popularity']:.2f} "
              f"| {ms['full'] / ms['uniform']:.1f}x | {ms['full'] / ms['popularity']:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
