"""``bench serve``: the recommendation service under load, on loopback.

For each model, a service (``run_recbole_ssm.py serve``, with an event log in a temporary
``--state_dir``) is started on a checkpoint, and a closed-loop client in this process keeps
``--clients`` requests in flight: each client sends its next request when its last one is
answered. A request is an event (``POST /users/{u}/events`` with one item, ``--event_share`` of
them) or a recommendation (``GET /users/{u}/recommendations?k=10``). Each user belongs to one
client, so a user's requests never overlap and the client knows the order of their events.

Before the timed phase every user's state is built once (one recommendation request each: the
warm-up), so the timed phase measures the steady state: an SSM steps its cached state by one
event and scores it, SASRec re-encodes the user's last L events for every recommendation.

After the load, ``--check_users`` users who received events are asked for their top 10 once more,
and the answers are compared with ``Recommender.recommend_one`` (the offline path of
``recommend``) on the same history: the data set's and the events the client sent, in order.

Data: ``--users`` users with ML-1M-length histories. The data set's users come first; when
``--users`` is larger, users are added as copies of its users' histories (``<user>~<n>``), in a
derived data set written under ``--output`` (``--dataset``-<users>); each model is trained one
epoch on it (``--models``), or ``--checkpoints`` are given (trained on such a data set).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help
from recbole_ssm.utils import atomic_write_text

USAGE = """\
usage: run_recbole_ssm.py bench serve (--models=A,B --dataset=NAME | --checkpoints=CK1,CK2)
                                      [--users=10000] [--clients=16,64] [--duration=20]
                                      [--max_requests=50000] [--event_share=0.8] [--check_users=100]
                                      [--output=results/serve] [--seed=2020]

  --models       models trained one epoch each on --dataset with --users users (checkpoints kept
                 under --output/checkpoints and reused)
  --checkpoints  trained models to serve instead
  --users        users with ML-1M-length histories (the data set's, then copies of them)
  --clients      concurrent closed-loop clients, one timed phase for each count
  --duration     seconds of each timed phase (it also stops at --max_requests)
  --event_share  the share of requests that are events; the rest are top-10 requests
  --check_users  users whose service answer is compared with the offline recommendation
"""

OPTIONS = {
    "models": Opt(None),
    "dataset": Opt("ml-1m"),
    "data_path": Opt("dataset"),
    "checkpoints": Opt(None),
    "users": Opt(10_000, "whole", minimum=1),
    "clients": Opt("16,64"),
    "duration": Opt(20.0, "number", minimum=1),
    "max_requests": Opt(50_000, "whole", minimum=1),
    "event_share": Opt(0.8, "number", minimum=0),
    "check_users": Opt(100, "whole", minimum=0),
    "output": Opt("results/serve"),
    "seed": Opt(2020, "whole", minimum=0),
    "startup_timeout": Opt(300.0, "number", minimum=1),
}


# -- data and checkpoints -------------------------------------------------------------------------
def derived_dataset(data_path: str, dataset: str, users: int, out_root: str) -> tuple[str, str]:
    """(data_path, name) of ``dataset`` with ``users`` users: its own, then copies of their
    histories named ``<user>~<n>``; the data set itself when it has enough users."""
    import pandas as pd

    src = os.path.join(data_path, dataset, f"{dataset}.inter")
    if not os.path.exists(src):
        raise UsageError(f"no data set {dataset!r} under {data_path}: prepare it first (docs/data.md)")
    name = f"{dataset}-{users}"
    target = os.path.join(out_root, name)
    inter = os.path.join(target, f"{name}.inter")
    if os.path.exists(inter):
        return out_root, name
    frame = pd.read_csv(src, sep="\t", dtype=str)
    user_col = frame.columns[0]
    tokens = frame[user_col].unique()
    parts, n = [frame], len(tokens)
    copy = 1
    while n < users:
        chosen = tokens[: min(len(tokens), users - n)]
        extra = frame[frame[user_col].isin(set(chosen))].copy()
        extra[user_col] = extra[user_col] + f"~{copy}"
        parts.append(extra)
        n += len(chosen)
        copy += 1
    if n > users:
        raise UsageError(f"--users={users} is fewer than {dataset}'s {len(tokens)} users: give at least that many")
    os.makedirs(target, exist_ok=True)
    tmp = inter + ".tmp"
    pd.concat(parts).to_csv(tmp, sep="\t", index=False)
    os.replace(tmp, inter)
    yaml = os.path.join(data_path, dataset, f"{dataset}.yaml")
    if os.path.exists(yaml):
        shutil.copy(yaml, os.path.join(target, f"{name}.yaml"))
    return out_root, name


def train_checkpoint(model: str, data_path: str, dataset: str, out: str) -> str:
    """A checkpoint of ``model`` trained one epoch under ``train_targets=all`` on ``dataset`` (kept in
    ``out/<model>`` and reused): a model to load and serve, not an accuracy claim."""
    folder = os.path.join(out, model)
    os.makedirs(folder, exist_ok=True)
    found = sorted(f for f in os.listdir(folder) if f.endswith(".pth") and not f.endswith("-resume.pth"))
    if found:
        return os.path.join(folder, found[-1])
    cmd = [sys.executable, "-m", "recbole_ssm", f"--model={model}", f"--dataset={dataset}",
           f"--data_path={data_path}", "--epochs=1", "--train_targets=all", f"--checkpoint_dir={folder}",
           "--show_progress=False"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    match = re.search(r"^saved (\S+)", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"training {model} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return match.group(1)


# -- the service ---------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``run_recbole_ssm.py serve`` in a child process on a loopback port."""

    def __init__(self, checkpoint: str, state_dir: str, timeout: float):
        self.port = free_port()
        self.log = open(os.path.join(state_dir, "service.log"), "w")
        cmd = [sys.executable, "-m", "recbole_ssm", "serve", f"--checkpoint={checkpoint}",
               "--host=127.0.0.1", f"--port={self.port}", f"--state_dir={os.path.join(state_dir, 'state')}",
               "--max_users_in_memory=1000000"]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited ({self.proc.returncode}): {self.log.name}")
            try:
                status, body = asyncio.run(one_request(self.port, "GET", "/health"))
                if status == 200:
                    self.health = json.loads(body)
                    self.startup_s = time.perf_counter() - t0
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the service did not answer /health within {timeout:.0f} s: {self.log.name}")

    def peak_rss_mib(self) -> float:
        return self._mib("VmHWM")

    def rss_mib(self) -> float:
        return self._mib("VmRSS")

    def _mib(self, field_name: str) -> float:
        from recbole_ssm.bench.memory import status_kib

        kib = status_kib(field_name, self.proc.pid)
        return float("nan") if kib is None else kib / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- a minimal HTTP/1.1 keep-alive client (the client's own cost stays small next to the service's)
class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the service closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def one_request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = await Connection.open(port)
    try:
        return await conn.request(method, path, body)
    finally:
        conn.close()


def quote(token: str) -> str:
    from urllib.parse import quote as q

    return q(token, safe="")


async def warm_up(port: int, users: list[str], clients: int) -> None:
    """One recommendation request per user (each user's state is built once)."""
    queue = list(reversed(users))

    async def worker():
        conn = await Connection.open(port)
        try:
            while queue:
                user = queue.pop()
                status, body = await conn.request("GET", f"/users/{quote(user)}/recommendations?k=10")
                if status != 200:
                    raise RuntimeError(f"warm-up: {user}: {status} {body[:200]!r}")
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(clients)))


