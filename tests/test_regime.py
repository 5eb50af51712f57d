"""train_targets: all — windows, the memory-bounded CE, and parity with the prefix regime."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from recbole_ssm.cli import main
from recbole_ssm.errors import ConfigError
from recbole_ssm.ops.cross_entropy import chunk_rows, linear_cross_entropy, linear_cross_entropy_ref
from recbole_ssm.quick_start import build_config
from recbole_ssm.regime import (
    NEG_TARGETS,
    TARGETS,
    AllPositionsDataLoader,
    cut_windows,
    length_batches,
    training_histories,
)
from tests.conftest import TINY, models_where, trains_causally

CAUSAL = models_where(trains_causally)  # GRU4Rec, Mamba2Rec, Mamba4Rec, RecMamba, SASRec
NO_DROPOUT = {"dropout_prob": 0.0, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}
SMALL = {"hidden_size": 16, "embedding_size": 16, "inner_size": 32, "headdim": 8, "d_state": 8, "chunk_size": 4}


# ---------------------------------------------------------------------------------------
# the memory-bounded cross-entropy


@pytest.mark.parametrize("seed,P,n,d,budget", [(1, 37, 29, 5, 1e9), (2, 101, 53, 7, 3 * 53 * 8 / 2**20),
                                                (3, 64, 17, 16, 1 * 17 * 8 / 2**20), (4, 1, 3, 2, 1e-9)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.37])
def test_linear_cross_entropy_matches_reference_with_gradients(seed, P, n, d, budget, reduction, smoothing):
    g = torch.Generator().manual_seed(seed * 7 + int(smoothing * 100))
    h = torch.randn(P, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, n, (P,), generator=g)
    assert_chunked_ce_is_the_reference(h, w, t, reduction, budget, g, label_smoothing=smoothing)


def assert_chunked_ce_is_the_reference(h, w, t, reduction, budget, g, **options):
    """linear_cross_entropy's loss and gradients (under a non-unit upstream gradient) equal its
    reference's, in float64; returns the chunked loss."""
    up = torch.rand((), generator=g, dtype=torch.float64) + 0.5
    ref = linear_cross_entropy_ref(h, w, t, reduction, **options)
    dh_ref, dw_ref = torch.autograd.grad(ref * up, (h, w))
    out = linear_cross_entropy(h, w, t, reduction, budget_mib=budget, **options)
    dh, dw = torch.autograd.grad(out * up, (h, w))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dh, dh_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-12, atol=1e-12)
    return out.detach()


@pytest.mark.parametrize("seed", [8, 9])
def test_linear_cross_entropy_is_stable_for_logits_far_beyond_exp_range(seed):
    # float32 exp overflows above about 88: logits of a few hundred need the max subtracted first
    g = torch.Generator().manual_seed(seed)
    h64 = (torch.randn(41, 6, generator=g, dtype=torch.float64) * 40).requires_grad_()
    w64 = (torch.randn(23, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randint(0, 23, (41,), generator=g)
    assert (h64 @ w64.t()).abs().max() > 200
    ref = linear_cross_entropy_ref(h64, w64, t, "sum")
    dh_ref, dw_ref = torch.autograd.grad(ref, (h64, w64))
    h32, w32 = h64.detach().float().requires_grad_(), w64.detach().float().requires_grad_()
    out = linear_cross_entropy(h32, w32, t, "sum", budget_mib=7 * 23 * 4 / 2**20)
    dh, dw = torch.autograd.grad(out, (h32, w32))
    assert torch.isfinite(out) and torch.isfinite(dh).all() and torch.isfinite(dw).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dh.double(), dh_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dw.double(), dw_ref, rtol=1e-4, atol=1e-3)


def test_linear_cross_entropy_chunks_to_the_budget():
    assert chunk_rows(1000, 1.0, 4) == 2**20 // 4000
    assert chunk_rows(10**9, 1.0, 4) == 1  # never zero rows
    h, w = torch.randn(5, 3), torch.randn(4, 3)
    with torch.no_grad():  # scoring only: same value, no gradient work needed
        torch.testing.assert_close(linear_cross_entropy(h, w, torch.tensor([0, 1, 2, 3, 0]), budget_mib=1e-9),
                                   linear_cross_entropy_ref(h, w, torch.tensor([0, 1, 2, 3, 0])))


# ---------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize("seed", [5, 6, 7])
@pytest.mark.parametrize("max_len", [1, 3, 8])
def test_windows_cover_every_target_once_newest_window_full(seed, max_len):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 40, (23,), generator=g)
    history, start, size, context = cut_windows(lengths, max_len)
    assert (size >= 1).all() and (size <= max_len).all() and (context == 0).all()
    for u, n in enumerate(lengths.tolist()):
        mine = (history == u).nonzero().flatten()
        covered = sorted(p for w in mine.tolist() for p in range(start[w], start[w] + size[w]))
        assert covered == list(range(max(n - 1, 0)))  # input positions 0..n-2, each once
        if len(mine):
            newest = mine[0]
            assert start[newest] + size[newest] == n - 1
            assert size[newest] == min(max_len, n - 1)


