"""The recommendation service without HTTP: users' events, their states, and the event log.

A user is any token. A user of the data set the model was trained on starts from their history
in it (the one ``recommend`` reads); any other user starts from the empty history. Accepted
events are appended to the user's history: a user has ``len(data set history) + appended``
events.

**States.** For a model with a step API (Mamba4Rec, Mamba2Rec, RecMamba; see
:func:`~recbole_ssm.serve.state.stepwise`) each user's state is what the model has read of the
user's *seed*: the data set history's last ``MAX_ITEM_LIST_LENGTH`` (L) items, then every
appended event, one :meth:`step` each (O(1) per event, whatever the history's length). A model
with learned positions (RecMamba's ``bounded_positions``) cannot step past L: its seed is the
history's last L items, and an event that would step past L rebuilds the state from them.
States live in a :class:`~recbole_ssm.serve.state.StateCache` of at most
``max_users_in_memory`` users (least recently used out first); an evicted user's state is rebuilt
from the seed in one chunked pass (``state_from``) when the user comes back, equal to the state
it replaces up to float rounding (the chunked scan sums in another order: about 1e-6).

Models without a step API (SASRec, BERT4Rec, the bidirectional Hydra4Rec) keep no state: a
recommendation re-encodes the user's last L events, as the offline ``recommend`` does.

**Durability.** With a state folder every accepted batch is logged before it is applied, and
the call returns only once the log has it on disk (:class:`~recbole_ssm.serve.log.EventLog`:
an acknowledged event is durable; the window is the request in flight). :meth:`Service.snapshot`
writes every user's appended events and starts a new log segment; on start the service reads
the snapshot and replays the log after it. Without a state folder events are kept in memory
only and are lost when the process stops.

**Concurrency.** Every method is thread-safe. One user's requests are serialised (a lock per
user), so no event is lost or applied out of order; requests of different users run in parallel
(the model is only read; each user's state is updated by the thread holding that user's lock).
A snapshot waits for the batches in flight to be applied and holds new ones back only while the
log starts a new segment.
"""

from __future__ import annotations

import threading
from array import array
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from recbole_ssm.errors import UsageError
from recbole_ssm.models.base import StepState
from recbole_ssm.serve.batching import Job, ModelWorker, StateStack
from recbole_ssm.serve.log import EventLog, LogError, Recovered
from recbole_ssm.serve.state import Recommender, StateCache, pad_right, stepwise

MAX_USER_TOKEN = 1000  # characters
MAX_BATCH = 10_000  # items in one request


class RequestError(UsageError):
    """A request the service refuses, with the HTTP status it answers (``status``); nothing changed."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class UserRecord:
    """One user's data set history (internal ids), appended events and lock."""

    __slots__ = ("base", "events", "lock")

    def __init__(self, base: np.ndarray):
        self.base = base
        self.events = array("q")  # appended item ids, oldest first
        self.lock = threading.Lock()

    def appended(self, upto: int | None = None) -> np.ndarray:
        """The first ``upto`` appended events (all by default) as a copy: no buffer of ``events`` is
        left exported, which would stop it from growing."""
        return np.frombuffer(self.events[:upto], dtype=np.int64)

    def history(self) -> np.ndarray:
        return np.concatenate([self.base, self.appended()])

    def __len__(self) -> int:
        return len(self.base) + len(self.events)


class Gate:
    """Many holders at once (:meth:`passing`), or one that shuts them out and waits for them to
    leave (:meth:`closed`): batches between their log write and their state update, and a snapshot."""

    def __init__(self):
        self._cond = threading.Condition()
        self._inside = 0
        self._shut = False

    @contextmanager
    def passing(self) -> Iterator[None]:
        with self._cond:
            while self._shut:
                self._cond.wait()
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    @contextmanager
    def closed(self) -> Iterator[None]:
        with self._cond:
            while self._shut:
                self._cond.wait()
            self._shut = True
            while self._inside:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._shut = False
                self._cond.notify_all()


