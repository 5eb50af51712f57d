"""recbole-ssm: state space model sequential recommenders (Mamba, Mamba2, Hydra) for RecBole."""

from recbole_ssm import compat

__version__ = "0.1.0"

compat.restore_numpy_aliases()  # RecBole's metrics need them in every process (see compat.py)
compat.silence_recbole_syntax_warnings()  # Python 3.12+ (see compat.py)


def get_model(name):
    """Model class for ``name``: recbole-ssm's models first, then RecBole's (see registry.py)."""
    from recbole_ssm.registry import get_model as _get_model

    return _get_model(name)


def __getattr__(name: str):
    """The package's verbs, imported on first use: ``prepare`` (your own events to atomic files),
    ``run_recbole_ssm`` (train and test; the result names the checkpoint) and ``Recommender``
    (top-k items from a checkpoint)."""
    if name == "prepare":
        from recbole_ssm.data.pipeline import prepare

        return prepare
    if name == "run_recbole_ssm":
        from recbole_ssm.quick_start import run_recbole_ssm

        return run_recbole_ssm
    if name == "Recommender":
        from recbole_ssm.serve import Recommender

        return Recommender
    raise AttributeError(f"module 'recbole_ssm' has no attribute {name!r}")


__all__ = ["get_model", "prepare", "run_recbole_ssm", "Recommender", "__version__"]