@pytest.mark.parametrize("seed", [8, 9])
@pytest.mark.parametrize("max_len,stride", [(1, 1), (5, 1), (8, 3), (8, 7), (9, 9)])
def test_overlapping_windows_train_every_target_once_with_context(seed, max_len, stride):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 40, (23,), generator=g)
    history, start, size, context = cut_windows(lengths, max_len, stride)
    assert (size >= 1).all() and (size <= max_len).all() and (context >= 0).all() and (context < size).all()
    for u, n in enumerate(lengths.tolist()):
        mine = (history == u).nonzero().flatten().tolist()
        trained = sorted(p for w in mine for p in range(start[w] + context[w], start[w] + size[w]))
        assert trained == list(range(max(n - 1, 0)))  # input positions 0..n-2, each trained once
        for w in mine:
            assert size[w] - context[w] <= stride
            for p in range(start[w] + context[w], start[w] + size[w]):
                # a trained input reads at least L - S inputs before it, or all there are
                assert p - start[w] >= min(p, max_len - stride)
        if mine:  # the newest window ends at the last input and is as long as it can be
            assert start[mine[0]] + size[mine[0]] == n - 1 and size[mine[0]] == min(max_len, n - 1)
    if stride == max_len:
        assert all(torch.equal(a, b) for a, b in zip(cut_windows(lengths, max_len), (history, start, size, context)))
    with pytest.raises(ValueError, match="stride must be in"):
        cut_windows(lengths, max_len, max_len + 1)


def tiny_splits(tiny_data, train_targets: str):
    """ml-tiny with windows of 7 under ``train_targets``: (config, training split, test split)."""
    from recbole.data import create_dataset, data_preparation

    from recbole_ssm import compat

    config, _ = build_config("Mamba2Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data,
                                                             "MAX_ITEM_LIST_LENGTH": 7, "train_targets": train_targets})
    with compat.quiet_recbole():
        train, _valid, test = data_preparation(config, create_dataset(config))
    return config, train._dataset, test._dataset


@pytest.fixture(scope="module")
def tiny_dataset(tiny_data):
    """ml-tiny with windows of 7: most users are longer than one window."""
    return tiny_splits(tiny_data, "all")


def test_training_histories_are_the_users_sequences_without_valid_and_test(tiny_dataset, tiny_data):
    from recbole.data import create_dataset, data_preparation

    from recbole_ssm import compat

    _config, train, _test = tiny_dataset
    items, offsets, users = training_histories(train)
    # reference: with windows longer than any history, each test sample holds the whole
    # history before the test item; dropping its last (the validation target) leaves training
    long_cfg, _ = build_config("Mamba2Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data,
                                                               "MAX_ITEM_LIST_LENGTH": 1000})
    with compat.quiet_recbole():
        test_long = data_preparation(long_cfg, create_dataset(long_cfg))[2]._dataset.inter_feat
    expected = {int(u): s[: n - 1].tolist() for u, s, n in
                zip(test_long["user_id"], test_long["item_id_list"], test_long["item_length"])}
    got = {int(u): items[offsets[i]: offsets[i + 1]].tolist() for i, u in enumerate(users)}
    assert got == expected
    assert any(len(h) > 20 for h in got.values())  # users longer than the window are covered


@pytest.mark.parametrize("positions", [None, 7, 20, 64])
def test_all_loader_trains_exactly_the_prefix_targets(positions, tiny_dataset):
    config, train, _test = tiny_dataset
    config["train_window_positions"] = positions
    try:
        loader = AllPositionsDataLoader(config, train, shuffle=True)
        batches = list(loader)
        assert len(loader) == len(batches)  # len(loader) already for the next epoch
    finally:
        config["train_window_positions"] = None
    _check_window_batches(batches, train)
    assert loader.n_targets == len(train)
    if positions:
        assert all(b["item_id_list"].numel() <= positions for b in batches)  # the budget holds


