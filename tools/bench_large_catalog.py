"""The seed paper's Table 1 data at full size on one machine: every step timed, with its peak RSS.

    python tools/bench_large_catalog.py --workdir=/tmp/beauty23 [--scale=1.0] [--model=2Mamba4Rec]
        [--ce_negatives=256] [--batch=256] [--ce_sample=0.01] [--steps=generate,prepare,train,export,full_ce]

Steps, each a process of its own (its wall time and peak RSS are its own):

1. ``generate``: ``python -m recbole_ssm.data.synthetic --shape beauty2023`` writes learnable events
   of Amazon Reviews 2023 Beauty and Personal Care's 5-core shape (about 730 k users, 208 k items,
   6.6 M events; ``--scale`` shrinks users and items for a trial run);
2. ``prepare``: ``prepare csv`` (5-core, atomic files);
3. ``train``: one epoch with sampled softmax (``--ce_negatives``, uniform, shared by a batch), then
   RecBole's full-sort evaluation of every user on the validation split (items scored in chunks,
   ``eval_score_chunks``) and once more on the test split, as every training run ends;
4. ``export``: ``recommend --users=all`` writes every user's top 10 to Parquet;
5. ``full_ce``: the epoch's cost with full CE, from timing the first ``--ce_sample`` of its batches
   (forward, backward and the optimizer's step), extrapolated to the whole epoch; the same
   measurement with ``--ce_negatives`` checks the extrapolation against step 3's measured epoch.

Results go to ``WORKDIR/results.json`` (kept between calls: ``--steps`` re-runs some) and a
markdown table on stdout. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "synthetic-beauty23"
STEPS = ("generate", "prepare", "train", "export", "full_ce")


def timed(cmd: list[str], log: str) -> dict:
    """Run ``cmd`` with its output in ``log``; its wall time, peak RSS (MiB) and exit status."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    step = {"command": " ".join(cmd), "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "rc": rc, "log": log}
    if rc != 0:
        tail = open(log).read()[-3000:]
        raise SystemExit(f"step failed (exit {rc}): {step['command']}\n{tail}")
    return step


def python() -> list[str]:
    return [sys.executable]


def run_step(name: str, a, results: dict) -> dict:
    work = a.workdir
    data = os.path.join(work, "data")
    log = os.path.join(work, f"{name}.log")
    settings = [f"--data_path={data}", f"--ce_negatives={a.ce_negatives}", f"--train_window_batch_size={a.batch}",
                "--eval_score_chunks=True", "--show_progress=False"]
    if name == "generate":
        return timed(python() + ["-m", "recbole_ssm.data.synthetic", "--shape", "beauty2023", "--scale",
                                 str(a.scale), "--out", os.path.join(work, "events.csv")], log)
    if name == "prepare":
        step = timed(python() + ["run_recbole_ssm.py", "prepare", "csv", "--input", os.path.join(work, "events.csv"),
                                 "--output", os.path.join(data, NAME), "--force"], log)
        summary = json.load(open(os.path.join(data, NAME, "summary.json")))
        stats = summary["stats"]
        step["kept"] = {k: stats[k] for k in ("users", "items", "interactions")}
        return step
    if name == "train":
        step = timed(python() + ["run_recbole_ssm.py", f"--model={a.model}", f"--dataset={NAME}", "--epochs=1",
                                 f"--checkpoint_dir={os.path.join(work, 'saved')}"] + settings, log)
        text = open(log).read()
        step["epoch_s"] = float(re.search(r"epoch 0 training \[time: ([0-9.]+)s", text).group(1))
        step["valid_eval_s"] = float(re.search(r"epoch 0 evaluating \[time: ([0-9.]+)s", text).group(1))
        step["fit_s"] = float(re.search(r"fit=([0-9.]+)s", text).group(1))
        step["checkpoint"] = re.search(r"^saved (\S+)", text, re.M).group(1)
        step["valid"] = re.search(r"^valid (.*)$", text, re.M).group(1).strip()
        step["test"] = re.search(r"^test (.*)$", text, re.M).group(1).strip()
        return step
    if name == "export":
        checkpoint = results["train"]["checkpoint"]
        out = os.path.join(work, "top10.parquet")
        step = timed(python() + ["run_recbole_ssm.py", "recommend", f"--checkpoint={checkpoint}", "--users=all",
                                 "--k=10", f"--output={out}"], log)
        step["output_mib"] = round(os.path.getsize(out) / 2**20, 1)
        return step
    if name == "full_ce":
        step = {}
        for negatives in (0, a.ce_negatives):
            sub = timed(python() + [os.path.abspath(__file__), "--sample_epoch", f"--workdir={work}",
                                    f"--model={a.model}", f"--ce_negatives={negatives}", f"--batch={a.batch}",
                                    f"--ce_sample={a.ce_sample}"], os.path.join(work, f"full_ce-{negatives}.log"))
            sub.update(json.loads(open(sub["log"]).read().strip().splitlines()[-1]))
            step[f"ce_negatives={negatives}"] = sub
        return step
    raise ValueError(name)


