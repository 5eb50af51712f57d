"""Padded positions an epoch under ``train_targets=all``: batches of B windows against batches by length.

    python tools/window_padding.py SEQTEXT_FILE L B P
    python tools/window_padding.py ../shared/datasets/ml-1m/ml-1m.txt 200 32 3600

SEQTEXT_FILE is in either ``seqtext`` layout (``user item item ...`` or ``user item`` a line, in time
order; ``seqtext.training_lengths``);
each user's training history is its items but the last two (no 5-core filter here). Its windows
of L inputs (``recbole_ssm.regime.cut_windows``) are batched two ways, each as wide as its widest
window: B windows a batch in a random order (``train_window_batch_size=B``), and batches by length
of at most P padded positions (``train_window_positions=P``, ``regime.length_batches``). For each
it prints the batches and the padded positions of an epoch (seed 0), and the share that is padding.
"""

from __future__ import annotations

import sys

import torch

from recbole_ssm.data.seqtext import training_lengths
from recbole_ssm.regime import cut_windows, length_batches


def padded(batches: list[torch.Tensor], widths: torch.Tensor) -> int:
    return sum(len(b) * int(widths[b].max()) for b in batches)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path, max_len, per_batch, budget = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    sizes = training_lengths(path)
    _history, _start, widths, _context = cut_windows(torch.tensor(sizes), max_len)
    widths = widths[widths > 0]
    real = int(widths.sum())
    shuffled = torch.randperm(len(widths), generator=torch.Generator().manual_seed(0))
    ways = [(f"{per_batch} windows a batch", list(shuffled.split(per_batch))),
            (f"by length, P={budget}", length_batches(widths, budget, torch.Generator().manual_seed(0)))]
    print(f"{len(sizes)} users, {len(widths)} windows of L={max_len}, {real} positions with a target")
    print("batches\tcount\tpadded positions\tpadding share")
    for name, batches in ways:
        total = padded(batches, widths)
        print(f"{name}\t{len(batches)}\t{total}\t{1 - real / total:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
