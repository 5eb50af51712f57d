"""RecBole's trainers with named hooks, chosen the way RecBole-GNN's ``get_trainer`` does.

:func:`get_trainer` returns the trainer class RecBole would use for a model (``Trainer``, or a
model's own such as ``NCLTrainer``) with :class:`TrainerHooks` in front of it: per-epoch
training times, a callback after each validation (which may end the training there, as early
stopping would), the peak memory of ``fit``, and a resume state saved before every epoch.
Nothing is patched on RecBole's classes or on an instance.
"""

from __future__ import annotations

import os
import random
import time
from typing import Callable

import numpy as np
import torch

from recbole_ssm.errors import UsageError

# The "format" field of a resume state: what recbole_ssm.checkpoint.read_resume_state accepts.
RESUME_FORMAT = "recbole-ssm resume 1"

# (validation index from 0, score, result) -> True to end the training after this validation
ValidCallback = Callable[[int, float, dict], "bool | None"]


class _EndFit(Exception):
    """Raised before an epoch once a validation callback has asked to end the training."""


class TrainerHooks:
    """Mixin for a RecBole trainer class: ``epoch_times``, ``valid_callbacks`` and ``fit_peak_mib``.

    ``fit_memory`` may be set to a context-manager factory (e.g. ``bench.memory.CpuPeakMemory``)
    whose ``mib`` after ``fit`` becomes ``fit_peak_mib``; on CUDA the allocator's peak is used.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        # RecBole names the best model <Model>-<time>.pth; the data set's name makes it findable
        from recbole.utils import get_local_time

        self.saved_model_file = os.path.join(
            self.checkpoint_dir, f"{config['model']}-{config['dataset']}-{get_local_time()}.pth")
        from recbole_ssm.scoring import TopKCollector

        self.eval_collector = TopKCollector(config)
        self.epoch_times: list[float] = []
        self.valid_callbacks: list[ValidCallback] = []
        self.fit_memory = None
        self.fit_peak_mib: float | None = None
        self.fit_s: float | None = None  # wall time of fit, set by quick_start.run
        self.fit_peak_kind: str | None = None
        self._validations = 0
        self.ended_by_callback: int | None = None  # the validation after which a callback ended the training
        self.valid_scores: list[tuple[int, float]] = []  # (epoch, validation score) of each validation
        self.world = None  # a distributed.World once distribute() is called
        self._ddp = None

    # -- data-parallel training (recbole_ssm.distributed): RecBole's own DDP path stays off

    def distribute(self, world) -> None:
        """Average gradients across ``world`` with DistributedDataParallel around the model's loss;
        evaluate on rank 0 only (its result broadcast); save checkpoints on rank 0 only."""
        import torch
        from torch.nn.parallel import DistributedDataParallel

        self.world = world
        cuda = torch.device(self.device).type == "cuda"
        # a model that may leave parameters out of a step's graph says so (Hydra4Rec); DDP then
        # looks for them every step instead of waiting for their gradients forever
        unused = bool(getattr(self.model, "may_leave_parameters_unused", False))
        self._ddp = DistributedDataParallel(_Loss(self.model), device_ids=[world.local_rank] if cuda else None,
                                            find_unused_parameters=unused)

    # -- resume state: everything the rest of ``fit`` depends on, as it is before an epoch

    resume_file: str | None = None  # set to save the state there before every epoch

    def _state(self, epoch: int, train_data) -> dict:
        generator = getattr(train_data, "generator", None)
        numpy_state = np.random.get_state()
        return {
            "format": RESUME_FORMAT,
            "config": self.config,
            "epoch": epoch,  # the next epoch to train
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "best_valid_result": self.best_valid_result,
            "train_loss_dict": dict(self.train_loss_dict),
            "saved_model_file": self.saved_model_file,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "validations": self._validations,
            "valid_scores": [list(p) for p in self.valid_scores],
            "epoch_times": list(self.epoch_times),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
                "python": random.getstate(),
                "loader": generator.get_state() if generator is not None else None,
            },
        }

    def save_resume_state(self, epoch: int, train_data) -> None:
        """Write the state before ``epoch`` to ``resume_file``, whole or not at all."""
        tmp = f"{self.resume_file}.tmp"
        torch.save(self._state(epoch, train_data), tmp, pickle_protocol=4)
        os.replace(tmp, self.resume_file)

    def load_resume_state(self, state: dict, train_data) -> None:
        """Continue from a state written by :meth:`save_resume_state` (the data and model rebuilt as then)."""
        self.start_epoch = state["epoch"]
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"]
        self.train_loss_dict = dict(state["train_loss_dict"])
        self.saved_model_file = state["saved_model_file"]
        self._validations = state["validations"]
        self.valid_scores = [(int(e), float(v)) for e, v in state.get("valid_scores", [])]
        self.epoch_times = list(state.get("epoch_times", []))  # the run's epochs so far, then these
        load_weights(self.model, state["state_dict"], self.resume_file or "the resume state", self.config)
        self.model.load_other_parameter(state.get("other_parameter"))
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        random.setstate(rng["python"])
        generator = getattr(train_data, "generator", None)
        if generator is not None and rng["loader"] is not None:
            generator.set_state(rng["loader"])

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if self.ended_by_callback is not None:
            raise _EndFit  # caught in fit, after the validation that asked for it was handled in full
        if self._ddp is not None:
            train_data.sampler.set_epoch(epoch_idx)  # a new shuffle, the same on every rank
            if not args:
                kwargs.setdefault("loss_func", self._ddp)
        if self.resume_file:
            self.save_resume_state(epoch_idx, train_data)
        t0 = time.perf_counter()
        out = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self.epoch_times.append(time.perf_counter() - t0)
        return out

    def _valid_epoch(self, valid_data, show_progress=False):
        if self.world is None:
            score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        else:
            from recbole_ssm.distributed import broadcast

            pair = super()._valid_epoch(valid_data, show_progress=show_progress) if self.world.main else None
            score, result = broadcast(pair, self.world)
        # _valid_epoch runs right after the epoch it scores was trained (RecBole's fit)
        self.valid_scores.append((len(self.epoch_times) - 1, float(score)))
        end = False
        for callback in self.valid_callbacks:
            end = (callback(self._validations, score, result) is True) or end
        if self.world is not None and self.valid_callbacks:  # every rank ends where the main one does
            from recbole_ssm.distributed import broadcast

            end = broadcast(end if self.world.main else None, self.world)
        if end:
            self.ended_by_callback = self._validations
        self._validations += 1
        return score, result

    # -- eval_filter_seen (recbole_ssm/seen.py): a loader's SeenItems, applied to its full-sort scores

    _seen = None

    def evaluate(self, eval_data, *args, **kwargs):
        self._seen = getattr(eval_data, "seen_items", None)
        try:
            return super().evaluate(eval_data, *args, **kwargs)
        finally:
            self._seen = None

    def _full_sort_batch_eval(self, batched_data):
        if self._score_in_chunks():
            return self._topk_batch_eval(batched_data)
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self._seen is not None:
            c = self.config
            rows, items = self._seen.mask(interaction, c["USER_ID_FIELD"], c["ITEM_ID_FIELD"],
                                          c["ITEM_ID_FIELD"] + c["LIST_SUFFIX"], c["ITEM_LIST_LENGTH_FIELD"])
            scores[rows.to(scores.device), items.to(scores.device)] = -np.inf
        return interaction, scores, positive_u, positive_i

    def _score_in_chunks(self) -> bool:
        """Full-sort evaluation through a running top-k over chunks of items (``eval_score_chunks``,
        on by default): memory O(batch x chunk), not O(batch x items); the same metrics."""
        from recbole_ssm.scoring import scores_by_dot_product, topk_suffices

        return (self.config["eval_score_chunks"] is not False and scores_by_dot_product(self.model)
                and topk_suffices(self.eval_collector))

    def _topk_batch_eval(self, batched_data):
        """What ``_full_sort_batch_eval`` gives, with a :class:`~recbole_ssm.scoring.TopK` for the scores."""
        from recbole_ssm.scoring import chunked_topk, user_vectors

        interaction, history_index, positive_u, positive_i = batched_data
        interaction = interaction.to(self.device)
        model, c = self.model, self.config
        hidden = user_vectors(model, interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])  # (B, d)
        pairs = [history_index] if history_index is not None else []  # (rows, items): ranked last
        if self._seen is not None:
            pairs.append(self._seen.mask(interaction, c["USER_ID_FIELD"], c["ITEM_ID_FIELD"],
                                         c["ITEM_ID_FIELD"] + c["LIST_SUFFIX"], c["ITEM_LIST_LENGTH_FIELD"]))
        exclude = None
        if pairs:
            exclude = tuple(torch.cat([p[i].to(self.device).long() for p in pairs]) for i in (0, 1))
        top = chunked_topk(hidden, model.item_embedding.weight, max(self.eval_collector.topk), exclude)
        return interaction, top, positive_u, positive_i

    def _save_checkpoint(self, *args, **kwargs):
        if self.world is not None and not self.world.main:
            return None
        return super()._save_checkpoint(*args, **kwargs)

    def fit(self, *args, **kwargs):
        if self.fit_memory is None:
            return self._fit(*args, **kwargs)
        import torch

        cuda = torch.device(self.device).type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with self.fit_memory() as mem:
            out = self._fit(*args, **kwargs)
        if cuda:
            self.fit_peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
            self.fit_peak_kind = "cuda max_memory_allocated"
        else:
            self.fit_peak_mib, self.fit_peak_kind = mem.mib, f"RSS ({mem.method})"
        return out

    def _fit(self, *args, **kwargs):
        """RecBole's ``fit``, ended before the next epoch when a validation callback returned True:
        that validation's early-stopping step and best-model checkpoint are done by then, so the
        run goes on to its test as after early stopping."""
        try:
            return super().fit(*args, **kwargs)
        except _EndFit:
            self.logger.info(f"Finished training: ended by a callback after validation {self.ended_by_callback}; "
                             f"best valid score {self.best_valid_score:.6g}")
            return self.best_valid_score, self.best_valid_result


def load_weights(net, state_dict: dict, path: str, config) -> None:
    """``net.load_state_dict``; weights that do not fit the model built from the data set as it is now
    (the data set changed since training, or the model's code) are a one-line UsageError."""
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")  # the first mismatch, if named
        raise UsageError(f"{path} does not fit {config['model']} on the data set now at {config['data_path']} "
                         f"({detail.rstrip('.')}): the data set or the model changed since training; use the data "
                         "set it was trained on, or train again") from None


class _Loss(torch.nn.Module):
    """The model's training loss as a module's forward, for DistributedDataParallel to wrap."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, interaction):
        return self.model.calculate_loss(interaction)


_HOOKED: dict = {}


def get_trainer(model_type, model_name: str):
    """RecBole's trainer class for this model, with :class:`TrainerHooks` (one class per base)."""
    from recbole.utils import get_trainer as recbole_get_trainer

    base = recbole_get_trainer(model_type, model_name)
    if base not in _HOOKED:
        _HOOKED[base] = type(f"Hooked{base.__name__}", (TrainerHooks, base), {"__module__": __name__})
    return _HOOKED[base]
