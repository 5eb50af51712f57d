"""Run a model through RecBole's pipeline: config, dataset, trainer, evaluation.

Mirrors ``recbole.quick_start.run_recbole`` and ``objective_function`` with recbole-ssm's
model registry, property files and dataset resolution.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from recbole_ssm import compat, distributed, seen
from recbole_ssm.config import DEFAULT_DATASET, property_files, read_yaml, resolve_dataset, user_settings
from recbole_ssm.data.atomic import check_dataset_files
from recbole_ssm.errors import Interrupted, UsageError
from recbole_ssm.regime import check_train_targets, create_dataset, prepare_data
from recbole_ssm.registry import canonical_name, get_model
from recbole_ssm.settings_check import check_user_settings
from recbole_ssm.targets import trains_every_prefix
from recbole_ssm.trainer import get_trainer, load_weights
from recbole_ssm.utils import best_epoch, count_parameters


def build_config(
    model: Any = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
):
    """Return ``(recbole Config, model class)`` with recbole-ssm's precedence (see config.py)."""
    from recbole.config import Config

    user, sources = user_settings(config_file_list, config_dict)
    model = model if model is not None else user.get("model")
    if model is None:
        raise UsageError("no model given: pass --model=NAME (e.g. --model=Hydra4Rec or --model=SASRec)")
    dataset = dataset or user.get("dataset") or DEFAULT_DATASET
    model_class = get_model(model)
    name = model_class.__name__ if not isinstance(model, str) else canonical_name(model)
    data_path = user.get("data_path")
    if data_path is None:
        for path in property_files(name, dataset):
            data_path = read_yaml(path).get("data_path", data_path)
    for warning in check_user_settings(user, sources, name):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    files = property_files(name, dataset, data_path)
    resolve_dataset(dataset, data_path)
    with compat.isolated_argv():
        try:
            config = Config(
                model=model_class,
                dataset=dataset,
                config_file_list=files + list(config_file_list or []),
                config_dict=dict(config_dict or {}),
            )
        except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as exc:
            # RecBole validates settings in Config (metrics, topk, CE with negatives, ...)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise UsageError(f"invalid configuration: {reason}") from None
    if "train_targets" not in user and config["train_targets"] == "all" \
            and not trains_every_prefix(config, model_class):
        # a default of 'all' that these settings cannot train exactly (Hydra4Rec with more than one layer)
        config["train_targets"] = "last"
        print(f"note: {model_class.__name__} trains under train_targets=last with these settings (its default 'all' "
              "needs num_layers=1 or causal=True); choose with --train_targets=last or cloze", file=sys.stderr,
              flush=True)
    check_train_targets(config, model_class)
    seen.check(config)
    check_dataset_files(config)
    if "show_progress" not in user:  # progress bars for a person at a terminal, not in logs or CI
        config["show_progress"] = sys.stderr.isatty()
    return config, model_class


@dataclass
class RunOutput:
    """Everything a run produced; ``result`` is the dict RecBole's ``run_recbole`` returns."""

    result: dict
    config: Any
    model: Any
    trainer: Any
    saved_model_file: str | None
    params: tuple
    timings: dict = field(default_factory=dict)
    test_data: Any = None  # the test split's dataloader
    dataset: Any = None  # the whole data set the loaders were cut from


