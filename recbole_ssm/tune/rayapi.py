"""The few Ray Tune calls the sweep makes, for Ray 2.6 (what RecBole 1.2.1 declares) and current Ray.

Ray moved its trainable-side API from ``ray.air.session`` to ``ray.tune`` (``tune.report``,
``tune.get_context``) and its run settings from ``ray.air`` to ``tune.RunConfig``; it also
replaced ``TuneConfig(chdir_to_trial_dir=...)`` by the ``RAY_CHDIR_TO_TRIAL_DIR`` variable.
Which one is used is decided by what the installed Ray has, not by its version string.
"""

from __future__ import annotations

from typing import Any


def _tune():
    from ray import tune

    return tune


def modern() -> bool:
    """Whether the installed Ray has the ``ray.tune`` trainable API (report, get_context, RunConfig)."""
    tune = _tune()
    return all(hasattr(tune, name) for name in ("get_context", "report", "RunConfig", "FailureConfig"))


def report(metrics: dict[str, Any]) -> None:
    """Report one result of the running trial."""
    if modern():
        _tune().report(metrics)
    else:
        from ray.air import session

        session.report(metrics)


def trial_dir() -> str:
    """The running trial's own folder."""
    if modern():
        return _tune().get_context().get_trial_dir()
    from ray.air import session

    return session.get_trial_dir()


def run_config(name: str, storage_path: str, max_failures: int, verbose: int):
    """``RunConfig`` with a ``FailureConfig``, from wherever this Ray keeps them."""
    if modern():
        tune = _tune()
        return tune.RunConfig(name=name, storage_path=storage_path, verbose=verbose,
                              failure_config=tune.FailureConfig(max_failures=max_failures))
    from ray import air

    return air.RunConfig(name=name, storage_path=storage_path, verbose=verbose,
                         failure_config=air.FailureConfig(max_failures=max_failures))


def tune_config_chdir() -> dict[str, Any]:
    """The ``TuneConfig`` keyword that makes each trial start in its own folder (none on current
    Ray, where trials start there by default and ``RAY_CHDIR_TO_TRIAL_DIR`` is set in
    :func:`worker_env_vars`)."""
    return {} if modern() else {"chdir_to_trial_dir": True}


def worker_env_vars() -> dict[str, str]:
    """Environment variables the trial workers need for the behaviour above."""
    return {"RAY_CHDIR_TO_TRIAL_DIR": "1"}
