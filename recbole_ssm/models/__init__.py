"""recbole-ssm's RecBole models, found by their module's name. ``MODELS`` maps each name to its class.

A model is one module here, named after its class in lower case (``hydra4rec.py`` defines
``Hydra4Rec``), plus its defaults in ``properties/model/<Name>.yaml``: nothing else lists it.
The registry, the command line and the tests read ``MODELS`` and the classes' traits
(``TRAIN_TARGETS``, ``bidirectional``, the step API ``init_state``). The modules named in
``SHARED`` hold what models share and define no model.

``SASRec`` and ``GRU4Rec`` are RecBole's own models with an ``encode`` added, so that the
baselines train under ``train_targets: all`` too; ``BERT4Rec`` is RecBole's with the ``cloze``
regime added. Under ``last`` all three are RecBole's exactly.
"""

import importlib
import inspect
import pkgutil

from recbole_ssm import compat

compat.import_recbole_sequential_models()  # before the models import RecBole's (see compat.py)

SHARED = ("base", "causal")  # what the models share; no model of their own


def _find_models() -> dict:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in SHARED or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes = [obj for obj in vars(module).values()
                   if inspect.isclass(obj) and obj.__module__ == module.__name__ and obj.__name__.lower() == info.name]
        if len(classes) != 1:
            raise ImportError(f"recbole_ssm/models/{info.name}.py must define one model class named like the "
                              f"module (e.g. {info.name.capitalize()}); a module of shared code goes in "
                              "recbole_ssm.models.SHARED")
        found[classes[0].__name__] = classes[0]
    return found


MODELS: dict = _find_models()
globals().update(MODELS)  # from recbole_ssm.models import Mamba2Rec

__all__ = ["MODELS", *MODELS]
