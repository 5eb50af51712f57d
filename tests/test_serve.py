"""recbole_ssm.serve (state cache, Recommender) and the ``recommend`` command."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_ssm.cli import main
from recbole_ssm.errors import UsageError
from recbole_ssm.models.base import StepState
from recbole_ssm.quick_start import run
from recbole_ssm.serve import StateCache, from_checkpoint
from tests.conftest import TINY

SMALL = {"hidden_size": 16, "headdim": 8, "d_state": 8, "chunk_size": 8, "num_layers": 2}


def fake_state(nbytes: int) -> StepState:
    layers = [(torch.zeros(nbytes // 4 - 3, dtype=torch.float32),)]
    return StepState(layers, torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_state_cache_keeps_its_byte_bound_and_evicts_the_least_recently_used():
    one = fake_state(400).nbytes()
    cache = StateCache(max_bytes=2 * one + 10)
    cache.put(1, fake_state(400))
    cache.put(2, fake_state(400))
    assert cache.get(1) is not None  # 1 is now the most recently used
    cache.put(3, fake_state(400))
    assert 2 not in cache and 1 in cache and 3 in cache
    assert cache.nbytes == 2 * one <= cache.max_bytes and cache.evictions == 1
    cache.put(3, fake_state(400))  # replacing a user's state does not count it twice
    assert len(cache) == 2 and cache.nbytes == 2 * one
    with pytest.raises(ValueError, match="more than the cache"):
        StateCache(max_bytes=one - 1).put(9, fake_state(400))


def test_state_cache_keeps_its_user_bound_and_forgets_a_discarded_state():
    one = fake_state(400).nbytes()
    cache = StateCache(max_bytes=100 * one, max_users=2)
    for user in ("a", "b", "c"):
        cache.put(user, fake_state(400))
    assert "a" not in cache and len(cache) == 2 and cache.evictions == 1 and cache.nbytes == 2 * one
    cache.discard("b")
    cache.discard("nobody")
    assert len(cache) == 1 and cache.nbytes == one and cache.get("b") is None
    with pytest.raises(ValueError, match="max_users must be positive"):
        StateCache(max_bytes=one, max_users=0)


@pytest.mark.parametrize("regime", ["last", "all"])
def test_user_histories_hold_every_interaction_of_each_user(tiny_data, regime):
    """From RecBole's prefix rows (last) and from the window data set (all): each user's whole
    history, first item included; the reference is the test sample, whose item list holds the
    whole history before the test item when MAX_ITEM_LIST_LENGTH exceeds every history."""
    from recbole.data import data_preparation

    from recbole_ssm import compat
    from recbole_ssm.quick_start import build_config
    from recbole_ssm.regime import create_dataset
    from recbole_ssm.serve import user_histories

    config, _ = build_config("Mamba2Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data,
                                                             "MAX_ITEM_LIST_LENGTH": 1000, "train_targets": regime})
    with compat.quiet_recbole():
        dataset = create_dataset(config)
        test = data_preparation(config, dataset)[2]._dataset.inter_feat
    want = {int(u): np.r_[seq[:n].numpy(), int(t)] for u, seq, n, t in
            zip(test["user_id"], test["item_id_list"], test["item_length"], test["item_id"])}
    got = user_histories(dataset)
    assert set(got) == set(want) and len(want) > 50
    for user, items in want.items():
        assert got[user].tolist() == items.tolist(), user


def _train(model, tiny_data, folder):
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return run(model, "ml-tiny", None, {**TINY, **SMALL, "data_path": tiny_data, "train_targets": "all"})
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def mamba2_checkpoint(tmp_path_factory, tiny_data):
    return _train("Mamba2Rec", tiny_data, tmp_path_factory.mktemp("serve")).saved_model_file


def encoded_scores(rec, history: np.ndarray) -> torch.Tensor:
    model = rec.model
    seq = torch.as_tensor(history[-rec.max_length:]).unsqueeze(0)
    batch = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.tensor([seq.size(1)])})
    with torch.no_grad():
        return model.full_sort_predict(batch)[0]


def test_recommend_steps_the_cached_state_and_matches_encoding_the_whole_history(mamba2_checkpoint):
    rec = from_checkpoint(mamba2_checkpoint)
    tokens = rec.dataset.field2id_token
    # a user whose history leaves room for 3 new items within MAX_ITEM_LIST_LENGTH
    uid = next(u for u, h in sorted(rec.histories.items()) if len(h) <= rec.max_length - 3)
    user = str(tokens[rec.dataset.uid_field][uid])
    items = [str(tokens[rec.dataset.iid_field][i]) for i in (5, 9, 13)]
    before = rec.histories[uid].copy()
    top = rec.recommend_one(user, items[:2], k=5, exclude_seen=False)
    want = encoded_scores(rec, np.concatenate([before, [5, 9]]))
    want[0] = -torch.inf
    best = torch.topk(want, 5).indices.tolist()
    assert [r.item for r in top] == [str(tokens[rec.dataset.iid_field][i]) for i in best]
    np.testing.assert_allclose([r.score for r in top], torch.topk(want, 5).values.numpy(), rtol=1e-4, atol=1e-5)
    assert len(rec.cache) == 1 and int(rec.cache.get(uid).length[0]) == len(before) + 2
    top = rec.recommend_one(user, items[2:], k=5, exclude_seen=False)  # a cache hit: one step
    want = encoded_scores(rec, np.concatenate([before, [5, 9, 13]]))
    np.testing.assert_allclose([r.score for r in top], torch.topk(want, 5).values.numpy(), rtol=1e-4, atol=1e-5)
    seen = rec.recommend_one(user, k=len(rec.dataset.field2id_token[rec.dataset.iid_field]), exclude_seen=True)
    assert not {r.item for r in seen} & {str(tokens[rec.dataset.iid_field][i]) for i in rec.histories[uid]}
    with pytest.raises(UsageError, match="unknown user token 'nobody'"):
        rec.recommend_one("nobody")
    with pytest.raises(UsageError, match="unknown item token 'no-such-item'"):
        rec.recommend_one(user, ["no-such-item"])


def test_recommend_command_end_to_end(mamba2_checkpoint, tmp_path, capsys):
    out = tmp_path / "top.jsonl"
    assert main(["recommend", f"--checkpoint={mamba2_checkpoint}", "--users=1,2", "--items=50", "--k=3",
                 f"--output={out}"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["user"], r["rank"]) for r in rows] == [(u, r) for u in ("1", "2") for r in (1, 2, 3)]
    assert all(set(r) == {"user", "rank", "item", "score"} for r in rows)
    history = tmp_path / "history.tsv"
    history.write_text("-\t50 172 133\n3\t\n4\n")  # no user; a user, no new items (with and without the tab)
    assert main(["recommend", f"--checkpoint={mamba2_checkpoint}", f"--history_file={history}", "--k=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user\trank\titem\tscore"
    assert [line.split("\t")[:2] for line in lines[1:]] == [["-", "1"], ["-", "2"], ["3", "1"], ["3", "2"],
                                                          ["4", "1"], ["4", "2"]]


@pytest.mark.parametrize(("args", "words"), [
    (["--users=1"], "recommend needs --checkpoint=PATH"),
    (["--checkpoint=/nonexistent.pth", "--users=1"], "checkpoint not found: /nonexistent.pth"),
    (["--checkpoint=README", "--users=1"], "is not a checkpoint of a training run"),
    (["--checkpoint=CKPT", "--users=nobody"], "unknown user token 'nobody'"),
    (["--checkpoint=CKPT", "--users=1", "--items=zzz"], "unknown item token 'zzz'"),
    (["--checkpoint=CKPT", "--users=1", "--k=0"], "--k takes a whole number >= 1"),
    (["--checkpoint=CKPT", "--users=1", "--format=xml"], "--format takes one of tsv, jsonl, parquet"),
    (["--checkpoint=CKPT", "--users=1", "--output=top.xls"], "unknown extension '.xls'"),
    (["--checkpoint=CKPT", "--users=1", "--format=parquet"], "--format=parquet needs --output"),
    (["--checkpoint=CKPT", "--users=all", "--items=50"], "with --users=all use --history_file"),
    (["--checkpoint=CKPT", "--users=@/nonexistent"], "cannot read --users=@/nonexistent"),
    (["--checkpoint=CKPT", "--users=1,nobody", "--strict=true"], "unknown user token 'nobody'"),
    (["--checkpoint=CKPT", "--users=1", "--output=/nonexistent/top.tsv"], "folder /nonexistent does not exist"),
    (["--checkpoint=CKPT", "--user=1"], "unknown or malformed option '--user=1'"),
    (["--checkpoint=CKPT"], "recommend needs --users"),
])
def test_recommend_command_errors_are_one_line(mamba2_checkpoint, tmp_path, capsys, args, words):
    (tmp_path / "README").write_text("not a checkpoint\n")
    args = [a.replace("CKPT", mamba2_checkpoint).replace("=README", f"={tmp_path / 'README'}") for a in args]
    assert main(["recommend", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1
