"""Micro-batching: the model runs in one thread, for every request waiting, as one batch.

Requests arrive on the server's thread pool. Run one at a time in those threads, each model call
is a few dozen small torch operations on one row, which costs about as much as on a hundred
rows, and the threads contend for the interpreter. Instead each request hands its model work
(a :class:`Job`) to the :class:`ModelWorker` and waits; the worker takes every job waiting, runs
them together (one ``step`` for the users with an event, one product with the item embeddings
for the users asking for recommendations) and wakes each request with its own result.

A request holds its user's lock while it waits, so a user never has two jobs in one batch.
:class:`StateStack` stacks one-row states into a batch and splits them back; the dimension of
each state tensor that holds the users is found once per model, by comparing the states of one
and of two users (it is 0 for the SSMs' tensors, 1 for GRU4Rec's hidden state).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from recbole_ssm.models.base import StepState


def _batch_dim(one: torch.Tensor, two: torch.Tensor) -> int:
    for dim, (a, b) in enumerate(zip(one.shape, two.shape)):
        if a != b:
            return dim
    raise ValueError(f"a state tensor of shape {tuple(one.shape)} does not grow with the number of users")


class StateStack:
    """Stacks users' one-row :class:`StepState` s into one and splits a batch back into rows."""

    def __init__(self, model):
        one, two = model.init_state(1), model.init_state(2)
        self.dims = [[_batch_dim(a, b) for a, b in zip(la, lb)] for la, lb in zip(one.layers, two.layers)]

    def stack(self, states: list[StepState]) -> StepState:
        if len(states) == 1:
            return states[0]
        layers = [tuple(torch.cat([s.layers[i][j] for s in states], dim=d) for j, d in enumerate(dims))
                  for i, dims in enumerate(self.dims)]
        return StepState(layers, torch.cat([s.hidden for s in states]), torch.cat([s.length for s in states]))

    def split(self, batch: StepState, n: int) -> list[StepState]:
        if n == 1:
            return [batch]
        return [StepState([tuple(t.narrow(d, row, 1).clone() for t, d in zip(layer, dims))
                           for layer, dims in zip(batch.layers, self.dims)],
                          batch.hidden[row: row + 1].clone(), batch.length[row: row + 1].clone())
                for row in range(n)]


@dataclass
class Job:
    """One request's model work: ``kind`` is "step" or "recommend"; ``args`` what its kind needs."""

    kind: str
    args: dict
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class ModelWorker:
    """One thread that runs ``run_batch(jobs)`` for every job waiting (at most ``max_batch``);
    ``run_batch`` sets each job's ``result`` (or ``error``)."""

    def __init__(self, run_batch: Callable[[list[Job]], None], max_batch: int = 256):
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self._cond = threading.Condition()
        self._jobs: list[Job] = []
        self._stopped = False
        self.batches = 0  # batches run, and jobs in them: jobs / batches is the mean batch
        self.jobs = 0
        self._thread = threading.Thread(target=self._loop, name="recbole-ssm-model", daemon=True)
        self._thread.start()

    def submit(self, kind: str, **args) -> Any:
        """Run one job and return its result (or raise its error), in the caller's thread's turn."""
        job = Job(kind, args)
        with self._cond:
            if self._stopped:
                raise RuntimeError("the model worker has stopped")
            self._jobs.append(job)
            self._cond.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopped:
                    self._cond.wait()
                if not self._jobs:  # stopped, nothing left
                    return
                jobs, self._jobs = self._jobs[: self.max_batch], self._jobs[self.max_batch:]
            try:
                self.run_batch(jobs)
            except BaseException as exc:  # every job of the batch fails with it; the worker goes on
                for job in jobs:
                    if job.error is None and job.result is None:
                        job.error = exc
            self.batches += 1
            self.jobs += len(jobs)
            for job in jobs:
                job.done.set()

    def stop(self) -> None:
        """Run the jobs already submitted, then end the thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()
