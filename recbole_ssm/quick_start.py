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
from recbole_ssm.checkpoint import (
    load_data,
    load_data_and_model,  # noqa: F401  (RecBole's quick_start offers it too)
    read_resume_state,
    runtime_of_this_process,
)
from recbole_ssm.config import DEFAULT_DATASET, property_files, read_yaml, resolve_dataset, user_settings
from recbole_ssm.data.atomic import check_dataset_files
from recbole_ssm.errors import Interrupted, UsageError
from recbole_ssm.regime import check_train_targets
from recbole_ssm.registry import canonical_name, get_model, plugin_models
from recbole_ssm.settings_check import PLAIN_CE, check_user_settings
from recbole_ssm.targets import trains_every_prefix
from recbole_ssm.trainer import get_trainer
from recbole_ssm.utils import count_parameters


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
    tuned = user.get("tuned_defaults", True) is not False  # False: the model's plain defaults on this data set
    if data_path is None:
        for path in property_files(name, dataset, tuned=tuned):
            data_path = read_yaml(path).get("data_path", data_path)
    for warning in check_user_settings(user, sources, name):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    files = property_files(name, dataset, data_path, tuned=tuned)
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
    _check_ce_settings(config, model_class)
    seen.check(config)
    check_dataset_files(config)
    if "show_progress" not in user:  # progress bars for a person at a terminal, not in logs or CI
        config["show_progress"] = sys.stderr.isatty()
    return config, model_class


def _check_ce_settings(config, model_class) -> None:
    """The ce_* loss settings only where the model's loss reads them (the ``CE_SETTINGS`` trait):
    elsewhere they would be ignored, and the run would be plain full CE under another name."""
    changed = [f"{key}={config[key]}" for key, plain in PLAIN_CE.items()
               if config[key] is not None and config[key] != plain]
    if not changed or getattr(model_class, "CE_SETTINGS", False):
        return
    takers = ", ".join(n for n, c in plugin_models().items() if getattr(c, "CE_SETTINGS", False))
    raise UsageError(f"{' '.join(changed)} is not implemented for {model_class.__name__}'s loss; models that "
                     f"take the ce_* settings: {takers}; unset it")


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
    valid_data: Any = None  # the validation split's dataloader
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
    after each validation; ``fit_memory`` (e.g. ``bench.memory.CpuPeakMemory``) measures the peak
    memory of training (``trainer.fit_peak_mib``). ``nproc > 1``: see recbole_ssm/distributed.py.

    With ``saved`` and ``resume_state`` (the default), the training state is saved before every
    epoch to ``<checkpoint>-resume.pth`` (or ``resume_file``; removed when the run ends); ``resume``
    continues the run that wrote such a file, with that run's settings, and ends as it would have ended."""
    from recbole.utils import init_logger, init_seed

    # 1. settings: from the command line and property files, or from the state being resumed
    state = read_resume_state(resume) if resume else None
    if state is not None:
        config = state["config"]
        runtime_of_this_process(config)
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
        valid_data=valid_data,
        dataset=data,
    )


def _load_data(config, world):
    """RecBole's data set and its (train, valid, test) loaders (``train_targets`` decides the
    training loader; sharded per rank)."""
    data, train_data, valid_data, test_data = load_data(config, log=True)
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