def _check_window_batches(batches, train):
    """Every batch's windows are contiguous pieces of the users' histories, their targets the items
    that follow, padding carries neither; over the batches every prefix target comes exactly once."""
    items, offsets, users = training_histories(train)
    history = {int(u): items[offsets[i]: offsets[i + 1]] for i, u in enumerate(users)}
    seen = collections.Counter()
    for batch in batches:
        seq, n, tgt = batch["item_id_list"], batch["item_length"], batch[TARGETS]
        assert seq.size(1) <= 7 and seq.size(1) == int(n.max())
        for row in range(len(n)):
            k = int(n[row])
            assert (seq[row, k:] == 0).all() and (tgt[row, k:] == 0).all()  # padding: no input, no target
            assert (tgt[row, : k - 1] == seq[row, 1:k]).all()  # the target at t is the input at t + 1
            h = history[int(batch["user_id"][row])]
            # the window is a contiguous piece of the history and its targets follow it
            starts = [s for s in range(len(h) - k) if torch.equal(h[s: s + k], seq[row, :k])]
            assert any(torch.equal(h[s + 1: s + k + 1], tgt[row, :k]) for s in starts)
            seen.update((int(batch["user_id"][row]), int(t)) for t in tgt[row, :k])
    prefix = collections.Counter(zip(train.inter_feat["user_id"].tolist(), train.inter_feat["item_id"].tolist()))
    assert seen == prefix  # every prefix target once per epoch, nothing else


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("budget", [9, 37, 400])
def test_length_batches_keep_every_window_once_within_the_budget(seed, budget):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 700, (1,), generator=g))
    widths = torch.randint(1, 10, (n,), generator=g) ** 2 % 9 + 1  # skewed widths in 1..9
    plans = [length_batches(widths, budget, torch.Generator().manual_seed(seed)) for _ in range(2)]
    assert [b.tolist() for b in plans[0]] == [b.tolist() for b in plans[1]]  # seeded: reproducible
    batches = plans[0]
    assert sorted(torch.cat(batches).tolist()) == list(range(n))  # each window in exactly one batch
    assert all(len(b) * int(widths[b].max()) <= budget for b in batches)
    padded = sum(len(b) * int(widths[b].max()) for b in batches)
    assert padded <= 1.2 * int(widths.sum()) + 9 * 64  # by length: little padding (random batches: ~2x)
    fixed = length_batches(widths, budget)
    assert sorted(torch.cat(fixed).tolist()) == list(range(n))
    g2 = torch.Generator().manual_seed(seed)
    first, second = length_batches(widths, budget, g2), length_batches(widths, budget, g2)
    assert n < 20 or [b.tolist() for b in first] != [b.tolist() for b in second]  # a new draw each epoch


def test_length_batches_refuse_nothing_wider_than_the_budget():
    # a window as wide as the budget is a batch of its own; equal widths fill batches evenly
    assert [b.tolist() for b in length_batches(torch.tensor([5, 5, 5, 2]), 5)] == [[0], [1], [2], [3]]
    assert [len(b) for b in length_batches(torch.full((10,), 3), 9)] == [3, 3, 3, 1]
    assert length_batches(torch.tensor([], dtype=torch.long), 4) == []


def test_length_batched_loader_gives_len_without_drawing_and_resumes_alike(tiny_dataset):
    config, train, _test = tiny_dataset
    config["train_window_positions"] = 30
    try:
        loader = AllPositionsDataLoader(config, train, shuffle=True)
        state = loader.generator.get_state()
        n = len(loader)
        assert torch.equal(loader.generator.get_state(), state)  # len() leaves the generator untouched
        epoch1 = [b["item_id_list"].tolist() for b in loader]
        after = loader.generator.get_state()
        epoch2 = [b["item_id_list"].tolist() for b in loader]
        loader.generator.set_state(after)  # as a resume state restores it before an epoch
        assert [b["item_id_list"].tolist() for b in loader] == epoch2
    finally:
        config["train_window_positions"] = None
    assert n == len(epoch1) and epoch1 != epoch2


def _prefix_rows(train) -> collections.Counter:
    """RecBole's training samples: Counter of (user, item list, target)."""
    f = train.inter_feat
    return collections.Counter((int(u), tuple(s[:n].tolist()), int(t)) for u, s, n, t in
                               zip(f["user_id"], f["item_id_list"], f["item_length"], f["item_id"]))