async def closed_loop(port: int, users: list[str], items: list[str], clients: int, duration: float,
                      max_requests: int, event_share: float, seed: int, sent: dict[str, list[str]]) -> dict:
    """``clients`` clients, each with its own users and connection, for ``duration`` seconds or
    ``max_requests`` requests in all; ``sent`` collects each user's events in order."""
    latencies = {"event": [], "recommend": []}
    errors: list[str] = []
    count = [0]
    deadline = time.perf_counter() + duration

    async def client(c: int):
        rng = np.random.default_rng(seed + c)
        mine = users[c::clients]
        conn = await Connection.open(port)
        try:
            while time.perf_counter() < deadline and count[0] < max_requests:
                count[0] += 1
                user = mine[int(rng.integers(len(mine)))]
                if rng.random() < event_share:
                    item = items[int(rng.integers(len(items)))]
                    body = json.dumps({"items": [item]}).encode()
                    t0 = time.perf_counter()
                    status, answer = await conn.request("POST", f"/users/{quote(user)}/events", body)
                    latencies["event"].append(time.perf_counter() - t0)
                    if status == 200:
                        sent.setdefault(user, []).append(item)
                else:
                    t0 = time.perf_counter()
                    status, answer = await conn.request("GET", f"/users/{quote(user)}/recommendations?k=10")
                    latencies["recommend"].append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(f"{status} {answer[:200]!r}")
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    every = latencies["event"] + latencies["recommend"]

    def ms(values: list[float], q: float) -> float:
        return round(float(np.quantile(values, q)) * 1e3, 2) if values else float("nan")

    return {"clients": clients, "requests": len(every), "wall_s": round(wall, 2),
            "throughput_rps": round(len(every) / wall, 1), "events": len(latencies["event"]),
            "recommendations": len(latencies["recommend"]), "errors": len(errors), "first_errors": errors[:3],
            "p50_ms": ms(every, 0.5), "p99_ms": ms(every, 0.99),
            "event_p50_ms": ms(latencies["event"], 0.5), "event_p99_ms": ms(latencies["event"], 0.99),
            "recommend_p50_ms": ms(latencies["recommend"], 0.5), "recommend_p99_ms": ms(latencies["recommend"], 0.99)}


