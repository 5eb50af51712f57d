"""``bench recommend``: the cost of every user's top-k, batched against one user at a time.

Two measurements, model loading excluded from both:

- ``--checkpoint=CK``: a trained model and its data set. Times ``Recommender.recommend_one``
  (one user at a time, the path a per-user loop takes) on ``--sample`` users and the batched
  ``Recommender.topk`` on every user, in the same process, and prints the ratio per user.
- ``--synthetic``: a model of a given catalogue size (random weights; the cost does not depend on
  them) and ``--users`` synthetic histories whose lengths follow a 5-core long-tail law; every
  user's top-k is written to ``--output`` (Parquet, TSV or JSONL) as ``recommend`` writes it,
  with the wall time and the process's peak RSS.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np

from recbole_ssm.options import Opt, parse, wants_help

USAGE = """\
usage: run_recbole_ssm.py bench recommend --checkpoint=PATH [--sample=1000] [--k=10] [--threads=N]
       run_recbole_ssm.py bench recommend --synthetic --users=729576 --items=207649 [--model=Mamba2Rec]
                                          [--mean_length=9] [--length=50] [--output=top.parquet] [...]

  --checkpoint   a trained model: one user at a time (--sample users) against every user batched
  --synthetic    a random model of --items items, --users histories (5-core long tail, mean
                 --mean_length, read up to --length), every user's top-k written to --output
  --batch_size   users scored at once (default: the run's eval_batch_size; 4096 synthetic)
  --threads      torch threads (default: torch's)
"""

OPTIONS = {
    "checkpoint": Opt(None),
    "synthetic": Opt(False, "flag"),
    "sample": Opt(1000, "whole", minimum=1),
    "k": Opt(10, "whole", minimum=1),
    "users": Opt(729_576, "whole", minimum=1),
    "items": Opt(207_649, "whole", minimum=2),
    "model": Opt("Mamba2Rec"),
    "hidden_size": Opt(64, "whole", minimum=1),
    "mean_length": Opt(9.0, "number", minimum=5),
    "length": Opt(50, "whole", minimum=1),
    "batch_size": Opt(None, "whole", minimum=1),
    "threads": Opt(None, "whole", minimum=1),
    "seed": Opt(2020, "whole", minimum=0),
    "output": Opt(None),
}


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare(checkpoint: str, sample: int, k: int, batch_size: int | None, seed: int) -> dict:
    """Seconds a user one at a time (``sample`` users) and batched (every user), same process."""
    import logging

    from recbole_ssm.serve import from_checkpoint

    logging.disable(logging.INFO)
    t0 = time.perf_counter()
    single = from_checkpoint(checkpoint)
    load_s = time.perf_counter() - t0
    batched = from_checkpoint(checkpoint)
    users = single.all_users()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(users, size=min(sample, len(users)), replace=False)
    tokens = [single.user_token(u) for u in chosen]
    t0 = time.perf_counter()
    for token in tokens:
        single.recommend_one(token, k=k, exclude_seen=True)
    one_s = (time.perf_counter() - t0) / len(tokens)
    t0 = time.perf_counter()
    rows = 0
    for _, values, _ in batched.topk([(u, ()) for u in users], k, True, batch_size):
        rows += int(np.isfinite(values).sum())
    all_s = time.perf_counter() - t0
    return {"checkpoint": checkpoint, "users": len(users), "sample": len(tokens), "load_s": round(load_s, 2),
            "one_at_a_time_ms_per_user": round(one_s * 1e3, 4), "batched_s": round(all_s, 2),
            "batched_ms_per_user": round(all_s / len(users) * 1e3, 4), "rows": rows,
            "speedup_per_user": round(one_s / (all_s / len(users)), 1),
            "batch_size": batch_size or batched.batch_size}


class SyntheticData:
    """What :class:`~recbole_ssm.serve.Recommender` reads of a data set: token tables for users and items."""

    uid_field, iid_field = "user_id", "item_id"

    def __init__(self, n_users: int, n_items: int):
        users = np.array(["[PAD]"] + [f"u{i}" for i in range(1, n_users + 1)], dtype=object)
        items = np.array(["[PAD]"] + [f"i{i}" for i in range(1, n_items)], dtype=object)
        self.field2id_token = {self.uid_field: users, self.iid_field: items}
        self.field2token_id = {self.uid_field: {}, self.iid_field: {}}  # lookups by token are not needed here


def synthetic_histories(n_users: int, n_items: int, mean_length: float, seed: int) -> dict[int, np.ndarray]:
    """5-core histories: lengths 5 + a geometric tail with the given mean; items Zipf-like popular."""
    rng = np.random.default_rng(seed)
    lengths = 5 + rng.geometric(1.0 / max(1.0, mean_length - 4.0), size=n_users) - 1
    weights = 1.0 / np.arange(1, n_items) ** 0.8
    items = rng.choice(np.arange(1, n_items), size=int(lengths.sum()), p=weights / weights.sum())
    cuts = np.cumsum(lengths)[:-1]
    return {u + 1: h for u, h in enumerate(np.split(items.astype(np.int64), cuts))}


def synthetic_model(model: str, n_items: int, hidden: int, length: int, seed: int):
    """A model of ``n_items`` items built on the efficiency bench's synthetic data set (random weights)."""
    from recbole_ssm.bench.efficiency import SYNTH, synthetic_config, write_synthetic_dataset
    from recbole_ssm.quick_start import build_config

    root = tempfile.mkdtemp(prefix="bench-recommend-")
    write_synthetic_dataset(root, n_items - 1, per_user=50)
    spec = {"data_path": root, "length": length, "hidden_size": hidden, "device": "cpu", "seed": seed,
            "overrides": {}}
    config, model_class = build_config(model, SYNTH, [], synthetic_config(spec))
    from recbole.data import create_dataset

    from recbole_ssm import compat

    with compat.quiet_recbole():
        dataset = create_dataset(config)
    net = model_class(config, dataset)
    assert net.n_items == n_items, (net.n_items, n_items)
    return net


def export_synthetic(opts: dict) -> dict:
    """Every synthetic user's top-k written to ``opts['output']`` as ``recommend`` writes it."""
    import logging

    from recbole_ssm.recommend import FORMATS, Writer, export
    from recbole_ssm.serve import Recommender

    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    net = synthetic_model(opts["model"], opts["items"], opts["hidden_size"], opts["length"], opts["seed"])
    histories = synthetic_histories(opts["users"], opts["items"], opts["mean_length"], opts["seed"])
    rec = Recommender(net, SyntheticData(opts["users"], opts["items"]), histories,
                      batch_size=opts["batch_size"] or 4096)
    setup_s = time.perf_counter() - t0
    setup_rss = peak_rss_mib()
    output = opts["output"] or os.path.join(tempfile.mkdtemp(prefix="bench-recommend-"), "top.parquet")
    fmt = FORMATS.get(os.path.splitext(output)[1], "tsv")
    t0 = time.perf_counter()
    export(rec, [(u, ()) for u in rec.all_users()], opts["k"], True, Writer(output, fmt))
    export_s = time.perf_counter() - t0
    return {"model": opts["model"], "users": opts["users"], "items": opts["items"], "k": opts["k"],
            "events": int(sum(len(h) for h in histories.values())), "length": opts["length"],
            "hidden_size": opts["hidden_size"], "batch_size": rec.batch_size, "setup_s": round(setup_s, 1),
            "setup_peak_rss_mib": round(setup_rss), "export_s": round(export_s, 1),
            "peak_rss_mib": round(peak_rss_mib()), "output": output,
            "output_mib": round(os.path.getsize(output) / 2**20, 1)}


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    from recbole_ssm.errors import UsageError

    opts = parse(argv, OPTIONS, "bench recommend", settings=False)[0]
    if bool(opts["checkpoint"]) == bool(opts["synthetic"]):
        raise UsageError("bench recommend needs --checkpoint=PATH or --synthetic (one of them)")
    if opts["threads"]:
        import torch

        torch.set_num_threads(opts["threads"])
    if opts["checkpoint"]:
        record = compare(opts["checkpoint"], opts["sample"], opts["k"], opts["batch_size"], opts["seed"])
    else:
        record = export_synthetic(opts)
    from recbole_ssm.bench.report import machine_line

    record.update(command="python run_recbole_ssm.py bench recommend " + " ".join(argv), machine=machine_line())
    print(json.dumps(record), flush=True)
    sys.stdout.flush()
    return 0