def run(
    model: Any = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
    callbacks: list | None = None,
    fit_memory=None,
    resume: str | None = None,
    resume_file: str | None = None,
) -> RunOutput:
    """Train and test one model; ``callbacks`` are called as ``cb(epoch, valid_score, valid_result)``
    after each validation; ``fit_memory`` (e.g. ``bench.common.CpuPeakMemory``) measures the peak
    memory of training (``trainer.fit_peak_mib``). ``nproc > 1``: see recbole_ssm/distributed.py.

    With ``saved`` and ``resume_state`` (the default), the training state is saved before every
    epoch to ``<checkpoint>-resume.pth`` (or ``resume_file``; removed when the run ends); ``resume``
    continues the run that wrote such a file, with that run's settings, and ends as it would have ended."""
    from recbole.utils import init_logger, init_seed

    # 1. settings: from the command line and property files, or from the state being resumed
    state = read_resume_state(resume) if resume else None
    if state is not None:
        config = state["config"]
        _runtime_of_this_process(config)
        model_class = get_model(config["model"])
    else:
        config, model_class = build_config(model, dataset, config_file_list, config_dict)
    # 2. processes: this one, or N ranks started here (rank 0's output is returned), or torchrun's
    distributed.check(config, resume)
    if (config["nproc"] or 1) > 1 and distributed.env_world_size() == 1:
        args = (model, dataset, config_file_list, config_dict, saved, callbacks, fit_memory)
        return distributed.launch(config["nproc"], _run_rank, args)
    world = distributed.setup(config) if distributed.requested(config) else None
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logging.getLogger().info(config)
    # 3. data, 4. model, 5. trainer, 6. training and test
    t0 = time.perf_counter()
    data, (train_data, valid_data, test_data) = _load_data(config, world)
    t_data = time.perf_counter() - t0
    init_seed(config["seed"] + (world.rank if world else config["local_rank"]), config["reproducibility"])
    net, params = _build_model(config, model_class, train_data)
    trainer = _build_trainer(config, net, callbacks, fit_memory, world)
    _resume_state_file(trainer, state, resume, resume_file, saved, train_data)
    result = _fit_and_test(trainer, config, train_data, valid_data, test_data, saved, world)
    checkpoint = os.path.abspath(trainer.saved_model_file) if saved else None
    result["checkpoint"] = checkpoint
    return RunOutput(
        result=result,
        config=config,
        model=net,
        trainer=trainer,
        saved_model_file=checkpoint,
        params=params,
        timings={"data_s": t_data, "fit_s": trainer.fit_s},
        test_data=test_data,
        dataset=data,
    )


def _load_data(config, world):
    """RecBole's data set and its (train, valid, test) loaders (``train_targets`` decides the
    training loader; sharded per rank)."""
    with compat.quiet_recbole():
        data = create_dataset(config)
        logging.getLogger().info(data)
        train_data, valid_data, test_data = prepare_data(config, data)
        if world is not None:
            train_data = distributed.shard_train_loader(train_data, config, world)
    return data, (train_data, valid_data, test_data)


def _build_model(config, model_class, train_data):
    from recbole.utils import set_color

    net = model_class(config, train_data._dataset).to(config["device"])
    logger = logging.getLogger()
    logger.info(net)
    params = count_parameters(net)
    logger.info(set_color("parameters", "blue") + f": {params[0]} total, {params[1]} without embeddings")
    return net, params


def _build_trainer(config, net, callbacks, fit_memory, world):
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    trainer.valid_callbacks.extend(callbacks or [])
    trainer.fit_memory = fit_memory
    if world is not None:
        trainer.distribute(world)
    return trainer


def _resume_state_file(trainer, state, resume, resume_file, saved: bool, train_data) -> None:
    """Continue from ``state`` (read from ``resume``), or choose where the run saves its resume state."""
    if state is not None:
        trainer.resume_file = os.path.abspath(resume)
        trainer.load_resume_state(state, train_data)
        logging.getLogger().info(f"resumed from {resume}: epoch {state['epoch']}")
    elif saved and trainer.config["resume_state"] is not False:
        default = os.path.splitext(os.path.abspath(trainer.saved_model_file))[0] + "-resume.pth"
        trainer.resume_file = os.path.abspath(resume_file or default)