async def service_answers(port: int, users: list[str]) -> dict[str, dict]:
    conn = await Connection.open(port)
    try:
        out = {}
        for user in users:
            status, body = await conn.request("GET", f"/users/{quote(user)}/recommendations?k=10")
            out[user] = json.loads(body) if status == 200 else {"status": status}
        return out
    finally:
        conn.close()


def check_offline(checkpoint: str, answers: dict[str, dict], sent: dict[str, list[str]]) -> dict:
    """The service's top 10 against ``Recommender.recommend_one`` on the same history."""
    import logging

    from recbole_ssm.serve import from_checkpoint

    logging.disable(logging.INFO)
    rec = from_checkpoint(checkpoint)
    same_items, max_diff, mismatches = 0, 0.0, []
    for user, answer in answers.items():
        offline = rec.recommend_one(user, new_items=sent.get(user, []), k=10, exclude_seen=True)
        items = [r.item for r in offline]
        scores = np.array([r.score for r in offline])
        if answer.get("items") == items:
            same_items += 1
            max_diff = max(max_diff, float(np.abs(np.asarray(answer["scores"]) - scores).max()))
        else:
            mismatches.append(user)
    logging.disable(logging.NOTSET)
    return {"users": len(answers), "same_top10": same_items, "max_score_diff": max_diff, "mismatches": mismatches[:5]}


