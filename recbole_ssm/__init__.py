"""recbole-ssm: state space model sequential recommenders (Mamba, Mamba2, Hydra) for RecBole."""

from recbole_ssm import compat

__version__ = "0.1.0"

compat.restore_numpy_aliases()  # RecBole's metrics need them in every process (see compat.py)
compat.silence_recbole_syntax_warnings()  # Python 3.12+ (see compat.py)


def get_model(name):
    """Model class for ``name``: recbole-ssm's models first, then RecBole's (see registry.py)."""
    from recbole_ssm.registry import get_model as _get_model

    return _get_model(name)


__all__ = ["get_model", "__version__"]
