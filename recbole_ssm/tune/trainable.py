"""One Tune trial: the normal recbole-ssm pipeline (``quick_start.run``), reporting every validation.

Each trial runs in its own Ray worker process (``reuse_actors=False``), whose working directory
is the trial's folder: RecBole's ``log/`` and the best-epoch checkpoint land there. The data set
is loaded once when the trial starts; every epoch reuses it. After each validation the trial
reports ``valid_score`` (RecBole's ``valid_metric``) with ``epoch``, so a scheduler such as ASHA
can stop it; a stopped trial ends inside the report call (Ray raises ``SystemExit`` in the
trial's thread), which is not an error. A trial that finishes reports once more, without
``epoch``, with its best validation and its test metrics, under RecBole's ranking and with each
user's history left out of the ranking (``valid_seen_out/``, ``test_seen_out/``; the same
best-epoch checkpoint scored both ways).

A sweep with a time budget gives each trial its deadline (wall-clock seconds since the epoch): a
trial still training then ends after the epoch it is in, is tested at its best epoch as after early
stopping and says so (``cut``); a trial that would start after it does not run (``not_run``), and
one cut off by an interrupted sweep trains one more epoch when it is resumed.

Before every epoch the trial saves its training state in its folder (:data:`RESUME_FILE`). A
sweep that was interrupted and resumed starts its unfinished trials again in the same folders,
and a trial that finds that state continues from the epoch it had reached, with the same
numbers an uninterrupted trial gives.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

# Keys of a trial's results (besides the metric names, prefixed "valid/" and "test/").
VALID_SCORE = "valid_score"  # this epoch's validation score (RecBole's valid_metric)
BEST_VALID = "best_valid_score"  # best validation score so far
EPOCH = "epoch"  # epochs trained so far, for the scheduler; absent from the final report
EPOCHS_TRAINED = "epochs_trained"  # epochs trained so far, in every report
FINISHED = "finished"  # True on the final report, after the test evaluation
SEEN_OUT = "_seen_out"  # suffix of the prefixes of the metrics with the history left out: valid_seen_out/...
CUT = "cut"  # True on the final report of a trial the sweep's time budget ended
NOT_RUN = "not_run"  # True on the only report of a trial that would have started after the budget's end
RESUME_FILE = os.path.join("saved", "trial-resume.pth")  # the training state, in the trial's folder


def native(value: Any) -> Any:
    """numpy scalars (what Tune samples) -> plain Python values RecBole and yaml accept."""
    if isinstance(value, (list, tuple)):
        return [native(v) for v in value]
    if isinstance(value, dict):
        return {k: native(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    return value


def trial_config(sampled: dict, fixed: dict, gpus_per_trial: float, trial_dir: str) -> dict:
    """The ``config_dict`` of one trial: fixed overrides, then the sampled values, then devices."""
    config = {**fixed, **native(dict(sampled))}
    config["checkpoint_dir"] = os.path.join(trial_dir, "saved")
    config["show_progress"] = False
    if gpus_per_trial > 0:
        # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs; RecBole would overwrite it with gpu_id.
        config["use_gpu"] = True
        config["gpu_id"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    else:
        config["use_gpu"] = False
    return config


def run_trial(
    sampled: dict,
    *,
    model: str,
    dataset: str,
    config_files: list[str],
    fixed: dict,
    cpus_per_trial: float,
    gpus_per_trial: float,
    bigger: bool,
    deadline: float | None = None,
) -> None:
    """Tune function trainable: train ``model`` with ``sampled`` settings, reporting each epoch
    (until ``deadline``, a ``time.time()`` value, where one is given)."""
    from recbole_ssm.tune import rayapi

    trial_dir = rayapi.trial_dir()
    resume_file = os.path.join(trial_dir, RESUME_FILE)
    resuming = os.path.isfile(resume_file)
    if deadline is not None and time.time() >= deadline and not resuming:
        rayapi.report({NOT_RUN: True, EPOCHS_TRAINED: 0})
        return
    import torch

    from recbole_ssm.quick_start import run
    from recbole_ssm.seen import evaluate_history_left_out

    torch.set_num_threads(max(1, int(cpus_per_trial)))
    config = trial_config(sampled, fixed, gpus_per_trial, trial_dir)
    eval_step = int(config.get("eval_step", 1) or 1)
    best: dict[str, Any] = {"score": None, "epochs": 0}
    if resuming:  # this trial was cut off by an interrupted sweep: go on from its last epoch
        from recbole_ssm.checkpoint import read_resume_state

        done = [v for _, v in read_resume_state(resume_file).get("valid_scores", []) if not math.isnan(v)]
        if done:
            best["score"] = max(done) if bigger else min(done)

    def better(a: float, b: float | None) -> bool:
        return b is None or (a > b if bigger else a < b)

    def report(validation: int, score: float, result: dict) -> bool:
        score = float(score)
        if not math.isnan(score) and better(score, best["score"]):
            best["score"] = score
        best["epochs"] = (validation + 1) * eval_step
        metrics = {f"valid/{k}": float(v) for k, v in (result or {}).items()}
        rayapi.report({
            VALID_SCORE: score,
            BEST_VALID: best["score"] if best["score"] is not None else score,
            EPOCH: best["epochs"],
            EPOCHS_TRAINED: best["epochs"],
            **metrics,
        })
        return deadline is not None and time.time() >= deadline  # True: end the training after this epoch

    if resuming:
        out = run(resume=resume_file, callbacks=[report])
    else:
        out = run(model, dataset, config_files, config, saved=True, callbacks=[report], resume_file=resume_file)
    result = out.result
    # the best-epoch checkpoint (the trainer's model after the test) with the history left out
    seen_out = {split: evaluate_history_left_out(out.trainer, out.dataset, loader)
                for split, loader in (("valid", out.valid_data), ("test", out.test_data))}
    final = {
        VALID_SCORE: best["score"] if best["score"] is not None else float(result["best_valid_score"]),
        BEST_VALID: float(result["best_valid_score"]),
        FINISHED: True,
        CUT: out.trainer.ended_by_callback is not None,
        EPOCHS_TRAINED: best["epochs"],
        **{f"valid/{k}": float(v) for k, v in (result["best_valid_result"] or {}).items()},
        **{f"test/{k}": float(v) for k, v in (result["test_result"] or {}).items()},
        **{f"{split}{SEEN_OUT}/{k}": float(v) for split, res in seen_out.items() for k, v in res.items()},
    }
    rayapi.report(final)
