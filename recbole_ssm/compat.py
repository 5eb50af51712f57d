"""Every shim recbole-ssm needs for RecBole 1.2.1 on current torch / numpy / pandas / Ray.

Each shim states its reason in one line; ``tests/test_compat.py`` proves each one is
needed (the unpatched call misbehaves) and effective (the patched call does not).
Nothing outside this module patches RecBole or silences its warnings.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Iterator

import torch

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


# torch >= 2.6 loads with weights_only=True, which rejects RecBole's checkpoints (they
# pickle the Config object). Only the checkpoint this run itself wrote is loaded in full.
@contextlib.contextmanager
def trusted_checkpoint(path: str) -> Iterator[None]:
    """Within the block, ``torch.load(path)`` of exactly this file unpickles in full."""
    own = os.path.realpath(path)
    original = torch.load

    def load(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and os.path.realpath(f) == own:
            kwargs["weights_only"] = False
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def _recbole_checkpoint_globals() -> list:
    """Types a RecBole checkpoint pickles besides tensors: its Config and the enums in it."""
    from recbole.config.configurator import Config
    from recbole.utils.enum_type import EvaluatorType, FeatureSource, FeatureType, InputType, ModelType

    return [Config, EvaluatorType, FeatureSource, FeatureType, InputType, ModelType, torch.device, set]


# A checkpoint from elsewhere (a file a user hands to load_checkpoint) is never unpickled in
# full: it loads with weights_only=True and only RecBole's own config types allowed.
def load_checkpoint(path: str, map_location="cpu") -> dict:
    with torch.serialization.safe_globals(_recbole_checkpoint_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


# RecBole's trainer builds torch.cuda.amp.GradScaler every epoch, deprecated since torch 2.4:
# a FutureWarning per epoch that says nothing about the user's run.
_RECBOLE_NOISE = [
    (FutureWarning, r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated"),
]


@contextlib.contextmanager
def quiet_recbole() -> Iterator[None]:
    """Silence only the known, harmless warnings RecBole triggers on new libraries."""
    with warnings.catch_warnings():
        for category, message in _RECBOLE_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
