"""RecBole's trainers with named hooks, chosen the way RecBole-GNN's ``get_trainer`` does.

:func:`get_trainer` returns the trainer class RecBole would use for a model (``Trainer``, or a
model's own such as ``NCLTrainer``) with :class:`TrainerHooks` in front of it: per-epoch
training times, a callback after each validation, and the peak memory of ``fit``. Nothing is
patched on RecBole's classes or on an instance.
"""

from __future__ import annotations

import time
from typing import Callable

ValidCallback = Callable[[int, float, dict], None]  # (validation index from 0, score, result)


class TrainerHooks:
    """Mixin for a RecBole trainer class: ``epoch_times``, ``valid_callbacks`` and ``fit_peak_mib``.

    ``fit_memory`` may be set to a context-manager factory (e.g. ``bench.common.CpuPeakMemory``)
    whose ``mib`` after ``fit`` becomes ``fit_peak_mib``; on CUDA the allocator's peak is used.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_times: list[float] = []
        self.valid_callbacks: list[ValidCallback] = []
        self.fit_memory = None
        self.fit_peak_mib: float | None = None
        self.fit_peak_kind: str | None = None
        self._validations = 0

    def _train_epoch(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super()._train_epoch(*args, **kwargs)
        self.epoch_times.append(time.perf_counter() - t0)
        return out

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        for callback in self.valid_callbacks:
            callback(self._validations, score, result)
        self._validations += 1
        return score, result

    def fit(self, *args, **kwargs):
        if self.fit_memory is None:
            return super().fit(*args, **kwargs)
        import torch

        cuda = torch.device(self.device).type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with self.fit_memory() as mem:
            out = super().fit(*args, **kwargs)
        if cuda:
            self.fit_peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
            self.fit_peak_kind = "cuda max_memory_allocated"
        else:
            self.fit_peak_mib, self.fit_peak_kind = mem.mib, f"RSS ({mem.method})"
        return out


_HOOKED: dict = {}


def get_trainer(model_type, model_name: str):
    """RecBole's trainer class for this model, with :class:`TrainerHooks` (one class per base)."""
    from recbole.utils import get_trainer as recbole_get_trainer

    base = recbole_get_trainer(model_type, model_name)
    if base not in _HOOKED:
        _HOOKED[base] = type(f"Hooked{base.__name__}", (TrainerHooks, base), {"__module__": __name__})
    return _HOOKED[base]