@pytest.mark.parametrize("stride", [1, 3, 7])
def test_overlapping_windows_read_recboles_prefixes(stride, tiny_dataset):
    """With windows of L = 7 and ``train_window_stride`` S, each trained target reads the last
    ``L - S + 1`` items or more of the prefix RecBole trains it with; S = 1 reads all of it."""
    config, train, _test = tiny_dataset
    config["train_window_stride"] = stride
    try:
        loader = AllPositionsDataLoader(config, train, shuffle=True)
    finally:
        config["train_window_stride"] = None
    prefixes = _prefix_rows(train)
    by_target = collections.defaultdict(list)
    for user, items, target in prefixes:
        by_target[(user, target)].append(items)
    read = collections.Counter()
    for batch in loader:
        seq, n, tgt = batch["item_id_list"], batch["item_length"], batch[TARGETS]
        for row in range(len(n)):
            k, user = int(n[row]), int(batch["user_id"][row])
            trained = (tgt[row] > 0).nonzero().flatten().tolist()
            assert trained == list(range(k - len(trained), k)) and 1 <= len(trained) <= stride  # the window's end
            assert (tgt[row, trained[:-1]] == seq[row, [t + 1 for t in trained[:-1]]]).all()
            for t in trained:
                ctx, target = tuple(seq[row, : t + 1].tolist()), int(tgt[row, t])
                full = [p for p in by_target[(user, target)] if p[len(p) - len(ctx):] == ctx]
                assert full, "a trained target's inputs are not the end of its prefix"
                assert len(ctx) >= min(len(full[0]), 7 - stride + 1)
                read[(user, full[0] if stride == 1 else ctx, target)] += 1
    assert loader.n_targets == len(train) == sum(read.values())
    if stride == 1:
        assert read == prefixes  # every prefix sample, read whole, once


@pytest.mark.parametrize("name", ["Mamba2Rec", "SASRec"])
def test_stride_one_windows_give_the_prefix_regimes_loss(name, tiny_dataset, tiny_data):
    """``all`` with ``train_window_stride=1`` over a whole epoch: the summed loss and its gradients
    are those of RecBole's ``last`` samples (float64, dropout off, users longer than the window)."""
    from recbole.data.interaction import Interaction

    config, train, _test = tiny_dataset
    model = make_model(name, train, tiny_data)
    users = train.inter_feat["user_id"]
    train = train.copy(train.inter_feat[users <= users.unique()[29]])  # 30 users
    assert (train.inter_feat["item_length"] == 7).sum() > len(train) // 2  # most prefixes longer than the window
    kept = config["train_window_batch_size"]
    config["train_window_stride"], config["train_window_batch_size"] = 1, 1024
    try:
        loader = AllPositionsDataLoader(config, train, shuffle=False)
    finally:
        config["train_window_stride"], config["train_window_batch_size"] = None, kept
    model.zero_grad()
    total_all = sum(model.calculate_loss(b) * int((b[TARGETS] > 0).sum()) for b in loader)
    total_all.backward()
    grads_all = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    f = train.inter_feat
    prefixes = Interaction({"item_id_list": f["item_id_list"], "item_length": f["item_length"],
                            "item_id": f["item_id"]})
    loss_last, grads_last = loss_and_grads(model, prefixes, len(train))
    torch.testing.assert_close(total_all.detach(), loss_last, rtol=1e-10, atol=1e-8)
    assert grads_all.keys() == grads_last.keys() and grads_all
    for key in grads_all:
        torch.testing.assert_close(grads_all[key], grads_last[key], rtol=1e-8, atol=1e-10, msg=key)


