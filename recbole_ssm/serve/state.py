"""Recommendations from a trained model: per-user recurrent states in a bounded cache.

A causal SSM model (Mamba4Rec, Mamba2Rec, RecMamba) keeps a constant-size state per user
(:class:`recbole_ssm.models.base.StepState`): a new interaction costs one ``step``, whatever the
length of the history before it. :class:`StateCache` holds those states, least recently used
first out when a byte budget is exceeded. :class:`Recommender` answers ``recommend(user,
new_items, k)``: it steps a cached state through the new items only, or builds the state from
the user's last ``MAX_ITEM_LIST_LENGTH`` items in one chunked pass (``state_from``) on a miss.
The HTTP service (``recbole_ssm.serve.service`` and ``.http``) keeps its users' states in a
StateCache bounded by a number of users as well.

Models without a step-wise update (the bidirectional Hydra4Rec, RecBole's SASRec and GRU4Rec)
re-encode the user's last ``MAX_ITEM_LIST_LENGTH`` items on every call, which costs a full pass
over them (for SASRec, quadratic in that length).

Thread safety: one lock serialises ``recommend`` calls on a Recommender (a state is updated in
place while it is stepped, and torch modules are not documented as safe to call concurrently);
concurrent callers are safe, not parallel.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import torch

from recbole_ssm.errors import UsageError
from recbole_ssm.histories import user_histories  # noqa: F401  (recbole_ssm.serve exports it)
from recbole_ssm.models.base import StepState


def pad_right(rows: Sequence[np.ndarray], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Item-id rows as one right-padded batch: (seq (B, n), lengths (B,)) on ``device``."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    seq = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        seq[i, : len(r)] = torch.as_tensor(r)
    return seq.to(device), lengths.to(device)


def stepwise(model) -> bool:
    """Whether ``model`` updates a user's state one item at a time."""
    return callable(getattr(model, "init_state", None)) and not getattr(model, "bidirectional", False)


class StateCache:
    """Users' states, each a one-row :class:`StepState`, within ``max_bytes`` and, where given,
    ``max_users`` states (LRU eviction). Keys are any hashable user key (an internal id, a token).

    Each call is atomic (one lock), so threads serving different users may share a cache; a state
    taken out with :meth:`get` is the caller's to update while it serves that user.
    """

    def __init__(self, max_bytes: int, max_users: int | None = None):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if max_users is not None and max_users <= 0:
            raise ValueError(f"max_users must be positive, got {max_users}")
        self.max_bytes = int(max_bytes)
        self.max_users = None if max_users is None else int(max_users)
        self._states: OrderedDict[Hashable, StepState] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, user: Hashable) -> bool:
        return user in self._states

    def get(self, user: Hashable) -> StepState | None:
        with self._lock:
            state = self._states.get(user)
            if state is not None:
                self._states.move_to_end(user)
            return state

    def discard(self, user: Hashable) -> None:
        """Forget ``user``'s state, if held (it is rebuilt on the next use)."""
        with self._lock:
            old = self._states.pop(user, None)
            if old is not None:
                self.nbytes -= old.nbytes()

    def put(self, user: Hashable, state: StepState) -> None:
        size = state.nbytes()
        if size > self.max_bytes:
            raise ValueError(f"one user's state takes {size} bytes, more than the cache's {self.max_bytes}")
        with self._lock:
            old = self._states.pop(user, None)
            if old is not None:
                self.nbytes -= old.nbytes()
            self._states[user] = state
            self.nbytes += size
            while self.nbytes > self.max_bytes or (self.max_users is not None and len(self._states) > self.max_users):
                _, evicted = self._states.popitem(last=False)
                self.nbytes -= evicted.nbytes()
                self.evictions += 1


@dataclass
class Recommendation:
    item: str  # external item token
    score: float


Request = tuple  # (internal user id or None, item ids after the user's history): one user to rank for


