"""Training-target names, and which models take which: a leaf module (nothing of the package imported).

``train_targets`` chooses how a model is trained (``recbole_ssm.regime`` has the loaders):

- ``last``: RecBole's one sample per prefix, read at its last position (every model);
- ``all``: every position of whole history windows (causal models, and the one-layer Hydra4Rec);
- ``cloze``: masked history windows (bidirectional models).

A model class says what it takes with ``TRAIN_TARGETS`` (RecBole's own models: ``last`` only),
``bidirectional`` and, for a bidirectional model that can still train every prefix in one pass,
``trains_every_prefix(config)``.
"""

from __future__ import annotations

TRAIN_TARGETS = ("last", "all", "cloze")
WINDOW_REGIMES = ("all", "cloze")  # trained on history windows (WindowDataset and a window loader)
# Interaction fields of an ``all`` batch besides RecBole's item list and its length:
TARGETS = "target_item_id_list"  # (B, L) the next item at every input position, 0 on padding
NEG_TARGETS = "neg_target_item_id_list"  # (B, L) one sampled negative per position (BPR only)


def supported_targets(model_class) -> tuple:
    """The ``train_targets`` values a model class can train with (RecBole's models: ``last`` only)."""
    return getattr(model_class, "TRAIN_TARGETS", ("last",))


def trains_every_prefix(config, model_class) -> bool:
    """Whether the model's outputs under ``all`` are each prefix's own: a causal model's, or a
    bidirectional one's whose ``trains_every_prefix(config)`` says so (the one-layer Hydra4Rec)."""
    if not getattr(model_class, "bidirectional", False):
        return True
    exact = getattr(model_class, "trains_every_prefix", None)
    return bool(exact and exact(config))