def _fit_and_test(trainer, config, train_data, valid_data, test_data, saved: bool, world) -> dict:
    """Train with early stopping, test the best model once; the dict RecBole's ``run_recbole`` returns."""
    from recbole.utils import set_color

    show = config["show_progress"]
    with compat.quiet_recbole(), _interrupts_become_errors(trainer):
        t0 = time.perf_counter()
        best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved, show_progress=show)
        trainer.fit_s = time.perf_counter() - t0
        test_result = None
        if world is None or world.main:  # evaluated once, on the whole test split
            with compat.recbole_checkpoint_loading():
                test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=show)
        test_result = distributed.broadcast(test_result, world)
    distributed.teardown(world)
    if trainer.resume_file and os.path.exists(trainer.resume_file):
        os.remove(trainer.resume_file)  # the run is complete: nothing left to resume
    logger = logging.getLogger()
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }


def _run_rank(model, dataset, config_file_list, config_dict, saved, callbacks, fit_memory) -> RunOutput:
    """One rank of ``run(..., nproc=N)``: what rank 0 returns travels back to the caller by pickle,
    so the model, trainer and loaders stay behind (the model is in ``saved_model_file``)."""
    out = run(model, dataset, config_file_list, config_dict, saved, callbacks, fit_memory)
    timings = {**out.timings, "epoch_times": list(out.trainer.epoch_times),
               "valid_scores": list(out.trainer.valid_scores)}
    return RunOutput(result=out.result, config=out.config, model=None, trainer=None,
                     saved_model_file=out.saved_model_file, params=out.params, timings=timings)


def read_resume_state(path: str) -> dict:
    """A resume state written by a training run (``<checkpoint>-resume.pth``), or a one-line error."""
    if not os.path.isfile(path):
        raise UsageError(f"resume state not found: {path} (a run writes <checkpoint_dir>/<run>-resume.pth)")
    try:
        state = compat.load_checkpoint(path)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{path} is not a resume state ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != "recbole-ssm resume 1":
        raise UsageError(f"{path} is not a resume state of a recbole-ssm run (a best-model checkpoint? "
                         "resume from the -resume.pth file beside it)")
    return state


@contextlib.contextmanager
def _interrupts_become_errors(trainer):
    """SIGTERM is handled like Ctrl-C while training; either ends the run with the command that
    resumes it (from the state saved before the current epoch)."""
    import signal
    import threading

    def on_term(signum, frame):
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    try:
        yield
    except KeyboardInterrupt:
        path = trainer.resume_file
        if path and os.path.exists(path):
            raise Interrupted(f"training interrupted; resume with: python run_recbole_ssm.py --resume={path}") from None
        raise Interrupted("training interrupted before its first epoch started; nothing to resume") from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def run_recbole_ssm(
    model: Any = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
) -> dict:
    """Train and test ``model`` on ``dataset``; returns the dict RecBole's ``run_recbole`` returns, plus
    ``checkpoint``: the path of the saved best model (None when ``saved`` is False)."""
    return run(model, dataset, config_file_list, config_dict, saved).result


def objective_function(config_dict=None, config_file_list=None, saved=True) -> dict:
    """RecBole's hyper-tuning objective, through recbole-ssm (model and dataset come from the config)."""
    out = run(None, None, config_file_list, config_dict, saved)
    return {"model": out.config["model"], **out.result}


