"""Training-step time with autograd's anomaly mode on and off, interleaved step by step in one process.

    python tools/anomaly_ab.py DATASET REGIME L STEPS MODEL[,MODEL...]
    python tools/anomaly_ab.py ml-1m all 200 10 Mamba2Rec,SASRec,Mamba4Rec

Importing RecBole's sequential models switches anomaly mode on (compat.import_recbole_sequential_models
keeps it off); this prints what that costs: the median step time of each mode over the same
batches (32 windows a batch under all/cloze, the data set's train_batch_size under last), one
torch thread, and the ratio off/on.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time


def main(argv: list[str]) -> int:
    import torch

    from recbole_ssm.bench.regimes import train_step, training_setup

    if len(argv) != 5:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    dataset, regime, length, steps, models = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4].split(",")
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    for name in models:
        settings = {"train_targets": regime, "MAX_ITEM_LIST_LENGTH": length, "train_window_batch_size": 32}
        train, model, optimizer, _ = training_setup(name, dataset, settings)
        batches = iter(train)
        batches = [next(batches) for _ in range(steps)]

        train_step(model, optimizer, batches[0])  # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        for batch in batches:
            for mode in (True, False):
                torch.autograd.set_detect_anomaly(mode)
                t = time.perf_counter()
                train_step(model, optimizer, batch)
                times[mode].append(time.perf_counter() - t)
        on, off = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name}\t{dataset}\t{regime}\tL={length}\tanomaly on {on:.3f} s/step\toff {off:.3f} s/step"
              f"\toff/on {off / on:.3f}", flush=True)
    torch.autograd.set_detect_anomaly(False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