# -- the command ---------------------------------------------------------------------------------
def bench_model(label: str, checkpoint: str, opts: dict, clients: list[int]) -> dict:
    import logging

    from recbole_ssm.serve import from_checkpoint

    logging.disable(logging.INFO)
    rec = from_checkpoint(checkpoint)  # the users and items the service will know
    users = [rec.user_token(u) for u in rec.all_users()][: opts["users"]]
    items = [str(t) for t in rec.dataset.field2id_token[rec.dataset.iid_field][1:]]
    del rec
    logging.disable(logging.NOTSET)
    record = {"model": label, "checkpoint": checkpoint, "users": len(users), "phases": []}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as state:
        service = Service(checkpoint, state, opts["startup_timeout"])
        try:
            record["startup_s"] = round(service.startup_s, 1)
            t0 = time.perf_counter()
            asyncio.run(warm_up(service.port, users, max(clients)))
            record["warm_up_s"] = round(time.perf_counter() - t0, 1)
            record["rss_after_warm_up_mib"] = round(service.rss_mib())
            sent: dict[str, list[str]] = {}
            for n in clients:
                phase = asyncio.run(closed_loop(service.port, users, items, n, opts["duration"], opts["max_requests"],
                                                opts["event_share"], opts["seed"] + 1000 * n, sent))
                phase["rss_mib"] = round(service.rss_mib())
                record["phases"].append(phase)
                print(json.dumps({"model": label, **phase}), flush=True)
            rng = np.random.default_rng(opts["seed"])
            touched = sorted(sent)
            chosen = [touched[i] for i in rng.choice(len(touched), size=min(opts["check_users"], len(touched)),
                                                     replace=False)] if touched else []
            answers = asyncio.run(service_answers(service.port, chosen))
            record["peak_rss_mib"] = round(service.peak_rss_mib())
        finally:
            service.stop()
    record["check"] = check_offline(checkpoint, answers, sent)
    return record


def table(records: list[dict]) -> str:
    from recbole_ssm.bench.report import markdown_table

    rows = []
    base = {}
    for r in records:
        for p in r["phases"]:
            if r["model"] == "SASRec":
                base[p["clients"]] = p["throughput_rps"]
    for r in records:
        for p in r["phases"]:
            ratio = p["throughput_rps"] / base[p["clients"]] if base.get(p["clients"]) else None
            check = r["check"]
            rows.append([r["model"], p["clients"], p["requests"], f"{p['throughput_rps']:.0f}",
                         f"{ratio:.1f}x" if ratio else "-", p["p50_ms"], p["p99_ms"],
                         p["event_p99_ms"] if p["events"] else "-",
                         p["recommend_p99_ms"] if p["recommendations"] else "-", p["errors"], p["rss_mib"],
                         f"{check['same_top10']}/{check['users']}" if check["users"] else "- (no events sent)"])
    return markdown_table(["Model", "Clients", "Requests", "Requests/s", "vs SASRec", "p50 (ms)", "p99 (ms)",
                           "event p99", "top-10 p99", "Errors", "RSS (MiB)", "Same as offline"], rows)


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    opts = parse(argv, OPTIONS, "bench serve", settings=False)[0]
    if bool(opts["models"]) == bool(opts["checkpoints"]):
        raise UsageError("bench serve needs --models=A,B (with --dataset) or --checkpoints=CK1,CK2 (one of them)")
    if opts["event_share"] > 1:
        raise UsageError(f"--event_share is a fraction from 0 to 1, got {opts['event_share']}")
    clients = sorted({int(c) for c in str(opts["clients"]).split(",") if c.strip()})
    if not clients or min(clients) < 1:
        raise UsageError(f"--clients takes counts >= 1 separated by commas, got {opts['clients']!r}")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("bench serve needs the serve extra: pip install 'recbole-ssm[serve]'") from None
    out = opts["output"]
    os.makedirs(out, exist_ok=True)
    if opts["checkpoints"]:
        pairs = [(os.path.basename(c).split("-")[0], c) for c in opts["checkpoints"].split(",")]  # <Model>-...
    else:
        data_path, name = derived_dataset(opts["data_path"], opts["dataset"], opts["users"], os.path.join(out, "data"))
        pairs = [(m, train_checkpoint(m, data_path, name, os.path.join(out, "checkpoints")))
                 for m in opts["models"].split(",")]
    records = []
    for label, checkpoint in pairs:
        record = bench_model(label, checkpoint, opts, clients)
        records.append(record)
        atomic_write_text(os.path.join(out, "serve.json"), json.dumps(records, indent=1))
    from recbole_ssm.bench.report import machine_line

    text = table(records)
    head = f"Command: `python run_recbole_ssm.py bench serve {' '.join(argv)}`\n\nMachine: {machine_line()}.\n\n"
    atomic_write_text(os.path.join(out, "serve.md"), head + text + "\n")
    print(text)
    return 0
