"""train_targets: cloze — Hydra4Rec trained on masked windows, read at an appended mask token."""

from __future__ import annotations

import collections

import pytest
import torch

from recbole_ssm.quick_start import build_config
from recbole_ssm.regime import NEG_TARGETS, TARGETS, ClozeDataLoader, cut_windows, training_histories
from tests.conftest import TINY
from tests.test_models import backward_rows

SMALL = {"hidden_size": 16, "headdim": 8, "d_state": 8, "chunk_size": 4}
CLOZE = {"train_targets": "cloze", "MAX_ITEM_LIST_LENGTH": 7}


@pytest.fixture(scope="module")
def cloze_data(tiny_data):
    """ml-tiny with windows of 7 inputs (8 items under cloze): most users span several windows."""
    from recbole.data import create_dataset, data_preparation

    from recbole_ssm import compat

    config, _ = build_config("Hydra4Rec", "ml-tiny", None, {**TINY, **CLOZE, "data_path": tiny_data,
                                                             "mask_ratio": 0.3})
    with compat.quiet_recbole():
        dataset = create_dataset(config)
        train, _valid, _test = data_preparation(config, dataset)
    return config, train._dataset


def make_cloze(dataset, tiny_data, **over):
    config, cls = build_config("Hydra4Rec", "ml-tiny", None, {**TINY, **SMALL, **CLOZE, "data_path": tiny_data,
                                                               **over})
    torch.manual_seed(4)
    return cls(config, dataset)


@pytest.mark.parametrize("positions", [None, 8, 40])
def test_cloze_loader_masks_pieces_of_each_history_and_targets_only_the_masked_items(positions, cloze_data):
    config, train = cloze_data
    torch.manual_seed(0)
    config["train_window_positions"] = positions
    try:
        loader = ClozeDataLoader(config, train, shuffle=True)
        batches = list(loader)
    finally:
        config["train_window_positions"] = None
    if positions:  # batches by length: the budget covers the appended target too
        assert all(b["item_id_list"].numel() <= positions for b in batches)
    mask_id = train.item_num
    assert loader.mask_id == mask_id
    items, offsets, users = training_histories(train)
    history = {int(u): items[offsets[i]: offsets[i + 1]].tolist() for i, u in enumerate(users)}
    windows, masked_total, real_total = collections.Counter(), 0, 0
    covered = collections.defaultdict(set)
    for batch in batches:
        seq, n, tgt = batch["item_id_list"], batch["item_length"], batch[TARGETS]
        assert seq.size(1) == int(n.max()) <= 8  # MAX_ITEM_LIST_LENGTH inputs and the last target
        for row in range(len(n)):
            k, user = int(n[row]), int(batch["user_id"][row])
            assert (seq[row, k:] == 0).all() and (tgt[row, k:] == 0).all()
            masked = seq[row, :k] == mask_id
            assert masked.any()  # at least one target in every window
            assert (tgt[row, :k][masked] > 0).all() and (tgt[row, :k][~masked] == 0).all()
            original = torch.where(masked, tgt[row, :k], seq[row, :k]).tolist()
            h = history[user]
            starts = [s for s in range(len(h) - k + 1) if h[s: s + k] == original]
            assert starts, "a window is not a piece of its user's history"
            covered[user].update(range(starts[-1], starts[-1] + k))
            windows[user] += 1
            masked_total += int(masked.sum())
            real_total += k
    sizes = torch.tensor([len(h) for h in history.values()])
    _hist, _start, per_window, _context = cut_windows(sizes, 7)
    assert sum(windows.values()) == len(per_window)
    assert all(covered[u] == set(range(len(h))) for u, h in history.items() if len(h) > 1)  # every item can be masked
    assert real_total > 2000 and abs(masked_total / real_total - 0.3) < 0.05


def test_cloze_loader_draws_new_masks_each_epoch_and_bpr_negatives_only_at_targets(cloze_data):
    config, train = cloze_data
    config["loss_type"] = "BPR"
    try:
        loader = ClozeDataLoader(config, train, shuffle=False)
        first, second = next(iter(loader)), next(iter(loader))
    finally:
        config["loss_type"] = "CE"
    assert not torch.equal(first["item_id_list"], second["item_id_list"])
    real = first[TARGETS] > 0
    neg = first[NEG_TARGETS]
    assert (neg[real] != first[TARGETS][real]).all() and (neg[real] >= 1).all() and (neg[~real] == 0).all()


