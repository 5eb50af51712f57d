"""eval_filter_seen: the user's whole history before the target leaves the full-sort ranking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_ssm.cli import main
from recbole_ssm.errors import ConfigError, UsageError
from recbole_ssm.seen import SeenItems
from tests.conftest import TINY

FIELDS = ("user_id", "item_id", "item_id_list", "item_length")


def rows_for(sequences: dict, picks: list, max_len: int) -> Interaction:
    """RecBole-style evaluation rows: (user, target at position p, the max_len items before it)."""
    users, targets, lists, lengths = [], [], [], []
    for user, p in picks:
        seq = sequences[user]
        before = seq[max(0, p - max_len): p]
        row = np.zeros(max_len, dtype=np.int64)
        row[: len(before)] = before
        users.append(user), targets.append(seq[p]), lists.append(row), lengths.append(len(before))
    return Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(targets),
                        "item_id_list": torch.tensor(np.array(lists)), "item_length": torch.tensor(lengths)})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_is_every_distinct_item_before_the_target(seed):
    """Random sequences with repeated items (a small vocabulary), odd lengths, targets before and
    beyond the item list's reach: the mask is exactly set(sequence[:p]) for each row."""
    rng = np.random.default_rng(seed)
    sequences = {u: rng.integers(1, 12, size=int(rng.integers(3, 60))) for u in range(1, 30)}
    picks = [(u, int(rng.integers(1, len(s)))) for u, s in sequences.items() for _ in range(3)]
    batch = rows_for(sequences, picks, max_len=7)
    rows, items = SeenItems(sequences).mask(batch, *FIELDS)
    got = [set() for _ in picks]
    for r, i in zip(rows.tolist(), items.tolist()):
        assert i not in got[r], "an item masked twice in a row"
        got[r].add(i)
    want = [set(sequences[u][:p].tolist()) for u, p in picks]
    assert got == want


def test_a_row_that_is_not_in_the_users_sequence_is_an_error():
    seen = SeenItems({1: np.array([3, 4, 5, 6])})
    with pytest.raises(ValueError, match="not in the user's sequence"):
        seen.mask(rows_for({1: np.array([3, 9, 5, 6])}, [(1, 3)], max_len=5), *FIELDS)


def _config_and_loaders(tiny_data, regime: str, max_len: int, filter_seen: bool):
    from recbole_ssm.checkpoint import load_data
    from recbole_ssm.quick_start import build_config

    config, model_class = build_config("Mamba2Rec", "ml-tiny", None, {
        **TINY, "data_path": tiny_data, "headdim": 16, "MAX_ITEM_LIST_LENGTH": max_len, "train_targets": regime,
        "eval_filter_seen": filter_seen})
    _dataset, *loaders = load_data(config)
    return config, model_class, tuple(loaders)


@pytest.mark.parametrize("regime", ["last", "all"])
def test_full_sort_scores_of_the_whole_history_are_minus_infinity(tiny_data, regime):
    """With MAX_ITEM_LIST_LENGTH=10, far shorter than the histories, every item of the user's whole
    history before the test target (read from a 1000-long item list) scores minus infinity, and
    nothing else does but the padding id; with the setting off, only the padding id."""
    from recbole_ssm.trainer import get_trainer

    _, _, (_, _, whole) = _config_and_loaders(tiny_data, regime, 1000, False)
    feat = whole._dataset.inter_feat
    history = {int(u): set(seq[:n].tolist()) for u, seq, n in zip(feat["user_id"], feat["item_id_list"],
                                                                   feat["item_length"])}
    assert max(len(h) for h in history.values()) > 100
    for filter_seen in (True, False):
        config, model_class, (train, _, test) = _config_and_loaders(tiny_data, regime, 10, filter_seen)
        config["eval_score_chunks"] = False  # the (B, n) scores (the chunked path: tests/test_eval_chunks.py)
        model = model_class(config, train._dataset).eval()
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        trainer._seen, trainer.tot_item_num = getattr(test, "seen_items", None), test._dataset.item_num
        checked = 0
        for batch in test:
            with torch.no_grad():
                interaction, scores, _, _ = trainer._full_sort_batch_eval(batch)
            for r, user in enumerate(interaction["user_id"].tolist()):
                masked = set(torch.nonzero(torch.isinf(scores[r])).flatten().tolist())
                assert masked == ((history[user] | {0}) if filter_seen else {0}), user
                checked += 1
        assert checked == len(history)


