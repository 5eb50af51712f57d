"""Every shim recbole-ssm needs for RecBole 1.2.1 on current torch / numpy / pandas / Ray.

Each shim states its reason in one line; ``tests/test_compat.py`` proves each one is
needed (the unpatched call misbehaves) and effective (the patched call does not).
Nothing outside this module patches RecBole or silences its warnings.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
import warnings
from typing import Iterator


# RecBole's Config parses sys.argv by itself; the API must not pick up the host program's
# arguments (pytest's, a Ray worker's), so Config is always built with an empty argv.
@contextlib.contextmanager
def isolated_argv() -> Iterator[None]:
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_ssm"]
    try:
        yield
    finally:
        sys.argv = saved


# RecBole calls numpy aliases that numpy removed (np.float in its NDCG and MAP metrics, np.long
# in its feature embedding layers) and puts them back in Config.compatibility_settings, which runs
# when a Config is built but not when one is unpickled from a checkpoint; under numpy 2 that
# method itself fails (np.float_, np.complex_, np.unicode_ are gone). Importing recbole_ssm
# defines each missing alias once, as RecBole would.
NUMPY_ALIASES = {
    "bool": "bool_", "int": "int_", "float": "float64", "complex": "complex128", "object": "object_",
    "str": "str_", "long": "int_", "unicode": "str_", "float_": "float64", "complex_": "complex128",
    "unicode_": "str_",
}


# RecBole's dien.py has docstrings with invalid escape sequences ("\\p"); Python 3.12+ warns
# about them with a SyntaxWarning on stderr when the file is first compiled, which happens on
# importing recbole.model.sequential_recommender (for SASRec and GRU4Rec): only those, only
# from RecBole's own files, are silenced.
RECBOLE_SOURCE_WARNINGS = r".*[/\\]recbole[/\\]"


def silence_recbole_syntax_warnings() -> None:
    warnings.filterwarnings("ignore", message="invalid escape sequence", category=SyntaxWarning,
                            module=RECBOLE_SOURCE_WARNINGS)


def restore_numpy_aliases() -> list[str]:
    """Define the numpy aliases RecBole uses where this numpy lacks them; returns the names defined."""
    import numpy as np

    missing = [alias for alias in NUMPY_ALIASES if alias not in vars(np)]  # hasattr would warn on numpy 1.2x
    for alias in missing:
        setattr(np, alias, getattr(np, NUMPY_ALIASES[alias]))
    return missing


# RecBole's sine.py runs torch.autograd.set_detect_anomaly(True) when it is imported, and it is
# imported with recbole.model.sequential_recommender (for SASRec, GRU4Rec, BERT4Rec, any model
# lookup, any checkpoint): from then on every backward pass of every model in the process checks
# each gradient for NaN and every forward op records a traceback (about a fifth of a CPU training
# step; docs/journal/2026-12-results.md). That package is imported here, and the process's anomaly setting is put
# back as it was before the import.
RECBOLE_SEQUENTIAL = "recbole.model.sequential_recommender"


def import_recbole_sequential_models() -> types.ModuleType:
    """``recbole.model.sequential_recommender``, imported without leaving anomaly mode switched on."""
    import importlib

    import torch

    if RECBOLE_SEQUENTIAL in sys.modules:
        return sys.modules[RECBOLE_SEQUENTIAL]
    enabled, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    try:
        return importlib.import_module(RECBOLE_SEQUENTIAL)
    finally:
        torch.autograd.set_detect_anomaly(enabled, check_nan)


# RecBole pickles its checkpoints with protocol 4, which torch's weights_only loader cannot
# read at all (it rejects the FRAME opcode), and they hold the Config object. A checkpoint
# is read by an unpickler that may build only the types below, so a file cannot run code.
_CHECKPOINT_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),  # the same, as numpy 2 pickles it
    ("recbole.config.configurator", "Config"),
    ("torch", "device"),
    ("torch", "Size"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("yaml.loader", "FullLoader"),
    ("yaml.loader", "SafeLoader"),
}


class _CheckpointUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        import torch

        allowed = (
            (module, name) in _CHECKPOINT_GLOBALS
            or module == "recbole.utils.enum_type"
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
            or module.startswith(("recbole.model.", "recbole_ssm.models"))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"checkpoint refers to {module}.{name}, which a checkpoint may not hold")
        obj = super().find_class(module, name)
        if module.startswith(("recbole.model.", "recbole_ssm.models")):
            from recbole.model.abstract_recommender import AbstractRecommender

            if not (isinstance(obj, type) and issubclass(obj, AbstractRecommender)):
                raise pickle.UnpicklingError(f"checkpoint refers to {module}.{name}, which is not a model class")
        return obj


_checkpoint_pickle = types.ModuleType("recbole_ssm_checkpoint_pickle")
_checkpoint_pickle.Unpickler = _CheckpointUnpickler  # type: ignore[attr-defined]
_checkpoint_pickle.load = pickle.load  # type: ignore[attr-defined]


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a RecBole checkpoint written anywhere, without letting it run code."""
    import torch

    import_recbole_sequential_models()  # the unpickler may import RecBole's model classes
    return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_checkpoint_pickle)