@pytest.mark.parametrize("seed", [31, 32])
def test_cloze_hydra_predicts_from_a_mask_token_after_the_history_whatever_the_padding(cloze_data, tiny_data, seed):
    _config, train = cloze_data
    model = make_cloze(train, tiny_data, trim_padding=False, num_layers=2, dropout_prob=0.0).double().eval()
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 7, (5,), generator=g)
    lens[0] = 7
    seq = torch.randint(1, train.item_num, (5, 7), generator=g)
    seq[torch.arange(7).unsqueeze(0) >= lens.unsqueeze(1)] = 0
    with torch.no_grad():
        read = model(seq, lens)
        # reference: the whole masked sequence encoded, read at the mask token
        ref_seq = torch.zeros(5, 8, dtype=torch.long)
        for r in range(5):
            ref_seq[r, : lens[r]] = seq[r, : lens[r]]
            ref_seq[r, lens[r]] = model.mask_id
        ref = model.encode(ref_seq, lens + 1)[torch.arange(5), lens]
        longer = torch.cat([seq, torch.zeros(5, 9, dtype=torch.long)], dim=1)
        junk = longer.clone()
        pad = torch.arange(16).unsqueeze(0) >= lens.unsqueeze(1)
        junk[pad] = torch.randint(1, train.item_num, (int(pad.sum()),), generator=g)
        scores = model.full_sort_predict({"item_id_list": seq, "item_length": lens})
    torch.testing.assert_close(read, ref)
    torch.testing.assert_close(model(longer, lens), read)
    torch.testing.assert_close(model(junk, lens), read)
    assert scores.shape == (5, train.item_num)  # the mask token is never scored


def test_cloze_loss_is_cross_entropy_at_the_masked_positions_and_trains_the_backward_scan(cloze_data, tiny_data):
    """Even with one layer, the cloze loss reaches the backward direction (masked items in the middle
    of a window read the items after them), unlike the last-position loss."""
    from recbole.data.interaction import Interaction

    config, train = cloze_data
    model = make_cloze(train, tiny_data, dropout_prob=0.0, num_layers=1).double().train()
    batch = next(iter(ClozeDataLoader(config, train)))
    loss = model.calculate_loss(batch)
    loss.backward()
    seq, n, tgt = batch["item_id_list"], batch["item_length"], batch[TARGETS]
    with torch.no_grad():
        hidden = model.encode(seq, n)
        real = tgt[:, : hidden.size(1)] > 0
        logits = hidden[real] @ model.item_embedding.weight.t()
        ref = torch.nn.functional.cross_entropy(logits, tgt[:, : hidden.size(1)][real])
    torch.testing.assert_close(loss.detach(), ref)
    assert model.mask_embedding.weight.grad.abs().max() > 0
    mixer = model.layers[0].mixer
    for name, rows in backward_rows(mixer).items():
        assert mixer.in_proj.weight.grad[rows].abs().max() > 0, f"no gradient reaches the backward {name}"
    # the same model trained on the next item at the last position: the backward rows get exactly 0
    model.zero_grad()
    last = Interaction({"item_id_list": torch.where(seq == model.mask_id, 1, seq), "item_length": n,
                        "item_id": torch.ones(len(n), dtype=torch.long)})
    model.cloze = False
    try:
        model.calculate_loss(last).backward()
    finally:
        model.cloze = True
    for rows in backward_rows(mixer).values():
        grad = mixer.in_proj.weight.grad[rows]
        assert grad.abs().max() == 0


def test_a_cloze_run_trains_and_its_checkpoint_reproduces_the_test_metrics(tiny_config):
    from recbole_ssm.checkpoint import evaluate_checkpoint
    from recbole_ssm.quick_start import run

    out = run("Hydra4Rec", "ml-tiny", None, {**tiny_config, **SMALL, "train_targets": "cloze", "epochs": 2})
    assert out.config["train_targets"] == "cloze" and out.model.cloze
    assert out.result["best_valid_result"]["hit@10"] > 0
    again = evaluate_checkpoint(out.saved_model_file, "test")
    assert {k: float(v) for k, v in again.items()} == {k: float(v) for k, v in out.result["test_result"].items()}


# ---------------------------------------------------------------------------------------
# BERT4Rec: RecBole's model under `last`, trained on the same masked windows under `cloze`

BERT_SMALL = {"hidden_size": 16, "inner_size": 32, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.0,
              "attn_dropout_prob": 0.0}


def make_bert(dataset, tiny_data, train_targets="cloze"):
    config, cls = build_config("BERT4Rec", "ml-tiny", None, {**TINY, **BERT_SMALL, **CLOZE, "data_path": tiny_data,
                                                              "train_targets": train_targets})
    torch.manual_seed(6)
    return cls(config, dataset)


