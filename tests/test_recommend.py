"""Batched recommendations: chunked top-k against the dense formula, ``recommend --users=all``
against the one-user-at-a-time path, output formats, atomic output, the Python API."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from recbole_ssm.cli import main
from recbole_ssm.errors import UsageError
from recbole_ssm.quick_start import run
from recbole_ssm.scoring import chunked_topk, dense_topk, seen_pairs
from recbole_ssm.serve import Recommender, from_checkpoint
from tests.conftest import TINY

SMALL = {"hidden_size": 16, "headdim": 8, "d_state": 8, "chunk_size": 8, "num_layers": 2}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_topk_equals_the_dense_top_k_with_exclusions(seed):
    gen = torch.Generator().manual_seed(seed + int.from_bytes(os.urandom(2), "little"))
    batch, n, d = 7, 103, 5
    hidden = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    weight = torch.randn(n, d, generator=gen, dtype=torch.float64)
    histories = [torch.randint(1, n, (int(torch.randint(0, 30, (1,), generator=gen)),), generator=gen).numpy()
                 for _ in range(batch)]
    exclude = seen_pairs(histories)
    for k in (1, 10, 60):
        want = dense_topk(hidden @ weight.t(), k, exclude)
        for chunk in (1, 9, 50, 103, 500):
            got = chunked_topk(hidden, weight, k, exclude, chunk=chunk)
            assert torch.equal(got.indices, want.indices), (k, chunk)
            torch.testing.assert_close(got.values, want.values, rtol=1e-12, atol=1e-12)  # matmul blocking: ulps
    got = chunked_topk(hidden, weight, n + 5, chunk=17)  # more than the catalogue: every item, padding last
    assert got.values.shape == (batch, n) and (got.indices[:, -1] == 0).all() and torch.isinf(got.values[:, -1]).all()


def _train(model, tiny_data, folder, **extra):
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return run(model, "ml-tiny", None, {**TINY, **SMALL, "data_path": tiny_data, **extra})
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module", params=["Mamba2Rec", "SASRec"])
def checkpoint(request, tmp_path_factory, tiny_data):
    """A stepwise SSM and a model that re-encodes the history."""
    out = _train(request.param, tiny_data, tmp_path_factory.mktemp("rec"), train_targets="all")
    return out.saved_model_file


def test_a_run_names_its_checkpoint_after_the_model_and_data_set_and_returns_it(tiny_data, tmp_path, capsys):
    assert main(["--model=GRU4Rec", "--dataset=ml-tiny", f"--data_path={tiny_data}", "--epochs=1",
                 "--hidden_size=8", "--embedding_size=8", "--MAX_ITEM_LIST_LENGTH=20", "--state=WARNING",
                 "--train_targets=all", "--show_progress=False"]) == 0
    out = capsys.readouterr().out
    saved = [line for line in out.splitlines() if line.startswith("saved ")]
    path = saved[0].split(" ", 1)[1]
    assert os.path.isfile(path) and os.path.basename(path).startswith("GRU4Rec-ml-tiny-") and path.endswith(".pth")
    assert f"recommend --checkpoint={path} --users=all" in out
    result = _train("GRU4Rec", tiny_data, tmp_path, embedding_size=16).result
    assert os.path.isfile(result["checkpoint"]) and "GRU4Rec-ml-tiny-" in result["checkpoint"]


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_batched_recommendations_equal_one_user_at_a_time(checkpoint, exclude_seen):
    """50 random users: the same items in the same order, scores within 1e-5 (batches of 7 users)."""
    batched, single = from_checkpoint(checkpoint), from_checkpoint(checkpoint)
    tokens = single.dataset.field2id_token[single.dataset.uid_field]
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    users = [str(tokens[u]) for u in rng.choice(single.all_users(), size=50, replace=False)]
    batched.batch_size = 7
    frame = batched.recommend(users, k=10, exclude_seen=exclude_seen)
    assert frame["user"].tolist() == [u for u in users for _ in range(10)]
    for user in users:
        want = single.recommend_one(user, k=10, exclude_seen=exclude_seen)
        got = frame[frame["user"] == user]
        assert got["item"].tolist() == [r.item for r in want], user
        assert got["rank"].tolist() == list(range(1, 11))
        np.testing.assert_allclose(got["score"].to_numpy(), [r.score for r in want], rtol=0, atol=1e-5)


def test_excluded_items_are_the_users_whole_history(checkpoint):
    rec = from_checkpoint(checkpoint)
    n_items = len(rec.dataset.field2id_token[rec.dataset.iid_field])
    uid = max(rec.histories, key=lambda u: len(rec.histories[u]))  # longer than MAX_ITEM_LIST_LENGTH
    assert len(rec.histories[uid]) > rec.max_length
    user = rec.user_token(uid)
    every = rec.recommend([user], k=n_items, exclude_seen=True)
    seen = {str(rec.dataset.field2id_token[rec.dataset.iid_field][i]) for i in rec.histories[uid]}
    assert not set(every["item"]) & seen
    assert len(every) == n_items - 1 - len(seen)  # every other item, the padding item never
    assert len(rec.recommend([user], k=n_items, exclude_seen=False)) == n_items - 1


def test_users_all_gives_k_rows_for_every_user(checkpoint, tmp_path):
    out = tmp_path / "all.tsv"
    assert main(["recommend", f"--checkpoint={checkpoint}", "--users=all", "--k=4", "--batch_size=16",
                 f"--output={out}"]) == 0
    header, *lines = out.read_text().splitlines()
    assert header == "user\trank\titem\tscore"
    rows = [line.split("\t") for line in lines]
    rec = from_checkpoint(checkpoint)
    users = [rec.user_token(u) for u in rec.all_users()]
    assert len(users) == 120
    assert [(r[0], r[1]) for r in rows] == [(u, str(rank)) for u in users for rank in range(1, 5)]
    for u in range(len(users)):  # each block best first
        scores = [float(r[3]) for r in rows[4 * u: 4 * u + 4]]
        assert scores == sorted(scores, reverse=True)
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o600)  # an ordinary file, not mkstemp's


def test_parquet_and_jsonl_hold_the_same_rows_as_tsv(checkpoint, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    for ext in ("tsv", "jsonl", "parquet"):
        assert main(["recommend", f"--checkpoint={checkpoint}", "--users=@" + str(_users_file(tmp_path)),
                     "--k=3", f"--output={tmp_path / ('top.' + ext)}"]) == 0
    tsv = [line.split("\t") for line in (tmp_path / "top.tsv").read_text().splitlines()[1:]]
    jsonl = [json.loads(line) for line in (tmp_path / "top.jsonl").read_text().splitlines()]
    table = pq.read_table(tmp_path / "top.parquet").to_pylist()
    assert [r[:3] for r in tsv] == [[r["user"], str(r["rank"]), r["item"]] for r in jsonl]
    assert [r[:3] for r in tsv] == [[r["user"], str(r["rank"]), r["item"]] for r in table]
    assert [r[0] for r in tsv] == ["7", "7", "7", "3", "3", "3"]
    np.testing.assert_allclose([float(r[3]) for r in tsv], [r["score"] for r in table], atol=1e-6)


def _users_file(folder):
    path = folder / "users.txt"
    path.write_text("7\n\n3\n")
    return path


def test_an_interrupted_export_leaves_no_partial_file(checkpoint, tmp_path, monkeypatch):
    from recbole_ssm import recommend

    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "all.tsv"
    out.write_text("the previous export\n")
    calls = []

    def broken(self, cols):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, cols)

    original = recommend.Writer.write
    monkeypatch.setattr(recommend.Writer, "write", broken)
    with pytest.raises(KeyboardInterrupt):
        recommend.main([f"--checkpoint={checkpoint}", "--users=all", "--batch_size=10", f"--output={out}"])
    assert len(calls) == 2
    assert out.read_text() == "the previous export\n"
    assert sorted(os.listdir(tmp_path / "out")) == ["all.tsv"]  # no temp file left behind


def test_unknown_users_are_named_in_one_warning_and_skipped(checkpoint, capsys):
    assert main(["recommend", f"--checkpoint={checkpoint}", "--users=5,nobody,6,ghost", "--k=1"]) == 0
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()[1:]] == ["5", "6"]
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'nobody', 'ghost'" in warnings[0] and "--strict=true" in warnings[0]


def test_python_api_recommends_and_observes(checkpoint):
    rec = Recommender.from_checkpoint(checkpoint)
    frame = rec.recommend(["3", "8"], k=5)
    assert list(frame.columns) == ["user", "rank", "item", "score"] and len(frame) == 10
    with pytest.raises(UsageError, match="unknown user token 'nobody'"):
        rec.recommend(["3", "nobody"], strict=True)
    new = [str(t) for t in frame[frame["user"] == "3"]["item"][:2]]
    before = len(rec.histories[rec.user_id("3")])
    assert rec.observe("3", new) == before + 2
    after = rec.recommend("3", k=5)
    assert not set(after["item"]) & set(new)  # now seen
    fresh = from_checkpoint(checkpoint)
    want = fresh.recommend_one("3", new, k=5)
    assert after["item"].tolist() == [r.item for r in want]


def test_bench_recommend_times_both_paths_and_exports_a_synthetic_catalogue(checkpoint, tmp_path, capsys):
    assert main(["bench", "recommend", f"--checkpoint={checkpoint}", "--sample=5", "--k=3"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["users"] == 120 and record["sample"] == 5 and record["rows"] == 360
    assert record["one_at_a_time_ms_per_user"] > 0 and record["batched_ms_per_user"] > 0
    assert record["command"].endswith("bench recommend --checkpoint=" + checkpoint + " --sample=5 --k=3")
    assert " CPU cores, " in record["machine"] and "torch " in record["machine"]
    out = tmp_path / "syn.jsonl"
    assert main(["bench", "recommend", "--synthetic", "--users=50", "--items=300", "--k=4", f"--output={out}"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 200 and {r["user"] for r in rows} == {f"u{i}" for i in range(1, 51)}