@pytest.mark.parametrize("max_len", [3, 7, 1000])
def test_window_dataset_gives_recboles_evaluation_samples_and_training_histories(tiny_data, max_len):
    """WindowDataset builds only four prefix rows a user, yet splits into RecBole's own
    validation and test samples, and keeps the training histories RecBole's prefixes chain into."""
    from recbole.data import create_dataset as recbole_create_dataset
    from recbole.data import data_preparation

    from recbole_ssm import compat
    from recbole_ssm.regime import WindowDataset, create_dataset

    config, _ = build_config("Mamba2Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data,
                                                             "MAX_ITEM_LIST_LENGTH": max_len, "train_targets": "all"})
    with compat.quiet_recbole():
        ours_data = create_dataset(config)
        theirs_data = recbole_create_dataset(config)
        ours, theirs = data_preparation(config, ours_data), data_preparation(config, theirs_data)
    assert isinstance(ours_data, WindowDataset) and not isinstance(theirs_data, WindowDataset)
    assert len(ours_data.inter_feat) <= 4 * ours_data.user_num < len(theirs_data.inter_feat)
    for split in (1, 2):  # validation, test: every field of every row, in the same order
        a, b = ours[split]._dataset.inter_feat, theirs[split]._dataset.inter_feat
        assert sorted(a.columns) == sorted(b.columns) and len(a) == len(b) > 0
        for field in a.columns:
            assert torch.equal(a[field], b[field]), field
    flat = ours[0]._dataset.train_histories
    rebuilt = training_histories(theirs[0]._dataset)
    for got, want in zip(flat, rebuilt):
        assert torch.equal(got, want)
    a, b = AllPositionsDataLoader(config, ours[0]._dataset), AllPositionsDataLoader(config, theirs[0]._dataset)
    assert torch.equal(a.starts, b.starts) and torch.equal(a.sizes, b.sizes) and torch.equal(a.items, b.items)


def test_all_loader_samples_bpr_negatives_that_are_not_the_target(tiny_dataset):
    config, train, _test = tiny_dataset
    config["loss_type"] = "BPR"
    try:
        batch = next(iter(AllPositionsDataLoader(config, train)))
    finally:
        config["loss_type"] = "CE"
    real = batch[TARGETS] > 0
    neg = batch[NEG_TARGETS]
    assert (neg[real] != batch[TARGETS][real]).all() and (neg[real] >= 1).all() and (neg[~real] == 0).all()


# ---------------------------------------------------------------------------------------
# the loss under `all` equals the prefix regime's over the same targets


def make_model(name, dataset, tiny_data, **over):
    config, cls = build_config(name, "ml-tiny", None, {**TINY, **SMALL, **NO_DROPOUT, "data_path": tiny_data,
                                                        "MAX_ITEM_LIST_LENGTH": 12, **over})
    torch.manual_seed(3)
    return cls(config, dataset).double().train()


def random_histories(n_items, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, n_items, (n,), generator=g) for n in lengths]


def window_batch(histories, width, neg_of=None, junk_padding=False, n_items=None):
    """One window per history (each no longer than width + 1 items), as AllPositionsDataLoader builds it."""
    from recbole.data.interaction import Interaction

    b = len(histories)
    seq = torch.zeros(b, width, dtype=torch.long)
    tgt = torch.zeros(b, width, dtype=torch.long)
    for r, h in enumerate(histories):
        seq[r, : len(h) - 1], tgt[r, : len(h) - 1] = h[:-1], h[1:]
    lens = torch.tensor([len(h) - 1 for h in histories])
    if junk_padding:  # causal outputs at real positions must not read what follows them
        pad = torch.arange(width).unsqueeze(0) >= lens.unsqueeze(1)
        seq[pad] = torch.randint(1, n_items, (int(pad.sum()),), generator=torch.Generator().manual_seed(9))
    batch = {"item_id_list": seq, "item_length": lens, TARGETS: tgt}
    if neg_of is not None:
        batch[NEG_TARGETS] = torch.where(tgt > 0, neg_of(tgt), 0)
    return Interaction(batch)


def prefix_batch(histories, width, neg_of=None):
    """Every prefix of every history as its own right-padded sample: RecBole's augmentation."""
    from recbole.data.interaction import Interaction

    rows, lens, pos = [], [], []
    for h in histories:
        for k in range(1, len(h)):
            row = torch.zeros(width, dtype=torch.long)
            row[:k] = h[:k]
            rows.append(row)
            lens.append(k)
            pos.append(int(h[k]))
    batch = {"item_id_list": torch.stack(rows), "item_length": torch.tensor(lens), "item_id": torch.tensor(pos)}
    if neg_of is not None:
        batch["neg_item_id"] = neg_of(batch["item_id"])
    return Interaction(batch)