# RecBole's trainer calls torch.load(file) on its checkpoints (evaluate with load_best_model,
# resume_checkpoint), which fails on torch >= 2.6 for the reason above.
@contextlib.contextmanager
def recbole_checkpoint_loading() -> Iterator[None]:
    """Within the block, a plain ``torch.load(f)`` reads checkpoints with the restricted unpickler."""
    import torch

    original = torch.load

    def load(f, *args, **kwargs):
        if not args and "weights_only" not in kwargs and "pickle_module" not in kwargs:
            kwargs.update(weights_only=False, pickle_module=_checkpoint_pickle)
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


# Known warnings RecBole triggers on current libraries, each harmless for the user's run:
_RECBOLE_NOISE = [
    # the trainer builds torch.cuda.amp.GradScaler every epoch, deprecated since torch 2.4;
    (FutureWarning, r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", ""),
    # Dataset._fill_nan uses in-place fillna on a column; it still works on pandas < 3 (pinned),
    # and pandas warns that it will stop working in pandas 3.
    (FutureWarning, r"A value is trying to be set on a copy of a DataFrame or Series through chained "
     r"assignment using an inplace method", r"recbole\.data\.dataset"),
]


@contextlib.contextmanager
def quiet_recbole() -> Iterator[None]:
    """Silence only the known, harmless warnings RecBole triggers on new libraries."""
    with warnings.catch_warnings():
        for category, message, module in _RECBOLE_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


class _CEnginePandas(types.ModuleType):
    """pandas, except that ``read_csv`` uses the C engine (RecBole asks for the python one)."""

    def __init__(self, pandas: types.ModuleType):
        super().__init__(pandas.__name__)
        self._pandas = pandas

    def __getattr__(self, name: str):
        return getattr(self._pandas, name)

    def read_csv(self, *args, **kwargs):
        if kwargs.get("engine") == "python" and len(str(kwargs.get("delimiter", ","))) == 1:
            kwargs["engine"] = "c"
        return self._pandas.read_csv(*args, **kwargs)


# RecBole's Dataset._load_feat reads atomic files with pandas' python engine, about 3x slower than
# the C engine (35 s for 6.6 M rows); with a one-character separator both give the same frame.
@contextlib.contextmanager
def c_engine_atomic_files() -> Iterator[None]:
    """Within the block, RecBole's ``Dataset._load_feat`` reads with pandas' C engine."""
    from recbole.data.dataset import dataset as recbole_dataset

    kept = recbole_dataset.pd
    recbole_dataset.pd = _CEnginePandas(kept)
    try:
        yield
    finally:
        recbole_dataset.pd = kept
