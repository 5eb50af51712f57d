"""Data-parallel training with ``torch.distributed``: ``--nproc=N`` on one machine, torchrun across machines.

How a run is split (docs/distributed.md has the commands):

- **Processes.** ``nproc: N`` (``--nproc=N``) starts N processes on this machine (``spawn``),
  one rank each; under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
  ``MASTER_PORT`` set) the process joins the group torchrun describes. The backend is NCCL
  on CUDA (rank r uses GPU ``LOCAL_RANK``) and gloo on the CPU.
- **Data.** Every rank builds the data set itself. The training loader is sharded with
  PyTorch's ``DistributedSampler`` (reshuffled every epoch from the run's seed) without
  padding: each rank trains ``n // world_size`` examples an epoch, disjoint from the others';
  the ``n % world_size`` left over (at most world_size - 1, a different few each epoch) wait for
  a later epoch. ``train_batch_size`` (``train_window_batch_size`` under ``train_targets: all``)
  is the **global** batch, as in RecBole: each rank takes ``batch // world_size``.
- **Gradients** are averaged across ranks by ``DistributedDataParallel`` around the model's loss.
- **Evaluation** is done once, by rank 0, on the whole validation / test split, exactly as a
  single process does; the result is broadcast so that early stopping is the same on every
  rank. Rank 0 alone writes the checkpoint and the log; the others log errors only.
- **Failures.** A rank that raises reports its error to the launcher, which stops the other
  ranks at once (they may be blocked in a collective) and raises that error in the caller.

Resume states (``--resume``) are not written by distributed runs.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from recbole_ssm.errors import UsageError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Rank 0 evaluates while the others wait in a broadcast: the group's timeout must cover an evaluation.
TIMEOUT = datetime.timedelta(hours=2)


class DistributedError(RuntimeError):
    """A rank of a distributed run failed; the message names the rank and its error."""


@dataclass(frozen=True)
class World:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` of the environment (torchrun or our launcher), 1 when unset."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a whole number") from None


def requested(config) -> bool:
    """Whether this run should be distributed: ``nproc > 1`` here or a torchrun environment."""
    return (config["nproc"] or 1) > 1 or env_world_size() > 1


def check(config, resume: str | None = None) -> None:
    """One-line errors for settings a distributed run cannot take."""
    nproc = config["nproc"] or 1
    if nproc > 1 and env_world_size() > 1 and "RECBOLE_SSM_LAUNCHED" not in os.environ:
        raise UsageError("nproc > 1 under torchrun: torchrun starts the processes (--nproc_per_node); drop --nproc")
    if requested(config) and resume:
        raise UsageError("--resume continues single-process runs only; resume without --nproc / torchrun")
    if requested(config) and config["train_window_positions"] is not None:
        raise UsageError("train_window_positions batches single-process runs only; use train_window_batch_size "
                         "(windows a batch) with --nproc / torchrun")


def setup(config) -> World:
    """Join the process group described by the environment and adapt ``config`` to this rank."""
    import torch
    import torch.distributed as dist

    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise UsageError(f"distributed run without {', '.join(missing)} in the environment: start it with "
                         "--nproc=N or torchrun")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.device(config["device"]).type == "cuda"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"rank {rank} needs GPU {local_rank} but {torch.cuda.device_count()} are visible "
                             f"(gpu_id={config['gpu_id']!r}); list one GPU a process, e.g. --gpu_id=0,1")
        torch.cuda.set_device(local_rank)
        config["device"] = torch.device("cuda", local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", timeout=TIMEOUT)
    config["world_size"] = world_size
    config["resume_state"] = False
    # RecBole creates these with exists-then-makedirs, which races between ranks
    os.makedirs(config["checkpoint_dir"], exist_ok=True)
    os.makedirs(os.path.join("log", str(config["model"])), exist_ok=True)
    if rank != 0:  # as RecBole does: one rank talks
        config["state"] = "error"
        config["show_progress"] = False
        config["verbose"] = False
    return World(rank, world_size, local_rank, backend)


def shard_train_loader(train, config, world: World):
    """The training loader again, its examples split across ranks (see the module docstring)."""
    config["single_spec"] = False  # RecBole's loaders then take a DistributedSampler and batch // world
    try:
        sharded = type(train)(config, train._dataset, train._sampler, shuffle=train.shuffle)
    finally:
        config["single_spec"] = True  # the rest of RecBole stays single-process: see TrainerHooks
    sampler = sharded.sampler
    # no padding with repeated examples: every rank gets n // world_size, disjoint
    sampler.drop_last = True
    sampler.num_samples = len(sampler.dataset) // world.world_size
    sampler.total_size = sampler.num_samples * world.world_size
    return sharded


def broadcast(value: Any, world: World | None) -> Any:
    """Rank 0's ``value`` on every rank (identity when not distributed)."""
    if world is None or world.world_size == 1:
        return value
    import torch.distributed as dist

    box = [value if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown(world: World | None) -> None:
    import torch.distributed as dist

    if world is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# -- the launcher: N processes on this machine ------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, nproc: int, port: int, target, args: tuple, queue) -> None:
    """One rank: the environment torchrun would give it, then ``target(*args)``; rank 0 reports its result."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RECBOLE_SSM_LAUNCHED": "1"})
    if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.isdir("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # ranks on one machine talk over loopback, whatever the hostname
    if "OMP_NUM_THREADS" not in os.environ:  # the cores are shared by the ranks
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        out = target(*args)
        if rank == 0:
            queue.put(("result", rank, out))
    except BaseException as exc:  # noqa: B036 - every failure must reach the launcher
        message = " ".join(str(exc).split()) or type(exc).__name__
        usage = isinstance(exc, UsageError)
        queue.put(("error", rank, (type(exc).__name__, message, usage, traceback.format_exc())))
        queue.close()
        queue.join_thread()
        os._exit(2 if usage else 1)


def launch(nproc: int, target, args: tuple = (), grace_s: float = 3.0) -> Any:
    """Run ``target(*args)`` in ``nproc`` new processes, one rank each; return rank 0's return value.

    When a rank fails, the others are terminated (killed after ``grace_s``) and the failure is
    raised here: a UsageError as itself, anything else as a DistributedError naming the rank.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, nproc, port, target, args, queue), daemon=False)
             for r in range(nproc)]
    for p in procs:
        p.start()
    result, error = None, None
    try:
        while True:
            result, error = _drain(queue, result, error)
            failed = [(r, p) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if error is not None or failed:
                break
            if all(p.exitcode == 0 for p in procs):
                break
            wait([p.sentinel for p in procs if p.exitcode is None], timeout=0.5)
    except KeyboardInterrupt:
        _stop(procs, grace_s)
        raise
    if error is None and failed:
        deadline = time.monotonic() + 5  # its report may still be in the queue
        while error is None and time.monotonic() < deadline:
            result, error = _drain(queue, result, error, timeout=0.2)
    _stop(procs, grace_s)
    result, error = _drain(queue, result, error)
    if error is not None:
        rank, (name, message, usage, trace) = error
        if usage:
            raise UsageError(message)
        raise DistributedError(f"rank {rank} failed: {name}: {message}\n{trace}")
    bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        rank, code = bad[0]
        raise DistributedError(f"rank {rank} exited with code {code} without reporting an error")
    return result


def _drain(queue, result, error, timeout: float = 0.0):
    import queue as queue_module

    while True:
        try:
            kind, rank, payload = queue.get(timeout=timeout) if timeout else queue.get_nowait()
        except queue_module.Empty:
            return result, error
        if kind == "result":
            result = payload
        elif error is None:
            error = (rank, payload)


def _stop(procs, grace_s: float) -> None:
    """Terminate the ranks still running; kill those that do not end within ``grace_s``."""
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGKILL)
            p.join()
