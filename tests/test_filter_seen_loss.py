"""``ce_filter_seen``: each target's CE leaves out the items its input holds. The chunked loss and
the sampled softmax with ``exclude`` against their references, the models' seen pairs against a
loop over sets of items (full and sampled CE), the two training regimes against each other, and
the settings it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_ssm.cli import main
from recbole_ssm.errors import ConfigError
from recbole_ssm.ops.cross_entropy import (
    linear_cross_entropy,
    linear_cross_entropy_ref,
    sample_negatives,
    sampled_softmax_cross_entropy,
    sampled_softmax_cross_entropy_ref,
)
from tests.conftest import TINY, models_where
from tests.test_cli import assert_one_line_error
from tests.test_regime import (
    SMALL,
    assert_chunked_ce_is_the_reference,
    make_model,
    prefix_batch,
    tiny_dataset,
    window_batch,
)

__all__ = ["tiny_dataset"]  # the fixture, shared with test_regime

F64 = torch.float64


def random_pairs(targets: torch.Tensor, n: int, count: int, g: torch.Generator):
    """``count`` random (row, item) pairs, rows ascending, repeats allowed, never a row's target."""
    rows = torch.randint(0, targets.numel(), (count,), generator=g).sort().values
    cols = torch.randint(0, n, (count,), generator=g)
    keep = cols != targets[rows]
    return rows[keep], cols[keep]