class Service:
    """Users' events and recommendations from one trained model (see the module docstring).

    ``rec`` gives the model, the data set's tokens and its users' histories (it is only read).
    ``state_dir``: the folder of the event log and snapshots (None: memory only).
    ``max_users_in_memory``, ``max_bytes``: the bounds of the states cache.
    ``snapshot_every_bytes``: a snapshot is written in the background once the log past the last
    one holds that many bytes, so that a restart replays at most about that much.
    """

    def __init__(self, rec: Recommender, state_dir: str | None = None, max_users_in_memory: int = 10_000,
                 max_bytes: int = 1 << 30, snapshot_every_bytes: int = 64 << 20):
        self.rec = rec
        self.model = rec.model.eval()
        self.stepwise = stepwise(self.model)
        self.bounded = self.stepwise and bool(getattr(self.model, "bounded_positions", False))
        self.max_length = rec.max_length
        self.max_users_in_memory = int(max_users_in_memory)
        self.cache = StateCache(max_bytes, max_users_in_memory) if self.stepwise else None
        dataset = rec.dataset
        self.model_name = type(self.model).__name__
        self.dataset_name = str(dataset.dataset_name)
        self._item_ids = dataset.field2token_id[dataset.iid_field]
        self._user_ids = dataset.field2token_id[dataset.uid_field]
        self._item_tokens = np.asarray(dataset.field2id_token[dataset.iid_field], dtype=object)
        self.n_items = len(self._item_tokens) - 1  # less the padding item
        self.device = next(self.model.parameters()).device
        self._users: dict[str, UserRecord] = {}
        self._users_lock = threading.Lock()
        self._gate = Gate()
        self._snapshot_lock = threading.Lock()  # one snapshot at a time
        self._starting_snapshot = threading.Lock()
        self._snapshot_thread: threading.Thread | None = None
        self.snapshot_every_bytes = int(snapshot_every_bytes)
        self.closed = False
        self.log = EventLog(state_dir, self.dataset_name) if state_dir else None
        self.recovered = Recovered()
        if self.log is not None:
            self.recovered = self.log.open()
            try:
                self._replay(self.recovered)
            except BaseException:
                self.log.close()
                raise
        self._warm_up()
        self.stack = StateStack(self.model) if self.stepwise else None
        self.worker = ModelWorker(self._run_batch)  # every model call, batched (serve/batching.py)

    def _warm_up(self) -> None:
        """One state built and stepped before the first request: a kernel built on first use (the
        fused CPU scan) is loaded now, by one thread."""
        if not self.stepwise:
            return
        with torch.no_grad():
            state = self.model.state_from(torch.ones(1, 2, dtype=torch.long, device=self.device),
                                          torch.tensor([2], device=self.device))
            self.model.step(state, torch.ones(1, dtype=torch.long, device=self.device))

    @classmethod
    def from_checkpoint(cls, path: str, **kwargs) -> Service:
        """A Service for a checkpoint written by a training run (keywords as the constructor's)."""
        from recbole_ssm.serve.state import from_checkpoint

        return cls(from_checkpoint(path), **kwargs)

    # -- users and tokens
    def _record(self, user: str, create: bool) -> UserRecord | None:
        """The user's record; a new one for a user of the data set or with ``create``, else None."""
        with self._users_lock:
            record = self._users.get(user)
            if record is None:
                uid = int(self._user_ids.get(user, 0))
                base = self.rec.histories.get(uid) if uid else None
                if base is None and not create:
                    return None
                record = UserRecord(np.zeros(0, np.int64) if base is None else np.asarray(base, dtype=np.int64))
                self._users[user] = record
            return record

    def _check_user(self, user: str) -> None:
        if not user or len(user) > MAX_USER_TOKEN:
            raise RequestError(f"a user token has 1 to {MAX_USER_TOKEN} characters, got {len(user)}")

    def _ids(self, items: Sequence[str], cap: int | None = MAX_BATCH) -> list[int]:
        """Internal ids of item tokens; the first one the data set does not know is the error."""
        if not items:
            raise RequestError("items is empty: give at least one item token")
        if cap is not None and len(items) > cap:
            raise RequestError(f"at most {MAX_BATCH} items a request, got {len(items)}")
        out = []
        for token in items:
            iid = int(self._item_ids.get(token, 0)) if isinstance(token, str) else 0
            if not iid:
                raise RequestError(f"unknown item token {token!r}: not in the data set the model was trained on")
            out.append(iid)
        return out

    def _replay(self, recovered: Recovered) -> None:
        batches = [*recovered.users.items(), *recovered.batches]
        for user, items in batches:
            try:
                ids = self._ids(items, cap=None)
            except RequestError as exc:
                raise UsageError(f"--state_dir={self.log.folder}: the log of user {user!r}: {exc}") from None
            self._record(user, create=True).events.extend(ids)

    # -- states
    def _seed(self, record: UserRecord, upto: int) -> np.ndarray:
        """What the user's state has read after ``upto`` appended events (see the module docstring)."""
        if self.bounded:
            return np.concatenate([record.base, record.appended(upto)])[-self.max_length:]
        return np.concatenate([record.base[-self.max_length:], record.appended(upto)])

    def _built(self, seeds: list[np.ndarray]) -> list[StepState]:
        """The state after reading each seed: an empty seed's is fresh, the others are read in one
        chunked pass over their right-padded batch."""
        states = [self.model.init_state(1) if len(seed) == 0 else None for seed in seeds]
        rows = [i for i, seed in enumerate(seeds) if len(seed)]
        if rows:
            seq, lengths = pad_right([seeds[i] for i in rows], self.device)  # (B, n), (B,)
            for i, state in zip(rows, self.stack.split(self.model.state_from(seq, lengths), len(rows))):
                states[i] = state
        return states

    # -- the API
    def post_events(self, user: str, items: Sequence[str]) -> int:
        """Append ``items`` (tokens, oldest first) to ``user``'s history and advance the user's
        state; returns the number of events the user now has. With a state folder the batch is
        durable when this returns. A refused batch (:class:`RequestError`) changes nothing."""
        self._check_user(user)
        ids = self._ids(items)
        record = self._record(user, create=True)
        with record.lock:
            with self._gate.passing():
                if self.closed:
                    raise RequestError("the service is shutting down: no event is accepted", status=503)
                if self.log is not None:
                    try:
                        self.log.append(user, list(items))
                    except LogError as exc:
                        raise RequestError(f"the event is not stored: {exc}", status=503) from None
                self._apply(user, record, ids)
            count = len(record)
        self._snapshot_when_due()
        return count

    def _apply(self, user: str, record: UserRecord, ids: list[int]) -> None:
        before = len(record.events)
        record.events.extend(ids)
        if self.cache is not None:
            self.worker.submit("step", user=user, record=record, ids=ids, before=before)

    def recommend(self, user: str, k: int = 10, exclude_seen: bool = True) -> tuple[list[str], list[float]]:
        """``user``'s top ``k`` items (tokens) and their scores, best first; fewer than ``k`` where
        ``exclude_seen`` leaves fewer items. A user with no history is a 404 RequestError."""
        self._check_user(user)
        if isinstance(k, bool) or not 1 <= k <= self.n_items:
            raise RequestError(f"k must be between 1 and {self.n_items} (the items of the catalogue), got {k}")
        record = self._record(user, create=False)
        if record is None or len(record) == 0:
            raise RequestError(f"user {user!r} has no history: the data set does not know them and no event "
                               f"was posted for them (POST /users/{{user}}/events first)", status=404)
        with record.lock:
            return self.worker.submit("recommend", user=user, record=record, k=k, exclude_seen=exclude_seen)

    # -- the model's work, in the worker's thread: every job waiting, as one batch
    def _run_batch(self, jobs: list[Job]) -> None:
        """Steps for the "step" jobs, top-k for the "recommend" jobs (a user is in one job at most)."""
        with torch.no_grad():
            steps = [j for j in jobs if j.kind == "step"]
            if steps:
                try:
                    self._step_batch(steps)
                except BaseException:
                    for job in steps:  # perhaps stepped part of the way: rebuilt from the seed next time
                        self.cache.discard(job.args["user"])
                    raise
            wanted = [j for j in jobs if j.kind == "recommend"]
            if wanted:
                self._recommend_batch(wanted)

    def _states(self, wanted: list[tuple[str, UserRecord, int]]) -> list[StepState]:
        """Each user's state after ``upto`` appended events: cached, or built (all missing ones in one
        chunked pass) and cached."""
        states: list[StepState | None] = [self.cache.get(user) for user, _, _ in wanted]
        missing = [i for i, state in enumerate(states) if state is None]
        for i, state in zip(missing, self._built([self._seed(wanted[i][1], wanted[i][2]) for i in missing])):
            states[i] = state
            self.cache.put(wanted[i][0], state)
        return states

    def _step_batch(self, jobs: list[Job]) -> None:
        states = self._states([(j.args["user"], j.args["record"], j.args["before"]) for j in jobs])
        # learned positions end at L (RecMamba): a state that would step past them reads the last L afresh
        rebuilt = {n for n, (job, state) in enumerate(zip(jobs, states))
                   if self.bounded and int(state.length[0]) + len(job.args["ids"]) > self.max_length}
        seeds = [self._seed(jobs[n].args["record"], len(jobs[n].args["record"].events)) for n in sorted(rebuilt)]
        for n, state in zip(sorted(rebuilt), self._built(seeds)):
            self.cache.put(jobs[n].args["user"], state)
        current = {n: state for n, state in enumerate(states) if n not in rebuilt}
        rounds = max((len(jobs[n].args["ids"]) for n in current), default=0)
        for r in range(rounds):  # one item of every job that has an r-th, as one step
            active = [n for n in current if len(jobs[n].args["ids"]) > r]
            batch = self.stack.stack([current[n] for n in active])
            items = torch.tensor([jobs[n].args["ids"][r] for n in active], device=self.device)  # (B,)
            self.model.step(batch, items)
            current.update(zip(active, self.stack.split(batch, len(active))))
        for n, state in current.items():
            self.cache.put(jobs[n].args["user"], state)
        for job in jobs:
            job.result = True

    def _recommend_batch(self, jobs: list[Job]) -> None:
        """Each job's top k, by the offline ``recommend``'s scoring (``recbole_ssm.scoring``): from the
        users' states, or by re-encoding their last L events."""
        from recbole_ssm.scoring import dense_topk, seen_pairs, topk_items

        records = [j.args["record"] for j in jobs]
        histories = [r.history() for r in records]
        nothing = np.zeros(0, dtype=np.int64)
        exclude = seen_pairs([h if j.args["exclude_seen"] else nothing for j, h in zip(jobs, histories)],
                             self.device)
        k = max(j.args["k"] for j in jobs)
        if self.cache is not None:
            states = self._states([(j.args["user"], r, len(r.events)) for j, r in zip(jobs, records)])
            top = dense_topk(self.model.score(self.stack.stack(states)), k, exclude)  # scores (B, n_items + 1)
        else:
            top = topk_items(self.model, *pad_right([h[-self.max_length:] for h in histories], self.device), k,
                             exclude)
        values, indices = top.values.cpu(), top.indices.cpu().numpy()
        for row, job in enumerate(jobs):  # fewer than k where the user has seen nearly everything
            n = min(job.args["k"], int(torch.isfinite(values[row]).sum()))
            job.result = (self._item_tokens[indices[row, :n]].tolist(), values[row, :n].tolist())

    def events(self, user: str) -> int:
        """The number of events ``user`` has (0 for a user the service has never seen)."""
        record = self._record(user, create=False)
        return 0 if record is None else len(record)

    def health(self) -> dict:
        with self._users_lock:
            appended = [len(r.events) for r in self._users.values()]
        return {
            "model": self.model_name,
            "dataset": self.dataset_name,
            "stepwise": self.stepwise,
            "users_cached": len(self.cache) if self.cache is not None else 0,
            "max_users_in_memory": self.max_users_in_memory if self.cache is not None else None,
            "users_with_events": sum(1 for n in appended if n),
            "events_appended": sum(appended),
            "items": self.n_items,
            "max_length": self.max_length,
            "state_dir": self.log.folder if self.log is not None else None,
            "log_records": self.log.records if self.log is not None else None,
            "log_fsyncs": self.log.fsyncs if self.log is not None else None,
            "model_batches": self.worker.batches,
            "model_jobs": self.worker.jobs,
        }

    # -- snapshots and shutting down
    def snapshot(self) -> str | None:
        """Write every user's appended events as the snapshot and start a new log segment; the
        segments it covers are deleted. Returns its path (None without a state folder)."""
        if self.log is None:
            return None
        with self._snapshot_lock:
            with self._gate.closed():  # no batch between its log write and its state update
                segment = self.log.rotate()
                with self._users_lock:
                    counts = [(user, r, len(r.events)) for user, r in self._users.items() if len(r.events)]
            users = {user: self._item_tokens[r.appended(n)].tolist() for user, r, n in counts}
            return self.log.write_snapshot(segment, users)

    def _snapshot_when_due(self) -> None:
        if self.log is None or self.log.segment_bytes < self.snapshot_every_bytes:
            return
        with self._starting_snapshot:
            if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
                return
            self._snapshot_thread = threading.Thread(target=self._background_snapshot, daemon=True,
                                                     name="recbole-ssm-snapshot")
            self._snapshot_thread.start()

    def _background_snapshot(self) -> None:
        try:
            self.snapshot()
        except (OSError, LogError) as exc:  # the log goes on; the next snapshot tries again
            import sys

            print(f"warning: snapshot of {self.log.folder} failed: {exc}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Refuse new events, let those in flight finish, snapshot (with a state folder) and stop
        the log. Idempotent."""
        with self._gate.closed():
            if self.closed:
                return
            self.closed = True
        thread = self._snapshot_thread
        if thread is not None:
            thread.join()
        try:
            self.snapshot()
        finally:
            self.worker.stop()
            if self.log is not None:
                self.log.close()
