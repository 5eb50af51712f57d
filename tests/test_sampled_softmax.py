"""Sampled softmax (``ce_negatives``): the loss against full CE and its reference, the sampler,
the logQ correction in expectation, and the models that train with it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from recbole_ssm.cli import main
from recbole_ssm.errors import ConfigError
from recbole_ssm.models.causal import training_item_counts
from recbole_ssm.ops.cross_entropy import (
    linear_cross_entropy,
    log_probabilities,
    sample_negatives,
    sampled_softmax_cross_entropy,
    sampled_softmax_cross_entropy_ref,
)
from recbole_ssm.regime import histories_of
from recbole_ssm.targets import TARGETS
from tests.test_cli import assert_one_line_error
from tests.test_regime import make_model, prefix_batch, random_histories, tiny_dataset, tiny_splits, window_batch

__all__ = ["tiny_dataset"]  # the fixture, shared with test_regime

F64 = torch.float64


def _loss_and_grads(fn, hidden, weight, *args, **kwargs):
    """fn's loss and its gradients with respect to fresh leaf copies of hidden and weight."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fn(h, w, *args, **kwargs)
    dh, dw = torch.autograd.grad(loss, (h, w))
    return loss.detach(), dh, dw


# ---------------------------------------------------------------------------------------
# the loss


