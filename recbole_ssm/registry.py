"""Model lookup: the plugin's models first, then RecBole's own."""

from __future__ import annotations

import importlib
import inspect

from recbole_ssm.errors import UsageError

# Names users may type for a plugin model (the seed paper calls Mamba2Rec "2Mamba4Rec").
ALIASES = {"2Mamba4Rec": "Mamba2Rec"}

# RecBole submodules searched for a model. RecBole's own get_model also tries its 'exlib'
# models, whose import needs lightgbm / xgboost; those are not offered here.
_RECBOLE_MODULES = (
    "recbole.model.sequential_recommender",
    "recbole.model.general_recommender",
    "recbole.model.context_aware_recommender",
    "recbole.model.knowledge_aware_recommender",
)


def plugin_models() -> dict:
    """``{name: class}`` of the models recbole-ssm defines."""
    from recbole_ssm import models

    return dict(models.MODELS)


def recbole_sequential_models() -> list[str]:
    from recbole.model.abstract_recommender import SequentialRecommender

    from recbole_ssm import compat

    mod = compat.import_recbole_sequential_models()
    return sorted(
        name
        for name, obj in vars(mod).items()
        if inspect.isclass(obj) and issubclass(obj, SequentialRecommender) and obj is not SequentialRecommender
    )


def available_sequential_models() -> list[str]:
    ours = plugin_models()
    return sorted(ours) + sorted(ALIASES) + [m for m in recbole_sequential_models() if m not in ours]


def models_supporting(train_targets: str) -> list[str]:
    """Names of the plugin's models that train with ``train_targets`` ('last', 'all' or 'cloze')."""
    from recbole_ssm.targets import supported_targets

    return sorted(name for name, cls in plugin_models().items() if train_targets in supported_targets(cls))


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def get_model(name: str):
    """Return the model class for ``name``: recbole-ssm's first, else RecBole's."""
    if not isinstance(name, str):
        return name
    name = canonical_name(name)
    ours = plugin_models()
    if name in ours:
        return ours[name]
    for module in _RECBOLE_MODULES:
        mod = importlib.import_module(module)
        cls = getattr(mod, name, None)
        if inspect.isclass(cls):
            return cls
    raise UsageError(
        f"unknown model {name!r}; available sequential models: {', '.join(available_sequential_models())}"
    )