def sample_epoch(a) -> None:
    """Time the first ``ce_sample`` of an epoch's batches of training; print one JSON line."""
    import torch

    from recbole_ssm import compat
    from recbole_ssm.quick_start import build_config, get_trainer
    from recbole_ssm.regime import create_dataset, prepare_data

    overrides = {"data_path": os.path.join(a.workdir, "data"), "ce_negatives": a.ce_negatives,
                 "train_window_batch_size": a.batch, "eval_score_chunks": True, "show_progress": False}
    config, model_class = build_config(a.model, NAME, None, overrides)
    from recbole.utils import init_seed

    init_seed(config["seed"], config["reproducibility"])
    with compat.quiet_recbole():
        train, _valid, _test = prepare_data(config, create_dataset(config))
    net = model_class(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    total = len(train)
    n = max(3, math.ceil(a.ce_sample * total))
    net.train()
    times = []
    for i, batch in enumerate(train):
        if i == n + 1:
            break
        t0 = time.perf_counter()
        trainer.optimizer.zero_grad()
        loss = net.calculate_loss(batch)
        loss.backward()
        trainer.optimizer.step()
        if i:  # the first batch warms up (allocations, lazy init); not counted
            times.append(time.perf_counter() - t0)
    per_batch = sum(times) / len(times)
    print(json.dumps({"batches_in_epoch": total, "batches_timed": len(times), "s_per_batch": round(per_batch, 4),
                      "epoch_s_extrapolated": round(per_batch * total, 1), "items": int(train._dataset.item_num),
                      "threads": torch.get_num_threads()}))


def table(results: dict) -> str:
    rows = ["| step | wall | peak RSS | notes |", "|---|---|---|---|"]
    notes = {
        "generate": lambda s: "",
        "prepare": lambda s: ", ".join(f"{v:,} {k}" for k, v in s["kept"].items()) + " after 5-core",
        "train": lambda s: (f"epoch {s['epoch_s']:.0f} s; validation (every user, full sort) "
                            f"{s['valid_eval_s']:.0f} s; "
                            f"valid {s['valid']}; test {s['test']}"),
        "export": lambda s: f"{s.get('output_mib', 0)} MiB of Parquet",
    }
    for name in STEPS:
        s = results.get(name)
        if not s:
            continue
        if name == "full_ce":
            for key, sub in s.items():
                rows.append(f"| epoch sample, {key} | {sub['wall_s']:.0f} s | {sub['peak_rss_mib']:,.0f} MiB | "
                            f"{sub['batches_timed']} of {sub['batches_in_epoch']} batches, {sub['s_per_batch']} s a "
                            f"batch: epoch ~{sub['epoch_s_extrapolated']:,.0f} s |")
            continue
        rows.append(f"| {name} | {s['wall_s']:.0f} s | {s['peak_rss_mib']:,.0f} MiB | {notes[name](s)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--model", default="2Mamba4Rec")
    p.add_argument("--ce_negatives", type=int, default=256)
    p.add_argument("--batch", type=int, default=256, help="windows a training batch (train_window_batch_size)")
    p.add_argument("--ce_sample", type=float, default=0.01, help="fraction of an epoch's batches timed (full_ce)")
    p.add_argument("--steps", default=",".join(STEPS))
    p.add_argument("--sample_epoch", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.sample_epoch:
        sample_epoch(a)
        return 0
    steps = [s for s in a.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        p.error(f"unknown steps {unknown}: choose from {','.join(STEPS)}")
    os.makedirs(a.workdir, exist_ok=True)
    path = os.path.join(a.workdir, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    for name in STEPS:
        if name not in steps:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        results[name] = run_step(name, a, results)
        results["settings"] = {k: getattr(a, k) for k in ("scale", "model", "ce_negatives", "batch", "ce_sample")}
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)
        print(table({name: results[name]}).splitlines()[-1], flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