@pytest.mark.parametrize("seed,P,n,d", [(11, 37, 29, 5), (12, 1, 3, 2), (13, 101, 53, 7)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_every_item_once_as_a_negative_is_full_ce_over_the_items(seed, P, n, d, reduction):
    """negatives = items 1..n-1 once each, no correction: the target's own copy among them is an
    accidental hit (masked) and the target logit stands for it, so each row is softmax over the items
    1..n-1 exactly: full CE with the padding item 0 left out of the normaliser too (the sampler never
    draws it). Passing the uniform sampler's log q, one constant for every logit, changes nothing."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(P, d, generator=g, dtype=F64)
    w = torch.randn(n, d, generator=g, dtype=F64)
    t = torch.randint(1, n, (P,), generator=g)
    negatives = torch.randperm(n - 1, generator=g) + 1  # (n - 1,) every item once, in any order
    got = _loss_and_grads(sampled_softmax_cross_entropy, h, w, t, negatives, reduction=reduction)
    want = _loss_and_grads(lambda hh, ww: F.cross_entropy(hh @ ww[1:].t(), t - 1, reduction=reduction), h, w)
    chunked = _loss_and_grads(lambda hh, ww: linear_cross_entropy(hh, ww[1:], t - 1, reduction), h, w)
    uniform = torch.full((n - 1,), -math.log(n - 1), dtype=F64)
    corrected = _loss_and_grads(sampled_softmax_cross_entropy, h, w, t, negatives, uniform,
                                torch.full((P,), -math.log(n - 1), dtype=F64), reduction)
    for other in (want, chunked, corrected):
        for a, b in zip(got, other):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert bool((got[2][0] == 0).all())  # the padding row gets no gradient


@pytest.mark.parametrize("seed,P,n,d,N", [(21, 45, 9, 5, 13), (22, 7, 4, 3, 5), (23, 64, 31, 8, 40)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("corrected", [True, False])
def test_fast_sampled_softmax_equals_the_reference(seed, P, n, d, N, reduction, corrected):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(P, d, generator=g, dtype=F64)
    w = torch.randn(n, d, generator=g, dtype=F64)
    t = torch.randint(1, n, (P,), generator=g)
    negatives = torch.randint(1, n, (N,), generator=g)  # few items: duplicates and accidental hits
    assert (t.unsqueeze(1) == negatives).any() and len(set(negatives.tolist())) < N
    log_q = torch.rand(N, generator=g, dtype=F64).log() if corrected else None
    target_log_q = torch.rand(P, generator=g, dtype=F64).log() if corrected else None
    args = (t, negatives, log_q, target_log_q, reduction)
    got = _loss_and_grads(sampled_softmax_cross_entropy, h, w, *args)
    want = _loss_and_grads(sampled_softmax_cross_entropy_ref, h, w, *args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_row_whose_every_negative_is_its_target_has_zero_loss_and_gradient():
    h = torch.randn(3, 4, dtype=F64, requires_grad=True)
    w = torch.randn(6, 4, dtype=F64, requires_grad=True)
    loss = sampled_softmax_cross_entropy(h, w, torch.tensor([2, 5, 2]), torch.tensor([2, 2]), reduction="sum")
    loss.backward()
    assert torch.isfinite(h.grad).all() and bool((h.grad[[0, 2]] == 0).all()) and bool((h.grad[1] != 0).any())


# ---------------------------------------------------------------------------------------
# the sampler


def _chi_square(ids: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of the drawn ids against probs, over the items of probability > 0."""
    seen = torch.bincount(ids, minlength=len(probs)).to(F64)
    support = probs > 0
    expected = probs[support] * len(ids)
    return float(((seen[support] - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("n", [2, 11, 97])
def test_uniform_sampler_draws_items_1_to_n_minus_1_uniformly(n):
    from scipy.stats import chi2

    ids, log_q = sample_negatives(n, 200_000, torch.Generator().manual_seed(n))
    probs = torch.full((n,), 1.0 / (n - 1), dtype=F64)
    probs[0] = 0.0
    assert int(ids.min()) == 1 and int(ids.max()) == n - 1  # never the padding item 0
    assert _chi_square(ids, probs) < chi2.ppf(0.999, max(1, n - 2))
    torch.testing.assert_close(log_q, probs[ids].log(), rtol=0, atol=1e-15)


def test_popularity_sampler_follows_the_weights_and_never_draws_weight_0():
    from scipy.stats import chi2

    weights = torch.tensor([0, 40, 20, 0, 10, 5, 3, 1, 0, 7], dtype=F64)  # unnormalised, like counts
    ids, log_q = sample_negatives(len(weights), 300_000, torch.Generator().manual_seed(5), weights)
    probs = weights / weights.sum()
    assert bool((weights[ids] > 0).all()) and set(ids.tolist()) == set(torch.nonzero(weights).flatten().tolist())
    assert _chi_square(ids, probs) < chi2.ppf(0.999, int((weights > 0).sum()) - 1)
    torch.testing.assert_close(log_q, probs[ids].log(), rtol=0, atol=1e-15)
    torch.testing.assert_close(log_probabilities(weights), probs.log())


@pytest.mark.parametrize("weights,match", [([1.0, 2.0, 3.0], "item 0 is padding"), ([0.0, -1.0, 3.0], "non-negative"),
                                           ([0.0, 0.0, 0.0], "not all 0")])
def test_sampler_refuses_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        sample_negatives(3, 4, None, torch.tensor(weights))


# ---------------------------------------------------------------------------------------
# the logQ correction in expectation, on a tiny catalogue (7 items: padding and 6, skewed sampler)

COUNTS = torch.tensor([0, 40, 20, 10, 5, 3, 1], dtype=F64)  # the popularity sampler's weights
CORRECTIONS = ("logq", "none", "wrong sign")


def _row_gradients(logits: torch.Tensor, negatives: torch.Tensor, log_q: torch.Tensor | None,
                   target_log_q: torch.Tensor | None) -> torch.Tensor:
    """(6, 6): row t-1 is d(loss of target t)/d(logits of items 1..6), for every target t, with the
    logits ``logits`` (7,) (hidden = the logits, weight = identity)."""
    n = len(logits)
    h = logits.repeat(n - 1, 1).requires_grad_()  # (6, 7) one row per target
    loss = sampled_softmax_cross_entropy(h, torch.eye(n, dtype=F64), torch.arange(1, n), negatives,
                                         log_q, target_log_q, reduction="sum")
    return torch.autograd.grad(loss, h)[0][:, 1:]


def _corrected(kind: str, negatives: torch.Tensor, log_table: torch.Tensor):
    """(log_q, target_log_q) of the model's convention (log q of one draw in every logit, the target's
    too), none, or with the sign flipped."""
    sign = {"logq": 1.0, "none": 0.0, "wrong sign": -1.0}[kind]
    if sign == 0.0:
        return None, None
    return sign * log_table[negatives], sign * log_table[1:]


@pytest.mark.parametrize("seed", [31, 32])
def test_logq_sampled_softmax_keeps_full_ce_minimiser_exactly_with_one_negative(seed):
    """The property tested: at the true log-probabilities (logits = log P, targets t ~ P), full CE's
    expected gradient is 0: its minimiser is the truth. Averaged exactly over t ~ P and the negatives
    (every draw enumerated with its probability), the logQ-corrected sampled softmax has expected
    gradient 0 too with one negative (it is then the likelihood of which of the two candidates is
    the target), and stays close to 0 with 2 and 3 negatives on this catalogue, where N q_t is not
    small (it drifts as N grows: see the next test); without the correction, or with its sign
    flipped, the expected gradient is far from 0 (the minimiser is shifted by log q)."""
    log_table = log_probabilities(COUNTS)
    q = log_table.exp()
    g = torch.Generator().manual_seed(seed)
    logits = torch.cat([torch.zeros(1, dtype=F64), torch.log_softmax(torch.randn(6, generator=g, dtype=F64), 0)])
    p = logits[1:].exp()  # (6,) the true next-item distribution, unlike the sampler's
    norms = {}
    for n_neg in (1, 2, 3):
        expected = {kind: torch.zeros(6, dtype=F64) for kind in CORRECTIONS}
        for draw in itertools.product(range(1, 7), repeat=n_neg):
            negatives = torch.tensor(draw)
            weight = q[negatives].prod()  # the draw's probability
            for kind in CORRECTIONS:
                rows = _row_gradients(logits, negatives, *_corrected(kind, negatives, log_table))
                expected[kind] += weight * (p.unsqueeze(1) * rows).sum(0)  # E over t ~ P
        norms[n_neg] = {kind: float(v.norm()) for kind, v in expected.items()}
    full = (p.unsqueeze(1) * (torch.softmax(logits[1:], 0) - torch.eye(6, dtype=F64))).sum(0)
    assert float(full.norm()) < 1e-12
    assert norms[1]["logq"] < 1e-12
    for norm in norms.values():
        assert norm["none"] > 0.05 and norm["wrong sign"] > 0.05, norms
        assert norm["logq"] < 0.4 * min(norm["none"], norm["wrong sign"]), norms


def _mean_gradients(n_neg: int, draws: int, kind: str, logits: torch.Tensor, expected_count: bool):
    """Monte-Carlo mean (over ``draws`` popularity samples of ``n_neg`` negatives) of _row_gradients."""
    log_table = log_probabilities(COUNTS)
    g = torch.Generator().manual_seed(1000 + n_neg)
    total = torch.zeros(6, 6, dtype=F64)
    for _ in range(draws):
        negatives, log_q = sample_negatives(len(COUNTS), n_neg, g, COUNTS)
        if expected_count:  # log of each candidate's expected count: N q for a negative, 1 for the target
            sign = {"logq": 1.0, "none": 0.0, "wrong sign": -1.0}[kind]
            total += _row_gradients(logits, negatives, sign * (log_q + math.log(n_neg)) if sign else None, None)
        else:
            total += _row_gradients(logits, negatives, *_corrected(kind, negatives, log_table))
    return total / draws


def test_logq_sampled_softmax_tends_to_ce_without_the_target_in_the_normaliser():
    """The model's convention, as N grows on a tiny catalogue: each item but the target is drawn about
    N q_i times and, corrected, weighs about N exp(s_i); the target's own term stays one, so its share
    of the normaliser vanishes and the mean gradient tends to that of CE over the other items,
    -onehot(t) + softmax(s without t) (what docs/models.md says of ce_negatives >= n_items), not to
    full CE's. Without the correction, or with its sign flipped, it tends elsewhere (softmax(s + log q)
    or softmax(s - log q))."""
    logits = torch.cat([torch.zeros(1, dtype=F64), torch.randn(6, generator=torch.Generator().manual_seed(41),
                                                               dtype=F64)])
    p = torch.softmax(logits[1:], 0)
    others = p.repeat(6, 1) * (1 - torch.eye(6, dtype=F64))
    limit = others / others.sum(1, keepdim=True) - torch.eye(6, dtype=F64)  # (6 targets, 6 logits)
    full = p.repeat(6, 1) - torch.eye(6, dtype=F64)
    mean = {kind: _mean_gradients(2000, 15, kind, logits, expected_count=False) for kind in CORRECTIONS}
    assert float((mean["logq"] - limit).abs().max()) < 0.03
    assert float((mean["logq"] - full).abs().max()) > 0.1
    assert float((mean["none"] - limit).abs().max()) > 0.2 and float((mean["wrong sign"] - limit).abs().max()) > 0.2


def test_expected_count_correction_tends_to_full_ce_as_negatives_grow():
    """The same function with the correction given as the log of each candidate's expected number of
    occurrences in its row (log N q_j for a negative, log 1 = 0 for the target, which is there once
    for certain and whose sampled copies are masked): the normaliser is then an importance-sampling
    estimate of full CE's, and the mean gradient's largest deviation from full CE's shrinks as N
    grows (about as 1/N) to within Monte-Carlo error; without the correction or with its sign flipped
    it does not shrink. (A check of the function's arithmetic of log_q and of the masking.)"""
    logits = torch.cat([torch.zeros(1, dtype=F64), 1.5 * torch.randn(6, generator=torch.Generator().manual_seed(42),
                                                                     dtype=F64)])
    full = torch.softmax(logits[1:], 0).repeat(6, 1) - torch.eye(6, dtype=F64)
    runs = [("logq", 4), ("logq", 40), ("logq", 400), ("none", 400), ("wrong sign", 400)]
    bias = {run: float((_mean_gradients(run[1], 100, run[0], logits, True) - full).abs().max()) for run in runs}
    assert bias["logq", 400] < 0.02 and bias["logq", 40] < bias["logq", 4] / 4, bias
    assert min(bias["none", 400], bias["wrong sign", 400]) > 0.3, bias


# ---------------------------------------------------------------------------------------
# the models


@pytest.fixture(scope="module")
def last_dataset(tiny_data):
    """ml-tiny's training split under ``train_targets: last`` (RecBole's prefix rows), windows of 7."""
    return tiny_splits(tiny_data, "last")[1]


def test_popularity_counts_each_training_interaction_once_in_either_regime(tiny_dataset, last_dataset):
    _config, window_train, _test = tiny_dataset
    n = window_train.item_num
    counts = training_item_counts(window_train, n)
    assert not hasattr(last_dataset, "train_histories")  # rebuilt from the prefix rows
    torch.testing.assert_close(training_item_counts(last_dataset, n), counts, rtol=0, atol=0)
    items = histories_of(window_train)[0]
    assert counts[0] == 0 and int(counts.sum()) == len(items)
    # each prefix row's target once, plus each user's first item (never a target)
    targets = torch.bincount(last_dataset.inter_feat["item_id"], minlength=n).to(F64)
    assert int((counts - targets).sum()) == len(histories_of(last_dataset)[2]) and bool((counts >= targets).all())


@pytest.mark.parametrize("name", ["Mamba2Rec", "SASRec", "GRU4Rec"])
@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_models_train_a_step_on_sampled_softmax_under_all_and_last(name, sampler, tiny_dataset, tiny_data):
    _config, train, _test = tiny_dataset
    histories = random_histories(train.item_num, [13, 2, 7, 10, 5], seed=51)
    batches = {"all": window_batch(histories, 12), "last": prefix_batch(histories, 12)}
    full = make_model(name, train, tiny_data)
    sampled = make_model(name, train, tiny_data, ce_negatives=16, ce_negative_sampler=sampler)  # same weights
    assert (sampled.ce_sampling_weights is None) == (sampler == "uniform")
    assert "ce_sampling_weights" not in sampled.state_dict()  # checkpoints do not depend on the loss
    optimizer = torch.optim.Adam(sampled.parameters(), lr=1e-2)
    for regime, batch in batches.items():
        with torch.no_grad():
            full_loss = full.calculate_loss(batch)
        torch.manual_seed(52)
        loss = sampled.calculate_loss(batch)
        assert torch.isfinite(loss) and abs(loss.item() - full_loss.item()) > 1e-3, regime
        torch.manual_seed(52)  # the negatives come from torch's default generator: seeded, the same loss
        assert sampled.calculate_loss(batch).item() == loss.item()
        assert sampled.calculate_loss(batch).item() != loss.item()  # and fresh ones for the next batch
        before = sampled.item_embedding.weight.detach().clone()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert not torch.equal(before, sampled.item_embedding.weight.detach()), regime
        assert torch.isfinite(sampled.calculate_loss(batch)), regime
        full.load_state_dict(sampled.state_dict())


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_model_loss_is_the_sampled_softmax_of_its_sampler(sampler, tiny_dataset, tiny_data):
    """target_loss draws ce_negatives items from torch's default generator and corrects each
    negative's logit by the log of its expected count, log(N q_j), the target's not (popularity),
    or none (uniform)."""
    _config, train, _test = tiny_dataset
    model = make_model("Mamba2Rec", train, tiny_data, ce_negatives=9, ce_negative_sampler=sampler)
    g = torch.Generator().manual_seed(54)
    hidden = torch.randn(23, model.hidden_size, generator=g, dtype=F64)
    pos = torch.randint(1, model.n_items, (23,), generator=g)
    counts = training_item_counts(train, model.n_items) if sampler == "popularity" else None
    torch.manual_seed(55)
    got = model.target_loss(hidden, pos)
    torch.manual_seed(55)
    negatives, log_q = sample_negatives(model.n_items, 9, None, counts)
    correction = (log_q + math.log(9),) if counts is not None else ()  # log(N q_j), the negatives only
    want = sampled_softmax_cross_entropy_ref(hidden, model.item_embedding.weight, pos, negatives, *correction)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["SASRec", "GRU4Rec"])
def test_baselines_keep_recboles_last_loss_without_negatives(name, tiny_dataset, tiny_data, monkeypatch):
    import recbole.model.sequential_recommender as rs

    _config, train, _test = tiny_dataset
    batch = prefix_batch(random_histories(train.item_num, [9, 3, 12, 6], seed=53), 12)
    ours = make_model(name, train, tiny_data, ce_negatives=0)
    theirs = getattr(rs, name)  # RecBole's class, a base of ours: its own calculate_loss on ours
    torch.testing.assert_close(ours.calculate_loss(batch), theirs.calculate_loss(ours, batch), rtol=0, atol=0)
    monkeypatch.setattr(theirs, "calculate_loss", lambda self, interaction: torch.tensor(-1.0))
    assert float(ours.calculate_loss(batch)) == -1.0  # deferred to RecBole's loss, untouched
    sampled = make_model(name, train, tiny_data, ce_negatives=16)
    assert sampled.calculate_loss(batch).item() != -1.0  # with negatives: CausalLoss.target_loss


@pytest.mark.parametrize("name", ["Mamba2Rec", "SASRec"])
@pytest.mark.parametrize(("smoothing", "temperature"), [(0.1, 1.0), (0.0, 0.5), (0.2, 2.5)])
def test_label_smoothing_and_temperature_are_torchs_ce_of_the_scaled_logits(name, smoothing, temperature,
                                                                            tiny_dataset, tiny_data):
    """Under 'all' and under 'last' (where SASRec then leaves RecBole's loss), the loss is torch's
    cross_entropy(hidden @ W.T / temperature, targets, label_smoothing) over the positions, in float64."""
    _config, train, _test = tiny_dataset
    histories = random_histories(train.item_num, [9, 3, 12, 6], seed=61)
    model = make_model(name, train, tiny_data, ce_label_smoothing=smoothing, ce_temperature=temperature)
    weight = model.item_embedding.weight
    windows = window_batch(histories, 12)
    hidden = model.window_outputs(windows["item_id_list"], windows["item_length"])
    targets = windows[TARGETS][:, : hidden.size(1)]  # (trim_padding: as wide as the longest window)
    real = targets > 0
    want = F.cross_entropy(hidden[real] @ weight.t() / temperature, targets[real], label_smoothing=smoothing)
    torch.testing.assert_close(model.calculate_loss(windows), want, rtol=1e-12, atol=1e-12)
    prefixes = prefix_batch(histories, 12)
    last = model.forward(prefixes["item_id_list"], prefixes["item_length"])
    want = F.cross_entropy(last @ weight.t() / temperature, prefixes["item_id"], label_smoothing=smoothing)
    torch.testing.assert_close(model.calculate_loss(prefixes), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("over", "words"), [
    ({"ce_label_smoothing": 0.1, "ce_negatives": 8}, "ce_label_smoothing applies to full CE"),
    ({"ce_temperature": 0.5, "loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
     "ce_label_smoothing and ce_temperature apply to loss_type=CE, not BPR"),
])
def test_ce_settings_that_cannot_apply_are_one_line_errors(over, words, tiny_dataset, tiny_data):
    _config, train, _test = tiny_dataset
    with pytest.raises(ConfigError, match=words) as err:
        make_model("Mamba2Rec", train, tiny_data, **over)
    assert "\n" not in str(err.value)


def test_bpr_with_negatives_is_a_one_line_error(tiny_dataset, tiny_data):
    _config, train, _test = tiny_dataset
    with pytest.raises(ConfigError, match="ce_negatives applies to loss_type=CE, not BPR") as err:
        make_model("Mamba2Rec", train, tiny_data, ce_negatives=8, loss_type="BPR",
                   train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arg,key", [("--ce_negatives=-1", "ce_negatives"), ("--ce_negatives=2.5", "ce_negatives"),
                                     ("--ce_negative_sampler=zipf", "ce_negative_sampler")])
def test_bad_sampled_softmax_settings_are_one_line_errors(arg, key, capsys):
    assert main(["--model=Mamba2Rec", "--epochs=1", arg]) == 2
    assert_one_line_error(capsys.readouterr().err, f"invalid {key}=")


@pytest.mark.parametrize("model", ["BERT4Rec", "SeqPop", "NARM"])
def test_a_model_whose_loss_does_not_sample_refuses_ce_negatives(model, capsys):
    """Ignored, ce_negatives would label a full-CE run as sampled: models without the CE_SETTINGS
    trait (BERT4Rec, SeqPop, RecBole's other models) refuse it in one line, naming those that take it."""
    assert main([f"--model={model}", "--epochs=1", "--ce_negatives=16"]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, f"ce_negatives=16 is not implemented for {model}'s loss")
    assert "Mamba2Rec" in err and "SASRec" in err and "unset it" in err


def test_bert4rec_refuses_label_smoothing_and_temperature(capsys):
    assert main(["--model=BERT4Rec", "--epochs=1", "--ce_label_smoothing=0.1", "--ce_temperature=0.5"]) == 2
    assert_one_line_error(capsys.readouterr().err,
                          "ce_label_smoothing=0.1 ce_temperature=0.5 is not implemented for BERT4Rec's loss")


def test_benchmark_tool_times_full_and_sampled_ce(capsys):
    from tests.test_tools import load_tool

    threads = torch.get_num_threads()
    try:
        assert load_tool("bench_sampled_ce").main(["29,101", "13", "4", "8", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 29 ", "| 101 "))]
    assert len(rows) == 2 and all(len(row.split("|")) == 8 for row in rows)
