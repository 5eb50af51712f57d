"""One Tune trial: the normal recbole-ssm pipeline (``quick_start.run``), reporting every validation.

Each trial runs in its own Ray worker process (``reuse_actors=False``), whose working directory
is the trial's folder: RecBole's ``log/`` and the best-epoch checkpoint land there. The data set
is loaded once when the trial starts; every epoch reuses it. After each validation the trial
reports ``valid_score`` (RecBole's ``valid_metric``) with ``epoch``, so a scheduler such as ASHA
can stop it; a stopped trial ends inside the report call (Ray raises ``SystemExit`` in the
trial's thread), which is not an error. A trial that finishes reports once more, without
``epoch``, with its best validation and its test metrics.
"""

from __future__ import annotations

import math
import os
from typing import Any

# Keys of a trial's results (besides the metric names, prefixed "valid/" and "test/").
VALID_SCORE = "valid_score"  # this epoch's validation score (RecBole's valid_metric)
BEST_VALID = "best_valid_score"  # best validation score so far
EPOCH = "epoch"  # epochs trained so far, for the scheduler; absent from the final report
EPOCHS_TRAINED = "epochs_trained"  # epochs trained so far, in every report
FINISHED = "finished"  # True on the final report, after the test evaluation


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
) -> None:
    """Tune function trainable: train ``model`` with ``sampled`` settings, reporting each epoch."""
    import torch

    from recbole_ssm.quick_start import run
    from recbole_ssm.tune import rayapi

    torch.set_num_threads(max(1, int(cpus_per_trial)))
    config = trial_config(sampled, fixed, gpus_per_trial, rayapi.trial_dir())
    eval_step = int(config.get("eval_step", 1) or 1)
    best: dict[str, Any] = {"score": None, "epochs": 0}

    def better(a: float, b: float | None) -> bool:
        return b is None or (a > b if bigger else a < b)

    def report(validation: int, score: float, result: dict) -> None:
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

    out = run(model, dataset, config_files, config, saved=True, callbacks=[report])
    result = out.result
    final = {
        VALID_SCORE: best["score"] if best["score"] is not None else float(result["best_valid_score"]),
        BEST_VALID: float(result["best_valid_score"]),
        FINISHED: True,
        EPOCHS_TRAINED: best["epochs"],
        **{f"valid/{k}": float(v) for k, v in (result["best_valid_result"] or {}).items()},
        **{f"test/{k}": float(v) for k, v in (result["test_result"] or {}).items()},
    }
    rayapi.report(final)
