"""The HTTP recommendation service (``serve``): endpoints, bad requests, equality with the offline
recommendations, the event log (group commit, torn records, snapshots, kill -9), the LRU of
users' states, concurrent events of one user."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402

with warnings.catch_warnings():  # newer Starlette asks for httpx2 and falls back to httpx with a warning
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient  # noqa: E402

from recbole_ssm.cli import main  # noqa: E402
from recbole_ssm.serve import Recommender, Service, from_checkpoint  # noqa: E402
from recbole_ssm.serve.http import create_app  # noqa: E402
from recbole_ssm.serve.log import decode, encode, read_segment  # noqa: E402
from tests.test_recommend import _train  # noqa: E402


@pytest.fixture(scope="module")
def mamba2(tmp_path_factory, tiny_data):
    """A Recommender of a Mamba2Rec checkpoint (a model with a step API), shared: a Service only reads it."""
    path = _train("Mamba2Rec", tiny_data, tmp_path_factory.mktemp("mamba2"), train_targets="all").saved_model_file
    return from_checkpoint(path), path


@pytest.fixture(scope="module")
def sasrec(tmp_path_factory, tiny_data):
    """A Recommender of a SASRec checkpoint: no step API, recommendations re-encode the last L events."""
    path = _train("SASRec", tiny_data, tmp_path_factory.mktemp("sasrec"), train_targets="all").saved_model_file
    return from_checkpoint(path), path


def offline(rec) -> Recommender:
    """A fresh Recommender of the same model and data set (``recommend_one`` remembers the events it is given)."""
    return Recommender(rec.model, rec.dataset, dict(rec.histories))


def items_of(rec, ids) -> list[str]:
    return [str(rec.dataset.field2id_token[rec.dataset.iid_field][i]) for i in ids]


def long_users(rec, count: int) -> list[str]:
    """Users of the data set with more than MAX_ITEM_LIST_LENGTH events."""
    uids = [u for u in sorted(rec.histories) if len(rec.histories[u]) > rec.max_length + 5]
    return [rec.user_token(u) for u in uids[:count]]


def short_user(rec) -> str:
    """A user of the data set with room for a few events within MAX_ITEM_LIST_LENGTH."""
    return rec.user_token(next(u for u in sorted(rec.histories) if len(rec.histories[u]) <= rec.max_length - 3))


def state_files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def assert_same_ranking(got: dict, want: dict, atol: float = 2e-5) -> None:
    """The same top items with scores within ``atol``; two items may trade places only where
    their scores are that close (a state rebuilt in one chunked pass differs in the last bits)."""
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=atol)
    for rank, (a, b) in enumerate(zip(got["items"], want["items"])):
        if a != b:
            near = [r for r in range(len(want["items"])) if abs(want["scores"][r] - want["scores"][rank]) <= atol]
            assert a in [want["items"][r] for r in near], (rank, got, want)


# -- endpoints


def test_health_names_the_model_and_data_set_and_counts_the_users_cached(mamba2, tmp_path):
    rec, _ = mamba2
    with TestClient(create_app(Service(rec, state_dir=str(tmp_path / "state")))) as client:
        health = client.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["model"] == "Mamba2Rec" and body["dataset"] == "ml-tiny" and body["stepwise"] is True
        assert body["users_cached"] == 0 and body["items"] == len(rec._item_tokens) - 1
        assert body["state_dir"] == str(tmp_path / "state")
        client.post("/users/3/events", json={"items": items_of(rec, [5])})
        client.post("/users/newcomer/events", json={"items": items_of(rec, [5, 6])})
        body = client.get("/health").json()
        assert body["users_cached"] == 2 and body["users_with_events"] == 2 and body["events_appended"] == 3
        assert body["log_records"] == 2 and 1 <= body["log_fsyncs"] <= 2


@pytest.mark.parametrize("which", ["mamba2", "sasrec"])
def test_recommendations_after_events_equal_the_offline_ones_for_the_same_history(which, request, tmp_path):
    """A user of the data set and a new user: POST twice, then the top k equal a fresh Recommender's
    recommend_one on the same history (the step API for Mamba2Rec, re-encoding for SASRec)."""
    rec, _ = request.getfixturevalue(which)
    user = short_user(rec)
    first, second = items_of(rec, [5, 9]), items_of(rec, [13])
    base = len(rec.histories[rec.user_id(user)])
    with TestClient(create_app(Service(rec, state_dir=str(tmp_path / "state")))) as client:
        for name, start in ((user, base), ("newcomer", 0)):
            assert client.post(f"/users/{name}/events", json={"items": first}).json() == {"user": name,
                                                                                         "events": start + 2}
            assert client.post(f"/users/{name}/events", json={"items": second}).json()["events"] == start + 3
        for name, token in ((user, user), ("newcomer", None)):
            for exclude_seen in (True, False):
                got = client.get(f"/users/{name}/recommendations", params={"k": 7, "exclude_seen": exclude_seen})
                assert got.status_code == 200
                body = got.json()
                want = offline(rec).recommend_one(token, first + second, k=7, exclude_seen=exclude_seen)
                assert body["user"] == name and body["items"] == [r.item for r in want], (name, exclude_seen)
                np.testing.assert_allclose(body["scores"], [r.score for r in want], rtol=1e-6, atol=1e-6)
                if exclude_seen:  # the new events are seen
                    assert not set(body["items"]) & set(first + second)
        known = client.get("/users/7/recommendations", params={"k": 3}).json()  # no event: the data set's history
        assert known["items"] == [r.item for r in offline(rec).recommend_one("7", k=3)]


def test_a_cached_users_events_are_stepped_not_re_encoded(mamba2, tmp_path, monkeypatch):
    rec, _ = mamba2
    service = Service(rec)
    builds = []
    original = type(rec.model).state_from
    monkeypatch.setattr(type(rec.model), "state_from", lambda self, *a: builds.append(1) or original(self, *a))
    user = long_users(rec, 1)[0]
    service.post_events(user, items_of(rec, [5]))  # a miss: the state is built once from the history
    assert len(builds) == 1
    for item in (9, 13, 17):
        service.post_events(user, items_of(rec, [item]))
    service.recommend(user, k=5)
    assert len(builds) == 1
    state = service.cache.get(user)
    assert int(state.length[0]) == rec.max_length + 4  # the data set's last L events, then 4 steps


def test_a_model_with_learned_positions_re_reads_the_last_L_events_past_L(mamba2, monkeypatch):
    """RecMamba's rule (``bounded_positions``): a state cannot be stepped past L events; the service
    then re-reads the last L, as Recommender.recommend_one does."""
    rec, _ = mamba2
    monkeypatch.setattr(rec.model, "bounded_positions", True, raising=False)
    service = Service(rec)
    user = short_user(rec)
    new = items_of(rec, range(20, 32))  # past L = 20 events in all
    for item in new:
        service.post_events(user, [item])
    assert int(service.cache.get(user).length[0]) == rec.max_length
    items, scores = service.recommend(user, k=6)
    want = offline(rec).recommend_one(user, new, k=6)
    assert items == [r.item for r in want]
    np.testing.assert_allclose(scores, [r.score for r in want], rtol=0, atol=1e-5)


def test_the_openapi_page_documents_the_api(mamba2):
    rec, _ = mamba2
    with TestClient(create_app(Service(rec))) as client:
        schema = client.get("/openapi.json").json()
        assert {"/health", "/users/{user}/events", "/users/{user}/recommendations"} <= set(schema["paths"])
        events = schema["components"]["schemas"]["Events"]
        assert events["properties"]["items"]["description"].startswith("Item tokens")
        params = {p["name"]: p for p in schema["paths"]["/users/{user}/recommendations"]["get"]["parameters"]}
        assert set(params) == {"user", "k", "exclude_seen"} and params["k"]["description"]
        assert "422" in schema["paths"]["/users/{user}/events"]["post"]["responses"]
        assert client.get("/docs").status_code == 200


BAD = [  # (method, path, body: json or raw bytes, status, words in the one-line reason)
    ("post", "/users/3/events", {"items": ["50", "no-such-item", "172"]}, 422, "unknown item token 'no-such-item'"),
    ("post", "/users/newcomer/events", {"items": ["no-such-item"]}, 422, "unknown item token 'no-such-item'"),
    ("post", "/users/3/events", b'{"items": ["50", ', 400, "not valid JSON"),
    ("post", "/users/3/events", b"items=50", 400, "not valid JSON"),
    ("post", "/users/3/events", "items=50", 415, "must be JSON sent as Content-Type: application/json"),
    ("post", "/users/3/events", {"items": []}, 422, "items"),
    ("post", "/users/3/events", {"items": "50"}, 422, "items"),
    ("post", "/users/3/events", {"items": [50]}, 422, "items.0"),
    ("post", "/users/3/events", {"item": ["50"]}, 422, "items: Field required"),
    ("get", "/users/3/recommendations?k=0", None, 422, "k must be between 1 and"),
    ("get", "/users/3/recommendations?k=100000", None, 422, "k must be between 1 and"),
    ("get", "/users/3/recommendations?k=ten", None, 422, "k: Input should be a valid integer"),
    ("get", "/users/nobody/recommendations", None, 404, "user 'nobody' has no history"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), BAD)
def test_a_bad_request_gets_its_status_and_a_one_line_reason_and_changes_nothing(mamba2, tmp_path, method, path,
                                                                               body, status, words):
    rec, _ = mamba2
    folder = tmp_path / "state"
    service = Service(rec, state_dir=str(folder))
    with TestClient(create_app(service)) as client:
        client.post("/users/3/events", json={"items": items_of(rec, [5, 9])})
        before = (client.get("/users/3/recommendations", params={"k": 5}).json(),
                  {u: service.events(u) for u in ("3", "newcomer", "nobody")}, state_files(folder),
                  len(service.cache), service.cache.get("3").hidden.clone())
        if isinstance(body, (bytes, str)):  # bytes: sent as JSON; str: as a form (curl -d's default)
            kind = "application/json" if isinstance(body, bytes) else "application/x-www-form-urlencoded"
            kwargs = {"content": body, "headers": {"content-type": kind}}
        else:
            kwargs = {"json": body} if body is not None else {}
        got = getattr(client, method)(path, **kwargs)
        assert got.status_code == status, got.text
        detail = got.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and words in detail, detail
        after = (client.get("/users/3/recommendations", params={"k": 5}).json(),
                 {u: service.events(u) for u in ("3", "newcomer", "nobody")}, state_files(folder),
                 len(service.cache), service.cache.get("3").hidden)
        assert after[:4] == before[:4]
        assert torch.equal(after[4], before[4])


# -- the LRU of states


def test_an_evicted_state_is_rebuilt_equal_to_the_state_never_evicted(mamba2):
    """Users of the data set with more than L events and a new user; a cache of 2 users against
    one that evicts nothing: the same states (each layer's), scores and top items."""
    rec, _ = mamba2
    small, large = Service(rec, max_users_in_memory=2), Service(rec, max_users_in_memory=100)
    users = [*long_users(rec, 3), "newcomer"]
    for round_ in range(3):
        for i, user in enumerate(users):
            batch = items_of(rec, [7 * round_ + i + 1, 7 * round_ + i + 30])
            assert small.post_events(user, batch) == large.post_events(user, batch)
    assert len(small.cache) == 2 and small.cache.evictions >= 9 and len(large.cache) == 4
    for user in users:
        small.cache.discard(user)  # evicted (two of them are cached now)
        got, want = (s._states([(user, s._record(user, False), len(s._record(user, False).events))])[0]
                     for s in (small, large))
        assert torch.equal(got.length, want.length)
        for got_layer, want_layer in zip(got.layers, want.layers):
            for a, b in zip(got_layer, want_layer):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        items, scores = small.recommend(user, k=10)
        assert_same_ranking({"items": items, "scores": scores}, dict(zip(("items", "scores"),
                                                                         large.recommend(user, k=10))))
    assert len(small.cache) <= 2


# -- concurrency


def test_concurrent_events_of_one_user_are_all_kept_in_each_threads_order(mamba2, tmp_path):
    """8 threads x 25 posts of one user through the HTTP app: 200 events in the user's history,
    each thread's in its order, 200 records in the log (fewer fsyncs: group commit), and the state
    stepped through all of them (equal to one rebuilt from the history)."""
    rec, _ = mamba2
    folder = tmp_path / "state"
    service = Service(rec, state_dir=str(folder))
    user = long_users(rec, 1)[0]
    base = len(rec.histories[rec.user_id(user)])
    threads, per = 8, 25
    sequences = [items_of(rec, [1 + (t * per + j) % 1500 for j in range(per)]) for t in range(threads)]
    errors: list = []
    with TestClient(create_app(service)) as client:
        def worker(t: int) -> None:
            try:
                for item in sequences[t]:
                    got = client.post(f"/users/{user}/events", json={"items": [item]})
                    assert got.status_code == 200, got.text
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert not errors, errors[0]
        assert service.events(user) == base + threads * per
        history = items_of(rec, service._record(user, False).appended())
        for seq in sequences:
            positions = iter(range(len(history)))
            assert all(any(history[p] == item for p in positions) for item in seq)  # a subsequence
        health = client.get("/health").json()
        assert health["log_records"] == threads * per and health["log_fsyncs"] <= threads * per
        stepped = service.cache.get(user)
        rebuilt = service._built([service._seed(service._record(user, False), threads * per)])[0]
        assert int(stepped.length[0]) == int(rebuilt.length[0]) == rec.max_length + threads * per
        torch.testing.assert_close(stepped.hidden, rebuilt.hidden, rtol=1e-4, atol=1e-5)
    replayed = Service(rec, state_dir=str(folder))
    assert replayed.events(user) == base + threads * per
    assert items_of(rec, replayed._record(user, False).appended()) == history


# -- durability


def test_log_records_carry_a_checksum_and_a_damaged_one_is_refused():
    record = encode("u 1", ["a", "b\n", "é"])
    assert record.endswith(b"\n") and record.count(b"\n") == 1
    assert decode(record[:-1]) == ("u 1", ["a", "b\n", "é"])
    assert decode(record[:-1].replace(b"a", b"c")) is None  # a flipped byte
    assert decode(record[: len(record) // 2]) is None  # torn
    assert decode(b"zzzzzzzz [1, 2]") is None


def test_closing_the_app_writes_a_snapshot_and_a_restart_replays_it(mamba2, tmp_path):
    rec, _ = mamba2
    folder = tmp_path / "state"
    users = [short_user(rec), "newcomer", "someone else"]
    service = Service(rec, state_dir=str(folder))
    with TestClient(create_app(service)) as client:
        for i, user in enumerate(users):
            client.post(f"/users/{user}/events", json={"items": items_of(rec, [10 + i, 20 + i])})
            client.post(f"/users/{user}/events", json={"items": items_of(rec, [30 + i])})
        before = {u: client.get(f"/users/{u}/recommendations", params={"k": 8}).json() for u in users}
    assert service.closed
    snapshot = json.loads((folder / "snapshot.json").read_text())
    assert snapshot["users"] == {u: items_of(rec, [10 + i, 20 + i, 30 + i]) for i, u in enumerate(users)}
    segments = sorted(n for n in os.listdir(folder) if n.startswith("events-"))
    assert all(int(n[7:15]) >= snapshot["segment"] for n in segments)  # the covered segments are gone
    assert all((folder / n).stat().st_size == 0 for n in segments)
    with TestClient(create_app(Service(rec, state_dir=str(folder)))) as client:
        for user in users:
            assert_same_ranking(client.get(f"/users/{user}/recommendations", params={"k": 8}).json(), before[user])


def test_a_snapshot_is_written_in_the_background_once_the_log_is_long(mamba2, tmp_path):
    rec, _ = mamba2
    folder = tmp_path / "state"
    service = Service(rec, state_dir=str(folder), snapshot_every_bytes=200)
    for i in range(12):
        service.post_events("newcomer", items_of(rec, [i + 1, i + 2]))
    assert service._snapshot_thread is not None, "no snapshot was started"
    service._snapshot_thread.join()
    assert (folder / "snapshot.json").exists() and service.log.segment >= 2
    service.log.close()  # a crash: no snapshot at the end
    again = Service(rec, state_dir=str(folder))
    assert again.events("newcomer") == 24


def test_a_torn_last_log_record_is_ignored_and_cut_off(mamba2, tmp_path):
    rec, _ = mamba2
    folder = tmp_path / "state"
    service = Service(rec, state_dir=str(folder))
    for i in range(3):
        service.post_events("newcomer", items_of(rec, [i + 1]))
    service.log.close()  # killed: no snapshot
    segment = folder / f"events-{service.log.segment:08d}.log"
    whole = segment.stat().st_size
    with open(segment, "ab") as f:  # a record torn by the crash: no newline
        f.write(encode("newcomer", items_of(rec, [99]))[:-5])
    again = Service(rec, state_dir=str(folder))
    assert again.events("newcomer") == 3 and again.recovered.dropped_bytes > 0
    assert segment.stat().st_size == whole  # cut off, so that later records do not follow it
    again.post_events("newcomer", items_of(rec, [4]))
    again.log.close()
    newest = folder / f"events-{again.log.segment:08d}.log"
    with open(newest, "ab") as f:  # a complete line with a bad checksum is dropped too
        f.write(encode("newcomer", items_of(rec, [98])).replace(b"[", b"{", 1))
    third = Service(rec, state_dir=str(folder))
    assert third.events("newcomer") == 4 and items_of(rec, third._record("newcomer", False).appended()) == \
        items_of(rec, [1, 2, 3, 4])
    records, end, size = read_segment(str(newest))
    assert len(records) == 1 and end == size


def test_a_state_folder_of_another_data_set_is_refused(mamba2, tmp_path):
    from recbole_ssm.errors import UsageError

    rec, _ = mamba2
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "meta.json").write_text('{"format": 1, "dataset": "ml-1m"}\n')
    with pytest.raises(UsageError, match="holds events of data set 'ml-1m', not of 'ml-tiny'"):
        Service(rec, state_dir=str(folder))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """``python -m recbole_ssm serve`` in a subprocess, on a free loopback port."""

    def __init__(self, checkpoint: str, folder, log):
        self.port = _free_port()
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "recbole_ssm", "serve", f"--checkpoint={checkpoint}",
                                      f"--port={self.port}", f"--state_dir={folder}"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def wait_ready(self) -> Served:
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if self.client.get("/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, sig: int) -> int:
        self.client.close()
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


@pytest.fixture
def served():
    """Starts services (``served(checkpoint, folder, log)``); any still running at the end is killed."""
    started: list[Served] = []

    def start(*args) -> Served:
        started.append(Served(*args))
        return started[-1].wait_ready()

    yield start
    for one in started:
        if one.proc.poll() is None:
            one.proc.kill()
            one.proc.wait(timeout=30)


def test_kill_9_after_acknowledged_events_then_restart_has_all_of_them_and_sigterm_snapshots(mamba2, tmp_path,
                                                                                              served):
    """The real service: N events acknowledged, kill -9, a restart on the same folder has all N
    (counts and recommendations as before); then SIGTERM writes a snapshot of them all and exits 0
    (a restart reading a snapshot: test_closing_the_app_writes_a_snapshot_and_a_restart_replays_it)."""
    rec, checkpoint = mamba2
    folder = tmp_path / "state"
    users = [short_user(rec), *long_users(rec, 2), "newcomer"]
    with open(tmp_path / "service.log", "w") as log:
        first = served(checkpoint, folder, log)
        sent = 0
        for round_ in range(5):
            for i, user in enumerate(users):
                batch = items_of(rec, [1 + (round_ * 11 + i * 3 + j) % 900 for j in range(1 + i % 2)])
                got = first.client.post(f"/users/{user}/events", json={"items": batch})
                assert got.status_code == 200, got.text
                sent += len(batch)
        counts = {u: first.client.post(f"/users/{u}/events", json={"items": items_of(rec, [7])}).json()["events"]
                  for u in users}
        sent += len(users)
        before = {u: first.client.get(f"/users/{u}/recommendations", params={"k": 10}).json() for u in users}
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert not (folder / "snapshot.json").exists()

        second = served(checkpoint, folder, log)
        assert f"{sent} events of {len(users)} users recovered" in second.output()
        for user in users:
            assert second.client.get("/health").status_code == 200
            assert_same_ranking(second.client.get(f"/users/{user}/recommendations", params={"k": 10}).json(),
                                before[user])
        after = {u: second.client.post(f"/users/{u}/events", json={"items": items_of(rec, [8])}).json()["events"]
                 for u in users}
        assert after == {u: counts[u] + 1 for u in users}
        assert second.stop(signal.SIGTERM) == 0
        assert "stopped; snapshot written" in second.output()
    snapshot = json.loads((folder / "snapshot.json").read_text())
    assert {u: len(v) for u, v in snapshot["users"].items()} == {
        u: after[u] - (len(rec.histories[rec.user_id(u)]) if u != "newcomer" else 0) for u in users}
    assert sum(len(v) for v in snapshot["users"].values()) == sent + len(users)
    assert all((folder / n).stat().st_size == 0 for n in os.listdir(folder) if n.startswith("events-"))


# -- the command


def test_serve_without_a_state_folder_says_events_are_kept_in_memory_only(mamba2, capsys, monkeypatch):
    import uvicorn

    _, checkpoint = mamba2
    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: ran.append(sockets[0].getsockname()))
    assert main(["serve", f"--checkpoint={checkpoint}", "--port=0"]) == 0
    err = capsys.readouterr().err
    assert "serving Mamba2Rec trained on ml-tiny at http://127.0.0.1:" in err
    assert "no --state_dir: events are kept in memory only" in err
    assert len(ran) == 1 and ran[0][1] > 0


def test_serve_help_prints_its_usage(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: run_recbole_ssm.py serve --checkpoint=PATH") and "--max_users_in_memory" in out


@pytest.mark.parametrize(("args", "words"), [
    ([], "serve needs --checkpoint=PATH"),
    (["--checkpoint=CKPT", "--port=70000"], "--port takes a whole number from 0 to 65535"),
    (["--checkpoint=CKPT", "--port=http"], "--port takes a whole number >= 0"),
    (["--checkpoint=CKPT", "--max_users_in_memory=0"], "--max_users_in_memory takes a whole number >= 1"),
    (["--checkpoint=CKPT", "--stat_dir=x"], "unknown or malformed option '--stat_dir=x'"),
    (["--checkpoint=CKPT", "--state_dir=FILE"], "is a file, not a folder"),
    (["--checkpoint=CKPT", "--state_dir=/nonexistent/state"], "folder /nonexistent does not exist"),
    (["--checkpoint=CKPT", "--port=BUSY"], "cannot listen on 127.0.0.1:"),
    (["--checkpoint=/nonexistent.pth", "--port=0"], "checkpoint not found: /nonexistent.pth"),
])
def test_serve_command_errors_are_one_line(mamba2, tmp_path, capsys, monkeypatch, args, words):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # a check missed: exit 0, not a hang
    (tmp_path / "FILE").write_text("")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = [a.replace("CKPT", mamba2[1]).replace("=FILE", f"={tmp_path / 'FILE'}")
                .replace("BUSY", str(busy.getsockname()[1])) for a in args]
        assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err


def test_serve_without_the_extra_names_it(monkeypatch, capsys):
    import recbole_ssm.serve

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi raises ImportError
    monkeypatch.delitem(sys.modules, "recbole_ssm.serve.http", raising=False)
    monkeypatch.delattr(recbole_ssm.serve, "http", raising=False)
    assert main(["serve", "--checkpoint=x.pth"]) == 2
    err = capsys.readouterr().err
    assert "the service needs the serve extra: pip install 'recbole-ssm[serve]'" in err and err.count("\n") == 1


# -- micro-batching (serve/batching.py)


@pytest.mark.parametrize("model", ["mamba2", "sasrec"])
def test_requests_run_together_answer_as_they_do_one_at_a_time(model, request):
    """Events and recommendations of many users submitted together run as one batch of the model
    worker, and each user ends with the same state and top items as a service taking one request
    at a time (states and scores to float rounding: a batch sums in another order)."""
    rec, _ = request.getfixturevalue(model)
    batched, single = Service(rec), Service(rec)
    users = [*long_users(rec, 3), short_user(rec), "newcomer", "newcomer2"]
    rng = np.random.default_rng(11)
    n_items = rec.dataset.item_num
    posts = {u: [items_of(rec, rng.integers(1, n_items, int(rng.integers(1, 4))).tolist()) for _ in range(3)]
             for u in users}
    for user in users:  # one at a time
        for items in posts[user]:
            single.post_events(user, items)
    gate = threading.Barrier(len(users))
    answers: dict = {}
    errors: list = []

    def client(user: str) -> None:
        try:
            for items in posts[user]:
                gate.wait()  # every user's n-th post submitted at once
                batched.post_events(user, items)
            gate.wait()
            answers[user] = batched.recommend(user, k=10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    # a stateful model steps each post and encodes each recommendation; SASRec only encodes
    per_user = 4 if batched.cache is not None else 1
    assert batched.worker.jobs == per_user * len(users) and batched.worker.batches < batched.worker.jobs
    for user in users:
        assert batched.events(user) == single.events(user)
        want = single.recommend(user, k=10)
        assert_same_ranking(dict(zip(("items", "scores"), answers[user])), dict(zip(("items", "scores"), want)))
        if batched.cache is not None:
            got_state, want_state = batched.cache.get(user), single.cache.get(user)
            assert torch.equal(got_state.length, want_state.length)
            torch.testing.assert_close(got_state.hidden, want_state.hidden, rtol=1e-4, atol=1e-5)


def test_state_stack_splits_back_what_it_stacked():
    """Stacking users' states and splitting the batch gives each user's own state back, for the
    SSMs (users on dimension 0) and GRU4Rec (users on dimension 1 of its hidden state)."""
    from recbole_ssm.models.base import StepState
    from recbole_ssm.serve.batching import StateStack

    class GruLike:
        def init_state(self, b):
            return StepState([(torch.zeros(2, b, 3),)], torch.zeros(b, 4), torch.zeros(b, dtype=torch.long))

    class SsmLike:
        def init_state(self, b):
            return StepState([(torch.zeros(b, 5, 3), torch.zeros(b, 2, 4, 6)), (torch.zeros(b, 5, 3),)],
                             torch.zeros(b, 4), torch.zeros(b, dtype=torch.long))

    g = torch.Generator().manual_seed(0)
    for model in (GruLike(), SsmLike()):
        stack = StateStack(model)
        states = []
        for n in range(3):
            s = model.init_state(1)
            s.layers = [tuple(torch.randn(t.shape, generator=g) for t in layer) for layer in s.layers]
            s.hidden, s.length = torch.randn(1, 4, generator=g), torch.tensor([n + 7])
            states.append(s)
        back = stack.split(stack.stack(states), 3)
        for a, b in zip(states, back):
            assert torch.equal(a.hidden, b.hidden) and torch.equal(a.length, b.length)
            for la, lb in zip(a.layers, b.layers):
                assert all(torch.equal(x, y) for x, y in zip(la, lb))


# -- bench serve


def test_bench_serve_loads_a_service_and_checks_its_answers_against_the_offline_ones(mamba2, tmp_path, capsys):
    """``bench serve`` on a checkpoint: a service subprocess, a warm-up, two closed-loop phases of
    events and top-10 requests with no errors, and every checked user's top 10 equal to the
    offline recommendation on the same history."""
    _, path = mamba2
    out = tmp_path / "serve"
    assert main(["bench", "serve", f"--checkpoints={path}", "--users=30", "--clients=1,3", "--duration=2",
                 "--max_requests=200", "--check_users=10", f"--output={out}"]) == 0
    records = json.loads((out / "serve.json").read_text())
    assert [r["model"] for r in records] == ["Mamba2Rec"]
    record = records[0]
    assert [p["clients"] for p in record["phases"]] == [1, 3]
    for phase in record["phases"]:
        assert phase["errors"] == 0 and 0 < phase["requests"] <= 200
        assert phase["events"] > 0 and phase["recommendations"] > 0
        assert phase["throughput_rps"] > 0 and 0 < phase["p50_ms"] <= phase["p99_ms"]
    check = record["check"]
    assert check["users"] == 10 and check["same_top10"] == 10 and check["max_score_diff"] < 1e-4
    report = (out / "serve.md").read_text()
    assert re.search(r"^\| Mamba2Rec +\| 3 +\| ", report, re.M)
    assert report.startswith("Command: `python run_recbole_ssm.py bench serve ") and "\nMachine: " in report


def test_bench_serve_refuses_bad_options_in_one_line(capsys):
    for argv, message in ((["--models=SASRec", "--checkpoints=a.pth"], "--models=A,B (with --dataset) or"),
                          (["--checkpoints=a.pth", "--event_share=1.5"], "--event_share is a fraction from 0 to 1"),
                          (["--checkpoints=a.pth", "--clients=0"], "--clients takes counts >= 1")):
        assert main(["bench", "serve", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