def loss_and_grads(model, batch, scale):
    model.zero_grad()
    loss = model.calculate_loss(batch) * scale
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
def test_all_positions_loss_equals_prefix_loss_with_gradients(name, loss_type, tiny_dataset, tiny_data):
    _config, train, _test = tiny_dataset
    model = make_model(name, train, tiny_data, loss_type=loss_type,
                       **({"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}
                          if loss_type == "BPR" else {}))
    histories = random_histories(model.n_items, [13, 2, 7, 10, 5], seed=21)  # odd lengths, one at L + 1
    neg_of = (lambda t: (t * 7 + 3) % (model.n_items - 1) + 1) if loss_type == "BPR" else None
    windows = window_batch(histories, 12, neg_of)
    prefixes = prefix_batch(histories, 12, neg_of)
    n = len(prefixes)  # both losses are means over the same n targets
    loss_all, grads_all = loss_and_grads(model, windows, n)
    loss_last, grads_last = loss_and_grads(model, prefixes, n)
    torch.testing.assert_close(loss_all, loss_last, rtol=1e-10, atol=1e-10)
    assert grads_all.keys() == grads_last.keys() and grads_all
    for key in grads_all:
        torch.testing.assert_close(grads_all[key], grads_last[key], rtol=1e-8, atol=1e-10, msg=key)


@pytest.mark.parametrize("name", CAUSAL)
def test_padding_of_a_window_carries_no_loss_and_no_gradient(name, tiny_dataset, tiny_data):
    _config, train, _test = tiny_dataset
    model = make_model(name, train, tiny_data, trim_padding=False)
    histories = random_histories(model.n_items, [4, 9, 3], seed=22)
    clean = loss_and_grads(model, window_batch(histories, 12), 1.0)
    junk = loss_and_grads(model, window_batch(histories, 12, junk_padding=True, n_items=model.n_items), 1.0)
    torch.testing.assert_close(junk[0], clean[0], rtol=1e-12, atol=1e-12)
    for key in clean[1]:
        if key.endswith("item_embedding.weight"):  # junk items get no gradient row, real ones the same
            continue
        torch.testing.assert_close(junk[1][key], clean[1][key], rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
@pytest.mark.parametrize("over", [{"num_layers": 2, "causal": True}, {"num_layers": 1, "chunk_size": 4}],
                         ids=["causal-2-layers", "bidirectional-1-layer"])
def test_hydra_all_positions_loss_equals_its_prefix_loss_with_gradients(over, loss_type, tiny_dataset, tiny_data):
    """Hydra4Rec trains exactly its `last` targets and outputs under `all`: with causal=True (no conv
    taps after the centre, no backward scan) it is a causal model; the bidirectional one-layer model
    (the default) computes each prefix's output in one pass (HydraMixer.prefix_outputs). Conv weights
    are random on both sides of the centre, so a tap after it that was wrongly read would show."""
    _config, train, _test = tiny_dataset
    bpr = {"loss_type": loss_type, **({"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}
                                      if loss_type == "BPR" else {})}
    model = make_model("Hydra4Rec", train, tiny_data, d_conv=5, **over, **bpr)
    with torch.no_grad():
        for layer in model.layers:
            conv = layer.mixer.conv1d.weight
            conv.copy_(torch.randn(conv.shape, generator=torch.Generator().manual_seed(26), dtype=conv.dtype))
    histories = random_histories(model.n_items, [13, 2, 7, 10, 5], seed=24)
    neg_of = (lambda t: (t * 5 + 2) % (model.n_items - 1) + 1) if loss_type == "BPR" else None
    prefixes = prefix_batch(histories, 12, neg_of)
    n = len(prefixes)
    loss_all, grads_all = loss_and_grads(model, window_batch(histories, 12, neg_of), n)
    loss_last, grads_last = loss_and_grads(model, prefixes, n)
    torch.testing.assert_close(loss_all, loss_last, rtol=1e-10, atol=1e-10)
    assert grads_all.keys() == grads_last.keys() and grads_all
    for key in grads_all:
        torch.testing.assert_close(grads_all[key], grads_last[key], rtol=1e-8, atol=1e-10, msg=key)


@pytest.mark.parametrize("d_conv,ngroups,chunk,seed", [(7, 1, 256, 31), (5, 2, 4, 32), (3, 1, 3, 33), (1, 2, 5, 34),
                                                       (9, 1, 4, 35)])
def test_hydra_prefix_outputs_are_each_prefix_read_at_its_end(d_conv, ngroups, chunk, seed):
    """HydraMixer.prefix_outputs at position t equals forward on the prefix ending at t (mask cut
    after t, index t), for every t; float64, random weights everywhere (conv taps both sides of
    the centre, conv bias, dt bias, A, the diagonal), odd lengths, scan chunks shorter than L."""
    from recbole_ssm.layers import HydraMixer

    torch.manual_seed(seed)
    mixer = HydraMixer(8, d_state=4, d_conv=d_conv, expand=2, headdim=4, ngroups=ngroups, chunk_size=chunk).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        mixer.A_log.copy_(torch.rand_like(mixer.A_log) - 0.5)
    lengths = torch.tensor([13, 1, 6, 9])
    hidden = torch.randn(4, 13, 8, dtype=torch.float64)
    mask = torch.arange(13).unsqueeze(0) < lengths.unsqueeze(1)
    got = mixer.prefix_outputs(hidden, mask)
    assert got.shape == (4, 13, 8)
    for t in range(13):
        cut = mask & (torch.arange(13) <= t).unsqueeze(0)
        index = torch.full((4,), t)
        want = mixer(hidden, cut, index)
        rows = lengths > t  # rows where t is a real position
        torch.testing.assert_close(got[rows, t], want[rows], rtol=1e-10, atol=1e-10, msg=f"t={t}")


def test_causal_hydra_reads_nothing_after_each_position(tiny_dataset, tiny_data):
    _config, train, _test = tiny_dataset
    model = make_model("Hydra4Rec", train, tiny_data, num_layers=2, causal=True, trim_padding=False).eval()
    g = torch.Generator().manual_seed(25)
    seq = torch.randint(1, model.n_items, (3, 11), generator=g)
    lens = torch.tensor([11, 11, 11])
    later = seq.clone()
    later[:, 6:] = torch.randint(1, model.n_items, (3, 5), generator=g)
    with torch.no_grad():
        a, b = model.encode(seq, lens), model.encode(later, lens)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=1e-12, atol=1e-12)
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-6


# ---------------------------------------------------------------------------------------
# the baselines are RecBole's models under `last`


@pytest.mark.parametrize("name", ["SASRec", "GRU4Rec"])
def test_baselines_behave_exactly_as_recboles_under_last(name, tiny_dataset, tiny_data):
    import recbole.model.sequential_recommender as rs

    _config, train, _test = tiny_dataset
    ours = make_model(name, train, tiny_data).float().eval()
    config, _ = build_config(name, "ml-tiny", None, {**TINY, **SMALL, "data_path": tiny_data,
                                                      "MAX_ITEM_LIST_LENGTH": 12})
    theirs = getattr(rs, name)(config, train).eval()
    assert type(theirs) in type(ours).__mro__  # ours is a subclass, not a copy
    theirs.load_state_dict(ours.state_dict())
    histories = random_histories(ours.n_items, [9, 3, 12, 6], seed=23)
    batch = prefix_batch(histories, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours.calculate_loss(batch), theirs.calculate_loss(batch), rtol=0, atol=0)
        torch.testing.assert_close(ours.full_sort_predict(batch), theirs.full_sort_predict(batch), rtol=0, atol=0)
        # encode read at the last position is forward
        enc = ours.encode(batch["item_id_list"], batch["item_length"])
        read = enc[torch.arange(len(batch)), batch["item_length"] - 1]
        torch.testing.assert_close(read, theirs.forward(batch["item_id_list"], batch["item_length"]))
        # a batch mostly padding: ours reads it by length (scores within rounding), or whole without trim_padding
        from recbole.data.interaction import Interaction

        lens = torch.tensor([11, 1, 2, 1, 3, 2, 1])
        seq = torch.zeros(len(lens), 12, dtype=torch.long)
        for row, h in enumerate(random_histories(ours.n_items, lens.tolist(), seed=24)):
            seq[row, : len(h)] = h
        mostly_padding = Interaction({"item_id_list": seq, "item_length": lens})
        want = theirs.full_sort_predict(mostly_padding)
        calls = []
        ours.EVAL_GROUP_POSITIONS = 12  # small groups: the long row alone, then the short ones
        ours.forward = lambda s, n, f=ours.forward: calls.append(s.shape) or f(s, n)
        torch.testing.assert_close(ours.full_sort_predict(mostly_padding), want, rtol=1e-5, atol=1e-6)
        assert len(calls) > 1 and calls[0][1] == 11 and all(w <= 3 for _, w in calls[1:])
        ours.trim_padding, calls[:] = False, []
        torch.testing.assert_close(ours.full_sort_predict(mostly_padding), want, rtol=0, atol=0)
        assert len(calls) == 1


# ---------------------------------------------------------------------------------------
# configuration and a whole run


def test_bidirectional_hydra_refuses_all_with_more_than_one_layer(tiny_data):
    with pytest.raises(ConfigError, match="more than one bidirectional layer"):
        build_config("Hydra4Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data, "train_targets": "all",
                                                    "num_layers": 2})
    config, _ = build_config("Hydra4Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data, "train_targets": "all"})
    assert config["num_layers"] == 1 and config["train_targets"] == "all"


@pytest.mark.parametrize("over,match", [
    ({"model": "NARM", "train_targets": "all"}, "models that support it: GRU4Rec, Hydra4Rec, Mamba2Rec"),
    ({"model": "Hydra4Rec", "train_targets": "cloze", "causal": True}, "causal=True cannot train with "
                                                                       "train_targets=cloze"),
    ({"model": "BERT4Rec", "train_targets": "all"}, "cannot train BERT4Rec: it is bidirectional"),
    ({"train_targets": "every"}, "invalid train_targets='every'"),
    ({"train_targets": "all", "train_window_batch_size": 0}, "invalid train_window_batch_size=0"),
    ({"train_targets": "cloze"}, "train_targets=cloze is not available for Mamba2Rec; models that support it: "
                                 "BERT4Rec, Hydra4Rec"),
    ({"model": "Hydra4Rec", "train_targets": "all", "num_layers": 3}, "cannot train Hydra4Rec with num_layers=3"),
    ({"model": "Hydra4Rec", "train_targets": "cloze", "mask_ratio": 0}, "invalid mask_ratio=0"),
    ({"model": "Hydra4Rec", "train_targets": "cloze", "mask_ratio": 1.5}, "invalid mask_ratio=1.5"),
    ({"train_targets": "last", "train_window_stride": 5}, "train_window_stride applies to train_targets=all only, "
                                                          "not last"),
    ({"model": "Hydra4Rec", "train_targets": "cloze", "train_window_stride": 5}, "train_window_stride applies to "
                                                                                  "train_targets=all only, not cloze"),
    ({"train_targets": "all", "train_window_stride": 51}, "invalid train_window_stride=51"),
    ({"train_targets": "all", "train_window_stride": 0}, "invalid train_window_stride=0"),
    ({"train_targets": "last", "train_window_positions": 500}, "train_window_positions applies to "
                                                               "train_targets=all or cloze, not last"),
    ({"train_targets": "all", "train_window_positions": 49}, "invalid train_window_positions=49"),
    ({"model": "Hydra4Rec", "train_targets": "cloze", "train_window_positions": 50},
     "invalid train_window_positions=50"),
    ({"train_targets": "all", "train_window_positions": 500, "nproc": 2},
     "train_window_positions batches single-process runs only"),
])
def test_bad_train_targets_settings_are_one_line_errors(over, match, tiny_data, capsys):
    args = [f"--model={over.pop('model', 'Mamba2Rec')}", "--dataset=ml-tiny", f"--data_path={tiny_data}"]
    args += [f"--{k}={v}" for k, v in over.items()]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("stride,positions", [(None, None), (8, None), (None, 200)])
def test_a_run_under_all_trains_on_windows_and_scores_like_last(stride, positions, tiny_config):
    from recbole_ssm.quick_start import run

    out = run("Mamba2Rec", "ml-tiny", None, {**tiny_config, **SMALL, "train_targets": "all", "epochs": 2,
                                             "train_window_stride": stride, "train_window_positions": positions},
              saved=False)
    assert out.config["train_targets"] == "all" and out.config["train_window_stride"] == stride
    assert out.config["train_window_positions"] == positions
    assert set(out.result["test_result"]) == {"hit@10", "ndcg@10", "mrr@10"}
    assert out.result["best_valid_result"]["hit@10"] > 0



@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gather_lists_matches_row_by_row_copy(seed):
    """The vectorised item-list rows equal RecBole's row-by-row copy, for scalar and vector values."""
    from recbole_ssm.regime import _gather_lists

    rng = np.random.default_rng(seed)
    n, rows, width = 37, 23, 7
    for value in (torch.from_numpy(rng.integers(1, 99, n)), torch.from_numpy(rng.random((n, 2)))):
        start = rng.integers(0, n, rows)
        length = np.minimum(rng.integers(0, width + 1, rows), n - start)
        shape = (rows, width) + tuple(value.shape[1:])
        want = torch.zeros(shape, dtype=value.dtype)
        for r, (a, k) in enumerate(zip(start, length)):
            want[r][:k] = value[a: a + k]
        assert torch.equal(_gather_lists(value, start, length, shape), want)