class Recommender:
    """Top-k items for users of a data set, from a trained model (see the module docstring).

    ``histories`` maps internal user ids to their item ids in time order (internal ids), e.g.
    :func:`user_histories` of the data set the model was trained on. Tokens are translated
    with ``dataset`` (RecBole's ``field2id_token``).

    - :meth:`recommend` ranks for many users at once: histories encoded ``batch_size`` at a time,
      item scores a chunk of the catalogue at a time (``recbole_ssm.scoring``); a DataFrame out.
    - :meth:`observe` appends a user's new events; :meth:`recommend_one` ranks for one user,
      stepping a cached state through the new items only where the model has a step API.
    """

    def __init__(self, model, dataset, histories: dict[int, np.ndarray], max_bytes: int = 256 << 20,
                 batch_size: int = 1024):
        self.model = model.eval()
        self.dataset = dataset
        self.histories = histories
        self.cache = StateCache(max_bytes) if stepwise(model) else None
        self.max_length = int(model.max_seq_length)
        self.batch_size = int(batch_size)
        self._lock = threading.Lock()
        self._device = next(model.parameters()).device
        self._item_tokens = np.asarray(dataset.field2id_token[dataset.iid_field], dtype=object)

    @classmethod
    def from_checkpoint(cls, path: str, max_bytes: int = 256 << 20) -> Recommender:
        """A Recommender for a checkpoint written by a training run, with its data set's histories."""
        return from_checkpoint(path, max_bytes)

    # -- tokens
    def user_id(self, token: str) -> int:
        return self._internal(self.dataset.uid_field, token, "user")

    def item_id(self, token: str) -> int:
        return self._internal(self.dataset.iid_field, token, "item")

    def _internal(self, field: str, token: str, what: str) -> int:
        mapping = self.dataset.field2token_id[field]
        if str(token) not in mapping or mapping[str(token)] == 0:
            raise UsageError(f"unknown {what} token {token!r}: not in the data set the model was trained on")
        return int(mapping[str(token)])

    def user_token(self, uid: int | None) -> str:
        return "-" if uid is None else str(self.dataset.field2id_token[self.dataset.uid_field][uid])

    def all_users(self) -> list[int]:
        """Internal ids of every user with a history, in the data set's order."""
        return sorted(self.histories)

    def known_users(self, tokens: Sequence[str], strict: bool = False) -> list[int | None]:
        """Each token's internal id, None where the data set does not know it (an error with ``strict``)."""
        mapping = self.dataset.field2token_id[self.dataset.uid_field]
        uids = [int(mapping.get(str(token), 0)) or None for token in tokens]
        if strict and None in uids:
            self.user_id(tokens[uids.index(None)])  # the one-line error
        return uids

    # -- many users at once
    def recommend(self, users: str | Sequence[str] = "all", k: int = 10, exclude_seen: bool = True,
                  strict: bool = False):
        """Top ``k`` items for ``users`` ("all", one token, or a list of tokens) as a pandas DataFrame
        with columns user, rank (from 1), item, score; users the data set does not know raise
        with ``strict``, else they are left out with a warning."""
        import pandas as pd

        if users == "all":
            uids = self.all_users()
        else:
            tokens = [users] if isinstance(users, str) else list(users)
            uids = self.known_users(tokens, strict)
            if None in uids:
                warn_unknown([t for t, u in zip(tokens, uids) if u is None])
            uids = [u for u in uids if u is not None]
        parts = [frame_rows(self, batch, values, items) for batch, values, items in
                 self.topk([(u, ()) for u in uids], k, exclude_seen)]
        columns = ["user", "rank", "item", "score"]
        if not parts:
            return pd.DataFrame({c: [] for c in columns})
        return pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in columns})

    def topk(self, requests: Sequence[Request], k: int, exclude_seen: bool, batch_size: int | None = None):
        """For each batch of ``requests``: (the batch, top-k scores (b, k), item ids (b, k)) as numpy;
        a score of -inf marks a rank past the items the user can be given."""
        from recbole_ssm.scoring import seen_pairs, topk_items

        if k < 1:
            raise UsageError(f"k must be a whole number >= 1, got {k}")
        size = batch_size or self.batch_size
        for start in range(0, len(requests), size):
            batch = requests[start:start + size]
            histories = [self._history(uid, new) for uid, new in batch]
            seq, lengths = self._pad([h[-self.max_length:] for h in histories])
            exclude = seen_pairs(histories, self._device) if exclude_seen else None
            with self._lock, torch.no_grad():
                values, items = topk_items(self.model, seq, lengths, k, exclude)
            yield batch, values.cpu().numpy(), items.cpu().numpy()

    def _history(self, uid: int | None, new: Sequence[int]) -> np.ndarray:
        past = self.histories.get(uid, np.zeros(0, dtype=np.int64)) if uid is not None else np.zeros(0, np.int64)
        history = np.concatenate([past, np.asarray(new, dtype=np.int64)]) if len(new) else past
        if len(history) == 0:
            raise UsageError(f"user {self.user_token(uid)} has an empty history: give items to rank after")
        return history

    def _pad(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_right(rows, self._device)

    # -- one user, step by step
    def observe(self, user: str, items: Sequence[str]) -> int:
        """Append ``items`` (tokens, oldest first) to a user of the data set's history, stepping the
        user's cached state where there is one; returns the number of events the user now has."""
        uid = self.user_id(user)
        new = [self.item_id(t) for t in items]
        with self._lock, torch.no_grad():
            past = self.histories[uid]
            history = np.concatenate([past, np.asarray(new, dtype=np.int64)])
            if self.cache is not None and uid in self.cache:
                self._advance(uid, self.cache.get(uid), past, new, history)
            self.histories[uid] = history
        return len(history)

    def recommend_one(self, user: str | None, new_items: Sequence[str] = (), k: int = 10,
                      exclude_seen: bool = True) -> list[Recommendation]:
        """Top ``k`` items after ``user``'s history (None: an empty history) and ``new_items``
        (tokens, oldest first; they extend the cached state and are remembered)."""
        if k < 1:
            raise UsageError(f"k must be a whole number >= 1, got {k}")
        uid = self.user_id(user) if user is not None else None
        new = [self.item_id(t) for t in new_items]
        with self._lock, torch.no_grad():
            past = self.histories.get(uid, np.zeros(0, dtype=np.int64))  # uid None: no history
            history = np.concatenate([past, np.asarray(new, dtype=np.int64)])
            if len(history) == 0:
                raise UsageError("an empty history: give new items for a user with none")
            scores = self._scores(uid, past, new, history)
            if uid is not None:
                self.histories[uid] = history
        scores[0] = -torch.inf  # the padding item
        if exclude_seen:
            scores[torch.as_tensor(history)] = -torch.inf
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        tokens = self.dataset.field2id_token[self.dataset.iid_field]
        return [Recommendation(str(tokens[i]), float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    def _scores(self, uid, past: np.ndarray, new: list[int], history: np.ndarray) -> torch.Tensor:
        if self.cache is None:
            return self._encode(history)
        state = self.cache.get(uid) if uid is not None else None
        state = self._advance(uid, state, past, new, history)
        return self.model.score(state)[0]

    def _advance(self, uid, state: StepState | None, past: np.ndarray, new: list[int], history: np.ndarray):
        """``state`` (after ``past``; None: not cached) stepped through ``new``, cached for ``uid``."""
        model = self.model
        if state is None:
            state = self._state_from(past) if len(past) else model.init_state(1)
        fits = int(state.length[0]) + len(new) <= self.max_length or not getattr(model, "bounded_positions", False)
        if fits:
            for item in new:
                model.step(state, torch.tensor([item], device=self._device))
        else:
            state = self._state_from(history)  # learned positions end at L: the last L items afresh
        if uid is not None:
            self.cache.put(uid, state)
        return state

    def _last(self, history: np.ndarray):
        last = torch.as_tensor(history[-self.max_length:], device=self._device).unsqueeze(0)
        return last, torch.tensor([last.size(1)], device=self._device)

    def _state_from(self, history: np.ndarray) -> StepState:
        return self.model.state_from(*self._last(history))

    def _encode(self, history: np.ndarray) -> torch.Tensor:
        seq, length = self._last(history)
        from recbole.data.interaction import Interaction

        batch = Interaction({self.model.ITEM_SEQ: seq, self.model.ITEM_SEQ_LEN: length})
        return self.model.full_sort_predict(batch)[0]


def frame_rows(rec: Recommender, batch: Sequence[Request], values: np.ndarray, items: np.ndarray) -> dict:
    """One batch's top-k as columns user, rank, item, score (ranks past the rankable items left out)."""
    keep = np.isfinite(values)  # (b, k)
    users = np.asarray([rec.user_token(uid) for uid, _ in batch], dtype=object)
    rows, ranks = np.nonzero(keep)
    return {"user": users[rows], "rank": ranks + 1, "item": rec._item_tokens[items[keep]],
            "score": values[keep].astype(np.float64)}


def warn_unknown(tokens: list[str]) -> None:
    """One warning line naming the users left out."""
    import sys

    shown = ", ".join(repr(t) for t in tokens[:5]) + (f" and {len(tokens) - 5} more" if len(tokens) > 5 else "")
    print(f"warning: {len(tokens)} user(s) not in the data set the model was trained on, skipped: {shown} "
          "(--strict=true makes this an error)", file=sys.stderr, flush=True)


def from_checkpoint(path: str, max_bytes: int = 256 << 20) -> Recommender:
    """A Recommender for a checkpoint written by a recbole-ssm run, with its data set's histories;
    :meth:`Recommender.recommend` reads the run's ``eval_batch_size`` users at a time."""
    from recbole_ssm.checkpoint import load_data_and_model

    config, model, dataset, _, _, _ = load_data_and_model(path)
    return Recommender(model, dataset, user_histories(dataset), max_bytes=max_bytes,
                       batch_size=int(config["eval_batch_size"] or 1024))