def load_data_and_model(model_file: str, settings: dict | None = None):
    """Rebuild config, data and model from a checkpoint written by a run.

    The checkpoint is read by an unpickler that builds only RecBole's config types, tensors
    and model classes (``compat.load_checkpoint``), so a file from elsewhere cannot run code.
    ``settings`` replace the checkpoint's own for the evaluation (only ``eval_filter_seen``, which
    changes no weights). Returns ``(config, model, dataset, train, valid, test)``.
    """
    from recbole.utils import init_logger, init_seed

    if not os.path.isfile(model_file):
        raise UsageError(f"checkpoint not found: {model_file}")
    try:
        checkpoint = compat.load_checkpoint(model_file)
    except Exception as exc:  # a truncated, foreign or non-checkpoint file: pickle's many errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{model_file} is not a checkpoint of a training run ({type(exc).__name__}: {first}); "
                         "give a .pth file that a run wrote into its checkpoint_dir") from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise UsageError(f"{model_file} is not a checkpoint of a training run (no config and state_dict in it)")
    config = checkpoint["config"]
    for key, value in (settings or {}).items():
        if key not in EVALUATION_SETTINGS:
            raise UsageError(f"{key} cannot change for a trained model; "
                             f"settings that can: {', '.join(EVALUATION_SETTINGS)}")
        config[key] = value
    seen.check(config)
    _runtime_of_this_process(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    with compat.quiet_recbole():
        data = create_dataset(config)
        train_data, valid_data, test_data = prepare_data(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    load_weights(net, checkpoint["state_dict"], model_file, config)
    net.load_other_parameter(checkpoint.get("other_parameter"))
    return config, net, data, train_data, valid_data, test_data


def _runtime_of_this_process(config) -> None:
    """What RecBole's Config sets up when it is built, for a Config read from a checkpoint.

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


EVALUATION_SETTINGS = ("eval_filter_seen", "eval_score_chunks")


def evaluation_run(model_file: str, settings: dict | None = None) -> tuple[Any, Any, Any, dict]:
    """(config, trainer, dataset, {"valid": loader, "test": loader}) for scoring a saved model on its
    own data set (``settings``: see :func:`load_data_and_model`)."""
    config, net, data, _train, valid, test = load_data_and_model(model_file, settings)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    return config, trainer, data, {"valid": valid, "test": test}


def evaluate_splits(model_file: str, splits=("test",), settings: dict | None = None) -> tuple[Any, dict]:
    """(config, {split: metrics}) of a saved model on its own data set's ``splits`` ("valid",
    "test"), as RecBole's trainer computes them, the data loaded once (``settings``: see
    :func:`load_data_and_model`)."""
    config, trainer, _data, loaders = evaluation_run(model_file, settings)
    return config, score_splits(trainer, loaders, splits)


def score_splits(trainer, loaders: dict, splits) -> dict:
    """{split: metrics} of ``trainer``'s model on ``loaders[split]`` for each of ``splits``, as RecBole's
    trainer computes them."""
    with compat.quiet_recbole():
        return {name: trainer.evaluate(loaders[name], load_best_model=False) for name in splits}


def evaluate_checkpoint(model_file: str, split: str = "test", settings: dict | None = None) -> dict:
    """Metrics of a saved model on its own data split, as RecBole's trainer computes them
    (``settings``: see :func:`load_data_and_model`)."""
    name = "test" if split == "test" else "valid"
    return evaluate_splits(model_file, (name,), settings)[1][name]


def format_metrics(split: str, result: dict | None) -> str:
    """One split's metrics as the CLI prints them: ``test  hit@10=0.1234  ndcg@10=...``."""
    return f"{split:5s} " + "  ".join(f"{k}={float(v):.4f}" for k, v in (result or {}).items())


def format_result(out: RunOutput) -> str:
    """Human summary printed by the CLI."""
    lines = [f"model={out.config['model']} dataset={out.config['dataset']} "
             f"params={out.params[0]} (without embeddings {out.params[1]}) "
             f"fit={out.timings.get('fit_s', 0):.1f}s"]
    # the regime trained and where early stopping found the kept checkpoint (0-based epochs)
    trainer = out.trainer
    scores = trainer.valid_scores if trainer is not None else out.timings.get("valid_scores")
    epochs = trainer.epoch_times if trainer is not None else out.timings.get("epoch_times")
    if scores and epochs:
        best = best_epoch(scores, bool(out.config["valid_metric_bigger"]))
        lines[0] += f" train_targets={out.config['train_targets'] or 'last'} epochs={len(epochs)} best_epoch={best}"
    for name, res in (("valid", out.result["best_valid_result"]), ("test", out.result["test_result"])):
        lines.append(format_metrics(name, res))
    if out.saved_model_file:
        lines.append(f"saved {out.saved_model_file}")
        command = f"python run_recbole_ssm.py recommend --checkpoint={out.saved_model_file} --users=all"
        lines.append(f"  every user's top 10: {command}")
    return "\n".join(lines)
