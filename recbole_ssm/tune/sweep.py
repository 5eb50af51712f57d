"""A sweep: settings, Ray start-up (local or an existing cluster), Tuner, resume.

Everything a sweep writes lies in its run folder ``<storage>/<name>/``: Tune's trial folders
(each with RecBole's log and best-epoch checkpoint), ``sweep.yaml`` (the settings, read back by
``--resume``), ``trials.csv``, ``best.yaml`` and, for a sweep on this machine, Ray's temp dir
``ray/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from recbole_ssm.errors import UsageError

SETTINGS_FILE = "sweep.yaml"
# Ray puts Unix sockets under its temp dir: <dir>/session_<date>_<pid>/sockets/plasma_store must
# fit the ~107-byte limit on socket paths, which leaves about 40 characters for <dir>.
MAX_RAY_TEMP_DIR = 40


@dataclass
class SweepSettings:
    """What ``tune`` was asked to do; stored as ``sweep.yaml`` in the run folder."""

    model: str
    dataset: str
    space: dict  # the space file's mapping (validated)
    space_file: str
    num_samples: int = 8
    scheduler: str = "asha"
    search: str = "random"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    grace_period: int = 1
    reduction_factor: float = 2.0
    time_budget_h: float | None = None  # wall-clock hours of the whole sweep (every call together)
    config_files: list = field(default_factory=list)  # absolute paths
    fixed: dict = field(default_factory=dict)  # --KEY=VALUE overrides applied to every trial

    # settings a resumed sweep keeps (Tune restores them with the sweep); only --address may change
    FIXED_ON_RESUME = ("model", "dataset", "space", "num_samples", "scheduler", "search", "cpus_per_trial",
                       "gpus_per_trial", "max_concurrent", "grace_period", "reduction_factor",
                       "time_budget_h", "config_files", "fixed")

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str) -> SweepSettings:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        try:
            return cls(**data)
        except TypeError as exc:
            raise UsageError(f"{path} is not a sweep settings file ({exc}); check --storage/--name") from None


@dataclass
class RunInfo:
    """Facts about the resolved RecBole config the driver needs (from ``build_config``)."""

    valid_metric: str
    bigger: bool
    epochs: int
    seed: int
    reproducibility: bool


def resolve(settings: SweepSettings) -> RunInfo:
    """Build the fixed part of the config once in the driver: unknown model/dataset fail here."""
    from recbole_ssm.quick_start import build_config

    config, _cls = build_config(settings.model, settings.dataset, settings.config_files, settings.fixed)
    return RunInfo(
        valid_metric=str(config["valid_metric"]).lower(),
        bigger=bool(config["valid_metric_bigger"]),
        epochs=int(config["epochs"]),
        seed=int(config["seed"]),
        reproducibility=bool(config["reproducibility"]),
    )


# ---------------------------------------------------------------------------------------
# Ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds if ``address`` (``ray://host:port`` or ``host:port``) is closed."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise UsageError(
            f"--address={address} is not an address: use auto, HOST:PORT or ray://HOST:PORT "
            "(the head node's port 10001 for ray://)"
        )
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(
            f"cannot reach a Ray cluster at --address={address} ({reason}); start one with "
            "'ray start --head' on that machine, or leave out --address to run on this machine"
        ) from None


def _package_root() -> str:
    import recbole_ssm

    return os.path.dirname(os.path.dirname(os.path.abspath(recbole_ssm.__file__)))


def worker_env(run_dir: str | None) -> dict:
    """Environment of the trial workers: they import the same recbole_ssm as this driver; on this
    machine (``run_dir`` given) torch's compile cache is in the run folder, not in TMPDIR (torch
    creates it on import of torch._dynamo, which building any optimizer does)."""
    from recbole_ssm.tune.rayapi import worker_env_vars

    env = {"RAY_USAGE_STATS_ENABLED": "0", **worker_env_vars()}
    if run_dir:
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(run_dir, "torchinductor")
    root = _package_root()
    if os.path.basename(root) not in ("site-packages", "dist-packages"):
        extra = os.environ.get("PYTHONPATH", "")
        env["PYTHONPATH"] = root + (os.pathsep + extra if extra else "")
    props = os.environ.get("RECBOLE_SSM_PROPERTIES")
    if props:
        env["RECBOLE_SSM_PROPERTIES"] = os.path.abspath(props)
    return env


class RayTempDir:
    """Ray's temp dir inside the run folder; reached through a short link where the path is long.

    On exit the link (never the folder) is removed, so nothing is left outside the run folder.
    """

    def __init__(self, run_dir: str):
        self.target = os.path.join(run_dir, "ray")
        self.link: str | None = None

    def __enter__(self) -> str:
        os.makedirs(self.target, exist_ok=True)
        if len(self.target) <= MAX_RAY_TEMP_DIR:
            return self.target
        base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
        holder = tempfile.mkdtemp(prefix="rs-", dir=base)
        self.link = os.path.join(holder, "r")
        os.symlink(self.target, self.link)
        return self.link

    def __exit__(self, *exc) -> None:
        if self.link:
            shutil.rmtree(os.path.dirname(self.link), ignore_errors=True)


def check_pyarrow() -> None:
    """Ray Tune 2.6 reads its results through pyarrow; an unusable one fails with a clear error."""
    try:
        import pyarrow.fs  # noqa: F401
    except ModuleNotFoundError:
        raise UsageError("Ray Tune needs pyarrow: pip install 'pyarrow<26'") from None
    except ImportError as exc:
        import numpy

        first = str(exc).strip().splitlines()[0]
        raise UsageError(
            f"pyarrow cannot be imported with numpy {numpy.__version__} ({first}); "
            "install a build for numpy 1: pip install 'pyarrow<26'"
        ) from None


def init_ray(address: str | None, temp_dir: str | None, run_dir: str) -> None:
    """Start Ray on this machine (no dashboard, no usage stats) or connect to ``address``."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    check_pyarrow()
    import ray

    kwargs: dict[str, Any] = {
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": worker_env(None if address else run_dir)},
    }
    if address:
        check_address(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(
                f"cannot connect to Ray at --address={address} ({first}); start a cluster with "
                "'ray start --head', or leave out --address to run on this machine"
            ) from None
    else:
        # Current Ray protects a new local cluster with a token it would save in ~/.ray; a token
        # of this run's own, in the environment the cluster's processes inherit, keeps it there.
        if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
            os.environ["RAY_AUTH_TOKEN"] = uuid.uuid4().hex
        ray.init(include_dashboard=False, _temp_dir=temp_dir, **kwargs)


# ---------------------------------------------------------------------------------------
# Tune


def make_trainable(settings: SweepSettings, info: RunInfo, trial_fixed: dict, deadline: float | None = None):
    from ray import tune

    from recbole_ssm.tune.trainable import run_trial

    fn = tune.with_parameters(
        run_trial,
        model=settings.model,
        dataset=settings.dataset,
        config_files=list(settings.config_files),
        fixed=trial_fixed,
        cpus_per_trial=settings.cpus_per_trial,
        gpus_per_trial=settings.gpus_per_trial,
        bigger=info.bigger,
        deadline=deadline,
    )
    return tune.with_resources(fn, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def make_scheduler(settings: SweepSettings, info: RunInfo):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from recbole_ssm.tune.trainable import EPOCH, VALID_SCORE

    if settings.scheduler == "fifo":
        return FIFOScheduler()
    # ASHA stops a trial that reaches max_t; one more than the epoch count lets the last epoch
    # run to its end, so a finished trial still reports its test metrics.
    return ASHAScheduler(
        time_attr=EPOCH,
        metric=VALID_SCORE,
        mode="max" if info.bigger else "min",
        max_t=info.epochs + 1,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )


def run_tuner(settings: SweepSettings, info: RunInfo, trial_fixed: dict, storage: str, name: str,
              resume: bool, deadline: float | None = None):
    """Run (or resume) the sweep; returns Ray Tune's ResultGrid. ``deadline`` (a ``time.time()``
    value): the end of the sweep's time budget, which each trial is given (see trainable)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from recbole_ssm.tune import rayapi
    from recbole_ssm.tune.space import parse_space, to_param_space

    trainable = make_trainable(settings, info, trial_fixed, deadline)
    run_dir = os.path.join(storage, name)
    if resume:
        tuner = tune.Tuner.restore(run_dir, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        params = parse_space(settings.space, settings.model, settings.dataset, source=settings.space_file)
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(params, settings.search),
            tune_config=tune.TuneConfig(
                num_samples=settings.num_samples,
                scheduler=make_scheduler(settings, info),
                # the limit is the generator's own: Ray ignores max_concurrent_trials for a search
                # generator such as this one (only a Searcher gets wrapped in a ConcurrencyLimiter)
                search_alg=BasicVariantGenerator(random_state=info.seed, max_concurrent=settings.max_concurrent or 0),
                reuse_actors=False,  # a fresh worker per trial: no state leaks between trials
                **rayapi.tune_config_chdir(),
            ),
            run_config=rayapi.run_config(name=name, storage_path=storage, max_failures=0, verbose=1),
        )
    return tuner.fit()


def can_restore(run_dir: str) -> bool:
    """Whether ``run_dir`` holds Tune's saved state of a sweep (``tuner.pkl``, what
    ``Tuner.restore`` reads), i.e. a sweep that started."""
    return os.path.isfile(os.path.join(run_dir, "tuner.pkl"))


def trial_states(grid, run_dir: str) -> tuple[list[dict] | None, list[str] | None]:
    """Each trial's sampled settings and Tune status (TERMINATED, ERROR, PENDING, ...) in the
    ResultGrid's order. Ray 2.6 keeps the settings on the trials behind the grid; the statuses
    are read back from the state Tune saved, where an interrupted sweep leaves the trials it
    will run again PENDING (in memory they read TERMINATED)."""
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None)
    if trials is None or len(trials) != len(grid):
        return None, None
    status = [str(t.status) for t in trials]
    saved = _saved_statuses(run_dir)
    status = [saved.get(t.trial_id, s) for t, s in zip(trials, status)]
    return [dict(t.config or {}) for t in trials], status


def _saved_statuses(run_dir: str) -> dict[str, str]:
    """``{trial_id: status}`` from Tune's newest ``experiment_state-*.json`` (empty if none)."""
    import glob
    import json

    files = sorted(glob.glob(os.path.join(run_dir, "experiment_state-*.json")))
    if not files:  # e.g. Ray Client: the state is on the head node
        return {}
    try:
        with open(files[-1], encoding="utf-8") as f:
            state = json.load(f)
        trials = [json.loads(t) if isinstance(t, str) else t for t in state.get("checkpoints", [])]
        return {str(t["trial_id"]): str(t["status"]) for t in trials if "trial_id" in t and "status" in t}
    except (OSError, ValueError, TypeError, KeyError):
        return {}
