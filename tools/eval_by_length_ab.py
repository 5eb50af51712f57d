"""Evaluation time of a model's full-sort scores with and without reading by length, interleaved
batch by batch in one process, on the data set's validation batches.

    python tools/eval_by_length_ab.py DATASET L BATCHES MODEL[,MODEL...] [EVAL_BATCH_SIZE]
    python tools/eval_by_length_ab.py ml-1m 2048 4 SASRec,Mamba2Rec 128

An untrained model (its defaults) scores the first BATCHES validation batches twice each: once
with ``trim_padding`` on (rows grouped by length, each group trimmed to its longest row) and once
off (the whole padded batch at once, RecBole's own path for SASRec and GRU4Rec). Prints the
seconds of each way over those batches, the ratio, and the largest difference between the two
ways' scores relative to the largest score. Uses the torch threads the machine gives.
"""

from __future__ import annotations

import logging
import sys
import time


def main(argv: list[str]) -> int:
    import torch

    from recbole_ssm.bench.regimes import data_setup

    if len(argv) not in (4, 5):
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    dataset, length, n_batches, models = argv[0], int(argv[1]), int(argv[2]), argv[3].split(",")
    eval_batch_size = int(argv[4]) if len(argv) == 5 else 128
    logging.disable(logging.WARNING)
    for name in models:
        settings = {"MAX_ITEM_LIST_LENGTH": length, "eval_batch_size": eval_batch_size, "train_targets": "all"}
        config, model_class, (train, valid, _test), _data_s = data_setup(name, dataset, settings)
        model = model_class(config, train._dataset).eval()
        batches = []
        for batch in valid:
            batches.append(batch[0])
            if len(batches) == n_batches:
                break
        seconds = {True: 0.0, False: 0.0}
        worst = 0.0
        with torch.no_grad():
            for interaction in batches:
                scores = {}
                for trim in (True, False):
                    model.trim_padding = trim
                    t = time.perf_counter()
                    scores[trim] = model.full_sort_predict(interaction)
                    seconds[trim] += time.perf_counter() - t
                diff = (scores[True] - scores[False]).abs().max() / scores[False].abs().max()
                worst = max(worst, float(diff))
        lens = torch.cat([b[model.ITEM_SEQ_LEN] for b in batches])
        print(f"{name}\t{dataset}\tL={length}\t{len(batches)} batches of {eval_batch_size} users "
              f"(mean history {lens.float().mean():.0f}, longest {int(lens.max())})"
              f"\tby length {seconds[True]:.2f} s\twhole batch {seconds[False]:.2f} s"
              f"\twhole / by length {seconds[False] / seconds[True]:.1f}\tmax score difference {worst:.1e}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
