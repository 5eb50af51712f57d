"""A run's saved files and what is rebuilt from them.

- Reading a best-model checkpoint or a resume state, each with a one-line error when the file is
  missing or is not what it should be (:func:`read_checkpoint`, :func:`read_resume_state`).
- The data of a run, evaluation wiring included (:func:`load_data`): RecBole's data set, the
  training loader of the run's ``train_targets`` and the evaluation loaders, which carry the users'
  seen items under ``eval_filter_seen``.
- A saved model rebuilt on its own data set and scored as RecBole's trainer scores it
  (:func:`load_data_and_model`, :func:`evaluate_splits`, :func:`evaluate_checkpoint`).

Files are read by an unpickler that builds only RecBole's config types, tensors and model classes
(``compat.load_checkpoint``), so a file from elsewhere cannot run code.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from recbole_ssm import compat, seen
from recbole_ssm.data.atomic import check_dataset_files
from recbole_ssm.errors import UsageError
from recbole_ssm.regime import create_dataset, prepare_data
from recbole_ssm.registry import get_model
from recbole_ssm.trainer import RESUME_FORMAT, get_trainer, load_weights

# Settings a trained model may be evaluated under other than its own: they change no weights.
EVALUATION_SETTINGS = ("eval_filter_seen", "eval_score_chunks")


def _read(path: str, short: str, noun: str, missing: str, fits: Callable[[Any], bool], misfit: str) -> dict:
    """The dict saved at ``path``; a UsageError when the file is missing (``short`` not found;
    ``missing``: where such files come from), unreadable, or not what ``fits`` accepts (not a
    ``noun``; ``misfit``: what to give instead)."""
    if not os.path.isfile(path):
        raise UsageError(f"{short} not found: {path} ({missing})")
    try:
        saved = compat.load_checkpoint(path)
    except Exception as exc:  # a truncated, foreign or non-checkpoint file: pickle's many errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{path} is not a {noun} ({type(exc).__name__}: {first}); {misfit}") from None
    if not fits(saved):
        raise UsageError(f"{path} is not a {noun}; {misfit}")
    return saved


def read_checkpoint(path: str) -> dict:
    """A best-model checkpoint written by a training run (``config``, ``state_dict``, ...)."""
    return _read(path, "checkpoint", "checkpoint of a training run", "a run writes <checkpoint_dir>/<model>-<time>.pth",
                 lambda c: isinstance(c, dict) and {"config", "state_dict"} <= set(c),
                 "give a .pth file that a run wrote into its checkpoint_dir")


def read_resume_state(path: str) -> dict:
    """A resume state written by a training run (``<checkpoint>-resume.pth``)."""
    return _read(path, "resume state", "resume state of a recbole-ssm run",
                 "a run writes <checkpoint_dir>/<run>-resume.pth",
                 lambda s: isinstance(s, dict) and s.get("format") == RESUME_FORMAT,
                 "resume from the -resume.pth file a run wrote beside its best-model checkpoint")


def runtime_of_this_process(config) -> None:
    """What RecBole's Config sets up when it is built, for a Config read from a saved file.

    The device is the one this process has: a checkpoint trained on a GPU is evaluated on the
    CPU where there is none (RecBole would call ``.to("cuda")`` and fail). The data set must be
    where the training run read it.
    """
    import torch

    device = torch.device(config["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
        config["use_gpu"] = False
    folder = config["data_path"]
    if not os.path.isdir(folder):
        raise UsageError(f"the checkpoint's data set folder {folder} does not exist here: run from the folder the "
                         "model was trained in, or put the data set there")
    check_dataset_files(config)


def load_data(config, log: bool = False):
    """``(dataset, train, valid, test)`` of a run: RecBole's data set and data preparation, the
    training loader of ``train_targets``, and the evaluation loaders given the users' seen items
    when ``eval_filter_seen`` is on."""
    with compat.quiet_recbole():
        data = create_dataset(config)
        if log:
            logging.getLogger().info(data)
        train, valid, test = prepare_data(config, data)
        seen.attach(config, data, valid, test)
    return data, train, valid, test


def load_data_and_model(model_file: str, settings: dict | None = None):
    """Rebuild config, data and model from a checkpoint written by a run.

    ``settings`` replace the checkpoint's own for the evaluation (only :data:`EVALUATION_SETTINGS`,
    which change no weights). Returns ``(config, model, dataset, train, valid, test)``.
    """
    from recbole.utils import init_logger, init_seed

    checkpoint = read_checkpoint(model_file)
    config = checkpoint["config"]
    for key, value in (settings or {}).items():
        if key not in EVALUATION_SETTINGS:
            raise UsageError(f"{key} cannot change for a trained model; "
                             f"settings that can: {', '.join(EVALUATION_SETTINGS)}")
        config[key] = value
    seen.check(config)
    runtime_of_this_process(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data, train_data, valid_data, test_data = load_data(config)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    load_weights(net, checkpoint["state_dict"], model_file, config)
    net.load_other_parameter(checkpoint.get("other_parameter"))
    return config, net, data, train_data, valid_data, test_data


def evaluation_run(model_file: str, settings: dict | None = None) -> tuple[Any, Any, Any, dict]:
    """(config, trainer, dataset, {"valid": loader, "test": loader}) for scoring a saved model on its
    own data set (``settings``: see :func:`load_data_and_model`)."""
    config, net, data, _train, valid, test = load_data_and_model(model_file, settings)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    return config, trainer, data, {"valid": valid, "test": test}


def score_splits(trainer, loaders: dict, splits) -> dict:
    """{split: metrics} of ``trainer``'s model on ``loaders[split]`` for each of ``splits``, as RecBole's
    trainer computes them."""
    with compat.quiet_recbole():
        return {name: trainer.evaluate(loaders[name], load_best_model=False) for name in splits}


def evaluate_splits(model_file: str, splits=("test",), settings: dict | None = None) -> tuple[Any, dict]:
    """(config, {split: metrics}) of a saved model on its own data set's ``splits`` ("valid",
    "test"), the data loaded once (``settings``: see :func:`load_data_and_model`)."""
    config, trainer, _data, loaders = evaluation_run(model_file, settings)
    return config, score_splits(trainer, loaders, splits)


def evaluate_checkpoint(model_file: str, split: str = "test", settings: dict | None = None) -> dict:
    """Metrics of a saved model on its own data split, as RecBole's trainer computes them
    (``settings``: see :func:`load_data_and_model`)."""
    name = "test" if split == "test" else "valid"
    return evaluate_splits(model_file, (name,), settings)[1][name]
