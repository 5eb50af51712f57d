"""How much history each training target reads under ``train_targets=all`` against ``last``.

    python tools/window_context.py SEQTEXT_FILE L [S ...]
    python tools/window_context.py ../shared/datasets/ml-1m/ml-1m.txt 200 200 100

SEQTEXT_FILE is in either ``seqtext`` layout (``user item item ...`` or ``user item`` a line, in time
order; ``seqtext.training_lengths``).
Each user's training history is its items but the last two (the validation and test targets, as
RecBole's leave-one-out split leaves it; no 5-core filter here). For windows of L inputs cut by
``recbole_ssm.regime.cut_windows`` with stride S (S = L: no overlap), it prints the mean number of
items a target reads and the share of targets that read fewer than 10, 50 and 100, beside what
``last`` gives each target (the min(L, position + 1) items before it).
"""

from __future__ import annotations

import sys

import torch

from recbole_ssm.data.seqtext import training_lengths
from recbole_ssm.regime import cut_windows


def context(lengths: torch.Tensor, max_len: int, stride: int | None) -> torch.Tensor:
    """Items read by each trained target (one entry a target)."""
    _history, start, size, ctx = cut_windows(lengths, max_len, stride)
    # trained inputs of window w: offsets ctx[w] .. size[w] - 1 from its start; each reads offset + 1 items
    return torch.cat([torch.arange(int(c), int(n)) + 1 for c, n in zip(ctx, size)])


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path, max_len, strides = argv[0], int(argv[1]), [int(s) for s in argv[2:]] or [int(argv[1])]
    sizes = training_lengths(path)
    lengths = torch.tensor(sizes)
    positions = torch.cat([torch.arange(max(n - 1, 0)) for n in sizes])
    rows = [("last", (positions + 1).clamp_max(max_len))]
    rows += [(f"all, S={s}", context(lengths, max_len, s)) for s in strides]
    print(f"{len(sizes)} users, {len(positions)} training targets, L={max_len}")
    print("regime\tmean items read\t< 10\t< 50\t< 100")
    for name, c in rows:
        c = c.double()
        print(f"{name}\t{c.mean():.1f}\t" + "\t".join(f"{(c < k).double().mean():.3f}" for k in (10, 50, 100)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