def test_filter_seen_needs_full_sort_evaluation(tiny_data):
    from recbole_ssm.quick_start import build_config

    with pytest.raises(ConfigError, match="eval_filter_seen=True needs full-sort evaluation"):
        build_config("Mamba2Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data, "eval_filter_seen": True,
                                                    "eval_args": {"mode": "uni100"}})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_data):
    import os

    from recbole_ssm.quick_start import run

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("seen"))
    try:
        out = run("Mamba2Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data, "headdim": 16, "train_targets": "all"})
    finally:
        os.chdir(cwd)
    return out.saved_model_file, dict(out.result["test_result"])


def test_evaluate_command_reproduces_the_run_and_filters_on_request(checkpoint, capsys):
    path, test_result = checkpoint
    assert main(["evaluate", f"--checkpoint={path}", "--split=test", "--format=json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["eval_filter_seen"] is False and plain["test"] == pytest.approx(test_result, abs=0)
    assert main(["evaluate", f"--checkpoint={path}", "--eval_filter_seen"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "eval_filter_seen=True" in lines[0] and [line.split()[0] for line in lines[1:]] == ["valid", "test"]
    # ml-100k has no repeated ratings, so no target is ever filtered: every metric can only rise
    filtered = {k: float(v) for k, v in (kv.split("=") for kv in lines[2].split()[1:])}
    assert all(filtered[k] >= test_result[k] - 5e-5 for k in test_result)
    assert sum(filtered.values()) > sum(test_result.values())


def test_evaluate_ranks_profile_agrees_with_recboles_metrics_under_both_protocols(checkpoint, capsys):
    """--ranks: Hit@10 and NDCG@10 computed from the targets' ranks equal RecBole's metrics under its
    ranking and with the history left out; every target is counted once; the probabilities are
    probabilities."""
    path, _ = checkpoint
    got = {}
    for flag in ("false", "true"):
        assert main(["evaluate", f"--checkpoint={path}", "--split=test", "--ranks=20", "--format=json",
                     f"--eval_filter_seen={flag}"]) == 0
        got[flag] = json.loads(capsys.readouterr().out)
    profile = got["false"]["test_ranks"]
    assert got["true"]["test_ranks"] == profile  # the profile does not depend on the run's protocol
    for protocol, flag in (("all", "false"), ("seen_out", "true")):
        part = profile[protocol]
        assert len(part["hist"]) == 20 and sum(part["hist"]) + part["past"] == profile["rows"] > 0
        assert part["hit@10"] == pytest.approx(sum(part["hist"][:10]) / profile["rows"])
        assert part["hit@10"] == pytest.approx(got[flag]["test"]["hit@10"], abs=5e-5)
        assert part["ndcg@10"] == pytest.approx(got[flag]["test"]["ndcg@10"], abs=5e-5)
    # leaving items out only lifts a target's rank (ml-100k repeats no item in a user's history)
    cumulative = {p: [sum(profile[p]["hist"][:k]) for k in range(1, 21)] for p in ("all", "seen_out")}
    assert all(a <= b for a, b in zip(cumulative["all"], cumulative["seen_out"]))
    assert cumulative["all"][-1] < cumulative["seen_out"][-1]
    assert 0 < profile["top10_in_history"] < 1 and 0 < profile["p_target"] < profile["p_top"] < 1
    assert 0 < profile["entropy"] < math.log(2000)
    assert main(["evaluate", f"--checkpoint={path}", "--split=test", "--ranks=10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("test  ranks, RecBole's ranking: 1=") and "6-10=" in lines[2]
    assert lines[3].startswith("test  ranks, history left out: 1=") and lines[4].startswith("test  scores: ")


def test_only_evaluation_settings_change_for_a_checkpoint(checkpoint):
    from recbole_ssm.checkpoint import load_data_and_model

    with pytest.raises(UsageError, match="learning_rate cannot change for a trained model"):
        load_data_and_model(checkpoint[0], {"learning_rate": 0.1})


@pytest.mark.parametrize(("args", "words"), [
    ([], "evaluate needs --checkpoint=PATH"),
    (["--checkpoint=/nonexistent.pth"], "checkpoint not found: /nonexistent.pth"),
    (["--checkpoint=CKPT", "--split=train"], "--split takes one of test, valid, both"),
    (["--checkpoint=CKPT", "--eval_filter_seen=maybe"], "--eval_filter_seen"),
    (["--checkpoint=CKPT", "--k=3"], "unknown or malformed option '--k=3'"),
])
def test_evaluate_command_errors_are_one_line(checkpoint, capsys, args, words):
    args = [a.replace("CKPT", checkpoint[0]) for a in args]
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1


def test_evaluate_by_history_groups_users_by_their_whole_history_before_the_target(checkpoint, tiny_data, capsys):
    """--by_history: the groups hold the users whose history before the test target (counted in the
    file after the 5-core filter of overall.yaml: all of a user's ratings but the last) falls in each
    range, and each group's metrics are RecBole's on its rows alone, so their row-weighted mean is
    the whole split's."""
    import collections
    import os

    path, test_result = checkpoint
    with open(os.path.join(tiny_data, "ml-tiny", "ml-tiny.inter"), encoding="utf-8") as f:
        pairs = [tuple(line.split("\t")[:2]) for line in f.read().splitlines()[1:]]
    while True:  # users and items with fewer than 5 ratings go, until none is left
        users = collections.Counter(u for u, _ in pairs)
        items = collections.Counter(i for _, i in pairs)
        kept = [(u, i) for u, i in pairs if users[u] >= 5 and items[i] >= 5]
        if len(kept) == len(pairs):
            break
        pairs = kept
    before = sorted(n - 1 for n in users.values())
    cuts = [before[len(before) // 3], before[2 * len(before) // 3]]  # three groups of about 40 users
    assert main(["evaluate", f"--checkpoint={path}", "--split=test", "--format=json",
                 f"--by_history={cuts[1]},{cuts[0]}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test"] == pytest.approx(test_result, abs=0)
    groups = out["test_by_history"]
    assert [g["history"] for g in groups] == [f"1-{cuts[0]}", f"{cuts[0] + 1}-{cuts[1]}", f"{cuts[1] + 1}+"]
    expected = [sum(n <= cuts[0] for n in before), sum(cuts[0] < n <= cuts[1] for n in before),
                sum(n > cuts[1] for n in before)]
    assert [g["rows"] for g in groups] == expected and min(expected) > 10
    for metric, value in test_result.items():
        mean = sum(g["rows"] * g[metric] for g in groups) / sum(expected)
        assert mean == pytest.approx(value, abs=1.5e-4), metric
    assert len({g["ndcg@10"] for g in groups}) > 1  # the groups are scored apart

    assert main(["evaluate", f"--checkpoint={path}", "--split=valid", f"--by_history={before[-1]}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith(f"history=1-{before[-1]} rows={len(before)}") and lines[3].endswith(
        f"history={before[-1] + 1}+ rows=0")
    assert main(["evaluate", f"--checkpoint={path}", "--by_history=0"]) == 2
    assert "--by_history" in capsys.readouterr().err