def fitted(items: list[int], length: int) -> tuple[torch.Tensor, int]:
    """One row as BERT4Rec reads it: the newest ``length`` items, right-padded to ``length``."""
    kept = items[-length:]
    row = torch.zeros(1, length, dtype=torch.long)
    row[0, : len(kept)] = torch.tensor(kept)
    return row, len(kept)


def test_bert4rec_is_recboles_model_under_last(cloze_data, tiny_data):
    import recbole.model.sequential_recommender as rs

    _config, train = cloze_data
    ours = make_bert(train, tiny_data, "last").eval()
    assert type(ours).__mro__[1] is rs.BERT4Rec and not ours.cloze
    config, _ = build_config("BERT4Rec", "ml-tiny", None, {**TINY, **BERT_SMALL, **CLOZE, "data_path": tiny_data})
    theirs = rs.BERT4Rec(config, train).eval()
    theirs.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(41)
    lens = torch.tensor([7, 1, 4, 6])
    seq = torch.randint(1, train.item_num, (4, 7), generator=g)
    seq[torch.arange(7).unsqueeze(0) >= lens.unsqueeze(1)] = 0
    batch = {"item_id_list": seq, "item_length": lens}
    with torch.no_grad():
        torch.testing.assert_close(ours.full_sort_predict(batch), theirs.full_sort_predict(batch), rtol=0, atol=0)


def test_cloze_bert4rec_loss_is_cross_entropy_at_the_masked_positions_of_each_fitted_window(cloze_data, tiny_data):
    """Reference: each window on its own, cut to the position embedding's 7 rows by hand (a full
    window of 7 inputs and its target drops its oldest item), CE at its masked positions (float64)."""
    config, train = cloze_data
    model = make_bert(train, tiny_data).double().eval()
    torch.manual_seed(2)
    batch = next(iter(ClozeDataLoader(config, train)))
    seq, n, tgt = batch["item_id_list"], batch["item_length"], batch[TARGETS]
    assert int(n.max()) == 8  # some windows are longer than the position embedding
    loss = model.calculate_loss(batch)
    logits, targets = [], []
    with torch.no_grad():
        for r in range(len(n)):
            k = int(n[r])
            row, m = fitted(seq[r, :k].tolist(), 7)
            want, _ = fitted(tgt[r, :k].tolist(), 7)
            hidden = model.forward(row)[0, :m]
            at = want[0, :m] > 0
            logits.append(hidden[at] @ model.item_embedding.weight[: model.n_items].t() + model.output_bias)
            targets.append(want[0, :m][at])
        ref = torch.nn.functional.cross_entropy(torch.cat(logits), torch.cat(targets))
    torch.testing.assert_close(loss.detach(), ref)


def test_cloze_bert4rec_reads_a_mask_token_after_the_history(cloze_data, tiny_data):
    _config, train = cloze_data
    model = make_bert(train, tiny_data).double().eval()
    g = torch.Generator().manual_seed(43)
    lens = torch.tensor([7, 1, 3, 6, 7])
    seq = torch.randint(1, train.item_num, (5, 7), generator=g)
    seq[torch.arange(7).unsqueeze(0) >= lens.unsqueeze(1)] = 0
    with torch.no_grad():
        scores = model.full_sort_predict({"item_id_list": seq, "item_length": lens})
        for r in range(5):
            k = int(lens[r])
            row, m = fitted(seq[r, :k].tolist() + [model.mask_token], 7)
            want = model.forward(row)[0, m - 1] @ model.item_embedding.weight[: model.n_items].t() + model.output_bias
            torch.testing.assert_close(scores[r], want)
        one = model.predict({"item_id_list": seq, "item_length": lens, "item_id": torch.arange(1, 6)})
    torch.testing.assert_close(one, scores[torch.arange(5), torch.arange(1, 6)])


def test_a_cloze_bert4rec_run_trains_and_reproduces_its_test_metrics(tiny_config):
    from recbole_ssm.checkpoint import evaluate_checkpoint
    from recbole_ssm.quick_start import run

    out = run("BERT4Rec", "ml-tiny", None, {**tiny_config, **BERT_SMALL, "train_targets": "cloze", "epochs": 2})
    assert out.model.cloze and out.result["best_valid_result"]["hit@10"] > 0
    again = evaluate_checkpoint(out.saved_model_file, "test")
    assert {k: float(v) for k, v in again.items()} == {k: float(v) for k, v in out.result["test_result"].items()}