@pytest.mark.parametrize("seed,P,n,d,budget", [(21, 37, 29, 5, 1e9), (22, 101, 53, 7, 3 * 53 * 8 / 2**20),
                                                (23, 64, 17, 16, 1 * 17 * 8 / 2**20), (24, 1, 3, 2, 1e-9)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_excluded_items_match_the_reference_with_gradients(seed, P, n, d, budget, reduction):
    """In one chunk, in chunks of 3 rows, of 1 row: loss and gradients equal torch's CE over the logits
    with the excluded ones set to -inf (float64)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(P, d, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(n, d, generator=g, dtype=F64, requires_grad=True)
    t = torch.randint(0, n, (P,), generator=g)
    exclude = random_pairs(t, n, P * n // 3 + 1, g)
    assert exclude[0].numel() > 0
    out = assert_chunked_ce_is_the_reference(h, w, t, reduction, budget, g, exclude=exclude)
    plain = linear_cross_entropy(h, w, t, reduction, budget_mib=budget)
    assert float(out) < float(plain.detach())  # fewer items in each normaliser: a smaller loss


def test_reference_is_the_softmax_over_the_items_left_in():
    """The reference itself, row by row: -log of the target's share among the items not excluded."""
    g = torch.Generator().manual_seed(25)
    h, w = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(9, 4, generator=g, dtype=F64)
    t = torch.tensor([1, 1, 8, 0, 4])
    rows, cols = torch.tensor([0, 0, 0, 2, 2, 4]), torch.tensor([3, 3, 7, 0, 1, 2])
    left_in = {0: [0, 1, 2, 4, 5, 6, 8], 1: list(range(9)), 2: [2, 3, 4, 5, 6, 7, 8], 3: list(range(9)),
               4: [0, 1, 3, 4, 5, 6, 7, 8]}
    want = torch.stack([torch.logsumexp(h[p] @ w[left_in[p]].t(), 0) - h[p] @ w[t[p]] for p in range(5)]).mean()
    torch.testing.assert_close(linear_cross_entropy_ref(h, w, t, exclude=(rows, cols)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("exclude", "kwargs", "words"), [
    ((torch.tensor([0, 1]), torch.tensor([2, 1])), {}, "leaves out a row's own target"),
    ((torch.tensor([1, 0]), torch.tensor([2, 2])), {}, "ascending order"),
    ((torch.tensor([0, 3]), torch.tensor([2, 2])), {}, r"rows must be in \[0, 3\)"),
    ((torch.tensor([0]), torch.tensor([2])), {"label_smoothing": 0.1}, "label_smoothing"),
    ((torch.tensor([0, 1]), torch.tensor([2])), {}, "rows \\(E,\\) and cols \\(E,\\)"),
])
def test_bad_exclusions_are_errors(exclude, kwargs, words):
    h, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=words):
        linear_cross_entropy(h, w, torch.tensor([0, 1, 4]), exclude=exclude, **kwargs)


@pytest.mark.parametrize("seed,P,n,N,d", [(41, 37, 29, 40, 5), (42, 101, 53, 17, 7), (43, 1, 3, 5, 2),
                                         (44, 64, 300, 9, 4)])
@pytest.mark.parametrize("corrected", [False, True])
def test_sampled_softmax_leaves_excluded_draws_out_as_its_reference(seed, P, n, N, d, corrected):
    """Sampled softmax with ``exclude``: loss and gradients equal the row-by-row float64 reference;
    negatives drawn more than once (each draw of an excluded item goes), accidental hits, a logQ
    correction, and an item excluded from a row that was not drawn at all."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(P, d, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(n, d, generator=g, dtype=F64, requires_grad=True)
    t = torch.randint(1, n, (P,), generator=g)
    negatives = torch.randint(1, n, (N,), generator=g)
    negatives[-1] = negatives[0]  # a repeated draw
    log_q = torch.randn(N, generator=g, dtype=F64) if corrected else None
    rows, cols = random_pairs(t, n, P * n // 3 + 1, g)
    drawn = torch.isin(cols, negatives)
    assert drawn.any() and (~drawn).any()
    if (t[rows] != negatives[0]).any():  # the repeated item excluded from some row
        r = int(rows[t[rows] != negatives[0]][0])
        rows, cols = torch.cat([rows, torch.tensor([r])]), torch.cat([cols, negatives[:1]])
        rows, order = rows.sort(stable=True)
        cols = cols[order]
    got = sampled_softmax_cross_entropy(h, w, t, negatives, log_q, exclude=(rows, cols))
    want = sampled_softmax_cross_entropy_ref(h, w, t, negatives, log_q, exclude=(rows, cols))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(got, (h, w))
    for a, b in zip(grads, torch.autograd.grad(want, (h, w))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    plain = sampled_softmax_cross_entropy(h, w, t, negatives, log_q)
    assert float(got.detach()) < float(plain.detach()) or P * N < 10  # fewer negatives in each row: a smaller loss


def test_sampled_reference_lists_the_negatives_left_in():
    """The sampled reference itself, row by row, by hand."""
    g = torch.Generator().manual_seed(45)
    h, w = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(8, 4, generator=g, dtype=F64)
    t, negatives = torch.tensor([1, 5, 2]), torch.tensor([5, 3, 3, 7, 1])
    rows, cols = torch.tensor([0, 0, 2]), torch.tensor([3, 6, 7])
    left_in = {0: [5, 7], 1: [3, 3, 7, 1], 2: [5, 3, 3, 1]}  # row 0: 3 (twice) out, 1 its target; row 1: 5 its target
    want = torch.stack([torch.logsumexp(h[p] @ w[[int(t[p])] + left_in[p]].t(), 0) - h[p] @ w[t[p]]
                        for p in range(3)]).mean()
    got = sampled_softmax_cross_entropy_ref(h, w, t, negatives, exclude=(rows, cols))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sampled_softmax_cross_entropy(h, w, t, negatives, exclude=(rows, cols)), want,
                               rtol=1e-12, atol=1e-12)


def window_targets(histories, hidden):
    """(items read, target, output) of every position of one window per history: lists (P,),
    tensors (P,) and (P, d)."""
    inputs, targets, rows = [], [], []
    for b, hist in enumerate(histories):
        for t in range(len(hist) - 1):
            inputs.append(hist[: t + 1].tolist())
            targets.append(hist[t + 1])
            rows.append(hidden[b, t])
    return inputs, torch.stack(targets), torch.stack(rows)


def loop_loss(hidden, weight, inputs, targets):
    """Mean over the targets of CE with the items in ``inputs[k]`` (a list of ids) but the target
    left out: a set per target, obviously right."""
    losses = []
    for h, items, t in zip(hidden, inputs, targets):
        logits = h @ weight.t()
        out = sorted(set(items) - {int(t)} - {0})
        if out:
            logits = logits.index_fill(0, torch.tensor(out), float("-inf"))
        losses.append(F.cross_entropy(logits.unsqueeze(0), t.view(1)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("name", models_where(lambda cls: getattr(cls, "CE_SETTINGS", False)))
@pytest.mark.parametrize("seed", [31, 32])
def test_model_loss_leaves_out_what_each_target_read_under_both_regimes(name, seed, tiny_dataset, tiny_data):
    """Under 'all' each position's target leaves out the items of its window up to that position;
    under 'last' each prefix's target the items of its prefix. Histories with repeated items (a
    target equal to an item read earlier stays in its own softmax) and odd lengths; both regimes
    against the loop, in float64."""
    _config, train, _test = tiny_dataset
    g = torch.Generator().manual_seed(seed)
    histories = [torch.randint(1, 8, (n,), generator=g) for n in (9, 3, 12, 6, 2)]  # 7 items: many repeats
    histories[0][5] = histories[0][2]  # a target that was read before
    model = make_model(name, train, tiny_data, ce_filter_seen=True)
    weight = model.item_embedding.weight
    windows = window_batch(histories, 12)
    hidden = model.window_outputs(windows["item_id_list"], windows["item_length"])
    inputs, targets, rows = window_targets(histories, hidden)
    want = loop_loss(rows, weight, inputs, targets)
    got = model.calculate_loss(windows)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    plain = make_model(name, train, tiny_data)
    assert float(got.detach()) < float(plain.calculate_loss(windows).detach()) - 1e-6  # the option changed the loss
    prefixes = prefix_batch(histories, 12)
    last = model.forward(prefixes["item_id_list"], prefixes["item_length"])
    read = [p[:n].tolist() for p, n in zip(prefixes["item_id_list"], prefixes["item_length"])]
    want_last = loop_loss(last, weight, read, prefixes["item_id"])
    torch.testing.assert_close(model.calculate_loss(prefixes), want_last, rtol=1e-12, atol=1e-12)
    # the same targets with the same inputs: a causal model's two regimes give one loss
    torch.testing.assert_close(want_last, want, rtol=1e-10, atol=1e-10)


def sampled_loop_loss(hidden, weight, inputs, targets, negatives, log_q=None):
    """Mean over the targets of the sampled softmax over the target and each draw (less its
    correction ``log_q``, where given) that is neither the target nor an item of ``inputs[k]``: a
    set per target, obviously right."""
    losses = []
    for h, items, t in zip(hidden, inputs, targets):
        kept = [(int(j), float(log_q[k]) if log_q is not None else 0.0) for k, j in enumerate(negatives)
                if int(j) != int(t) and int(j) not in set(items)]
        logits = torch.stack([h @ weight[int(t)]] + [h @ weight[j] - q for j, q in kept])
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("name", models_where(lambda cls: getattr(cls, "CE_SETTINGS", False)))
@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_model_sampled_loss_leaves_out_what_each_target_read(name, sampler, tiny_dataset, tiny_data):
    """With ce_negatives: each target's row leaves out the negatives its input holds, under 'all'
    and 'last', against the loop over the same draws (the seed reset before each loss, so the
    model draws what the loop is given); the popularity sampler's logQ correction stays on the
    draws left in."""
    import math

    _config, train, _test = tiny_dataset
    model = make_model(name, train, tiny_data, ce_filter_seen=True, ce_negatives=64, ce_negative_sampler=sampler)
    weight = model.item_embedding.weight
    corrected = sampler == "popularity"
    # histories of 7 items likely to be drawn (the most popular ones under that sampler): draws hit inputs
    pool = model.ce_sampling_weights.topk(7).indices if corrected else torch.arange(1, 8)
    g = torch.Generator().manual_seed(33)
    histories = [pool[torch.randint(0, 7, (k,), generator=g)] for k in (9, 3, 12, 6, 2)]

    def loss_then_same_draws(batch, seed, outputs):
        """The model's loss, then (from the same seed) its outputs and the negatives it drew."""
        torch.manual_seed(seed)
        got = model.calculate_loss(batch)
        torch.manual_seed(seed)
        hidden = outputs(batch["item_id_list"], batch["item_length"])
        negatives, log_q = sample_negatives(model.n_items, 64, probs=model.ce_sampling_weights)
        return got, hidden, negatives, (log_q + math.log(64) if corrected else None)

    windows = window_batch(histories, 12)
    got, hidden, negatives, log_q = loss_then_same_draws(windows, 5, model.window_outputs)
    assert torch.isin(negatives, pool).any()  # some draws are items the windows read
    inputs, targets, rows = window_targets(histories, hidden)
    want = sampled_loop_loss(rows, weight, inputs, targets, negatives, log_q)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    prefixes = prefix_batch(histories, 12)
    got_last, last, negatives, log_q = loss_then_same_draws(prefixes, 6, model.forward)
    read = [p[:k].tolist() for p, k in zip(prefixes["item_id_list"], prefixes["item_length"])]
    want_last = sampled_loop_loss(last, weight, read, prefixes["item_id"], negatives, log_q)
    torch.testing.assert_close(got_last, want_last, rtol=1e-12, atol=1e-12)


def test_a_training_run_takes_it(tiny_data):
    """One epoch under 'all' through the package's run: the model's loss has the option on, and the
    run ends with a finite validation score."""
    import math

    from recbole_ssm.quick_start import run

    out = run("Mamba2Rec", "ml-tiny", None, {**TINY, **SMALL, "data_path": tiny_data, "train_targets": "all",
                                             "ce_filter_seen": True})
    assert out.trainer.model.ce_filter_seen is True
    assert math.isfinite(float(out.result["best_valid_score"]))


@pytest.mark.parametrize(("over", "words"), [
    ({"ce_label_smoothing": 0.1}, "ce_filter_seen applies to loss_type=CE"),
    ({"loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
     "ce_filter_seen applies to loss_type=CE"),
])
def test_settings_it_cannot_go_with_are_one_line_errors(over, words, tiny_dataset, tiny_data):
    _config, train, _test = tiny_dataset
    with pytest.raises(ConfigError, match=words) as err:
        make_model("Mamba2Rec", train, tiny_data, ce_filter_seen=True, **over)
    assert "\n" not in str(err.value)


def test_bad_value_and_a_model_without_it_are_one_line_errors(capsys):
    assert main(["--model=Mamba2Rec", "--epochs=1", "--ce_filter_seen=maybe"]) == 2
    assert_one_line_error(capsys.readouterr().err, "invalid ce_filter_seen=")
    assert main(["--model=BERT4Rec", "--epochs=1", "--ce_filter_seen=True"]) == 2
    assert_one_line_error(capsys.readouterr().err, "ce_filter_seen=True is not implemented for BERT4Rec's loss")
