"""Mamba4Rec, Mamba2Rec and Hydra4Rec as RecBole sequential recommenders."""

from __future__ import annotations

import pytest
import torch

from recbole_ssm import get_model
from recbole_ssm.cli import main
from recbole_ssm.errors import ConfigError
from recbole_ssm.models import Hydra4Rec, Mamba2Rec, Mamba4Rec
from recbole_ssm.quick_start import build_config
from recbole_ssm.utils import count_parameters
from tests.conftest import TINY

MODELS = ["Mamba4Rec", "Mamba2Rec", "Hydra4Rec", "RecMamba"]
SMALL = {"hidden_size": 16, "headdim": 8, "d_state": 8, "chunk_size": 8}


@pytest.fixture(scope="module")
def dataset(tiny_data):
    from recbole.data import create_dataset

    from recbole_ssm import compat

    config, _ = build_config("Hydra4Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data})
    with compat.quiet_recbole():
        return create_dataset(config)


def make(name: str, dataset, tiny_data, **over):
    config, cls = build_config(name, "ml-tiny", None, {**TINY, **SMALL, "data_path": tiny_data, **over})
    torch.manual_seed(0)
    return cls(config, dataset).eval()


def random_batch(n_items: int, lengths: list[int], width: int, seed: int, fill: str = "zero"):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items, (len(lengths), width), generator=g)
    lens = torch.tensor(lengths)
    pad = torch.arange(width).unsqueeze(0) >= lens.unsqueeze(1)
    if fill == "zero":
        seq[pad] = 0  # RecBole's right padding
    return seq, lens  # fill == "junk": arbitrary items after the real ones


def test_registry_knows_the_models_and_the_paper_alias():
    assert get_model("Mamba4Rec") is Mamba4Rec
    assert get_model("Hydra4Rec") is Hydra4Rec
    assert get_model("Mamba2Rec") is Mamba2Rec
    assert get_model("2Mamba4Rec") is Mamba2Rec
    assert get_model("RecMamba").__name__ == "RecMamba"


def test_recmamba_reads_lifelong_histories_by_default(tiny_data):
    config, _ = build_config("RecMamba", "ml-tiny", None, {"data_path": tiny_data})
    assert config["MAX_ITEM_LIST_LENGTH"] == 2048


@pytest.mark.parametrize("seed", [11, 12])
def test_hydra_output_ignores_padding(dataset, tiny_data, seed):
    model = make("Hydra4Rec", dataset, tiny_data, trim_padding=False)
    lengths = torch.randint(1, 20, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
    lengths[0] = 20
    seq20, lens = random_batch(dataset.item_num, lengths, 20, seed)
    seq50 = torch.cat([seq20, torch.zeros(len(lengths), 30, dtype=torch.long)], dim=1)
    junk, _ = random_batch(dataset.item_num, lengths, 50, seed + 100, fill="junk")
    junk[:, :20] = torch.where(seq20 > 0, seq20, junk[:, :20])
    with torch.no_grad():
        out20 = model(seq20, lens)
        out50 = model(seq50, lens)
        out_junk = model(junk, lens)
    torch.testing.assert_close(out50, out20, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_junk, out20, rtol=1e-5, atol=1e-5)


def test_hydra_looks_in_both_directions(dataset, tiny_data):
    """Sanity check of the test above: Hydra's output does depend on earlier real items."""
    model = make("Hydra4Rec", dataset, tiny_data)
    seq, lens = random_batch(dataset.item_num, [10, 10], 20, 3)
    other = seq.clone()
    other[:, 0] = (other[:, 0] % (dataset.item_num - 2)) + 1
    with torch.no_grad():
        assert not torch.allclose(model(seq, lens), model(other, lens))


@pytest.mark.parametrize("name", ["Mamba4Rec", "Mamba2Rec", "RecMamba"])
def test_causal_models_ignore_future_items(dataset, tiny_data, name):
    model = make(name, dataset, tiny_data, trim_padding=False, num_layers=2)
    seq, _ = random_batch(dataset.item_num, [20] * 4, 20, 5, fill="junk")
    lens = torch.tensor([7, 12, 1, 19])
    future = seq.clone()
    for row, n in enumerate(lens.tolist()):
        future[row, n:] = torch.randint(1, dataset.item_num, (20 - n,))
    with torch.no_grad():
        torch.testing.assert_close(model(future, lens), model(seq, lens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_trimming_padding_does_not_change_output(dataset, tiny_data, name):
    trimmed = make(name, dataset, tiny_data, trim_padding=True)
    full = make(name, dataset, tiny_data, trim_padding=False)
    full.load_state_dict(trimmed.state_dict())
    seq, lens = random_batch(dataset.item_num, [3, 9, 5, 1, 11], 20, 9)
    with torch.no_grad():
        torch.testing.assert_close(trimmed(seq, lens), full(seq, lens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_last_layer_at_the_read_position_equals_the_full_layer_gathered(dataset, tiny_data, name, num_layers):
    """The last layer computes only position item_seq_len - 1 of each row; the full-sequence
    layer gathered there must give the same output and the same gradients (float64)."""
    model = make(name, dataset, tiny_data, num_layers=num_layers).double()
    seq, lens = random_batch(dataset.item_num, [3, 9, 5, 1, 12, 7], 12, num_layers + 5)

    def full_path():
        x = model.embed(seq)
        mask = torch.arange(seq.size(1)).unsqueeze(0) < lens.unsqueeze(1) if model.bidirectional else None
        for layer in model.layers:
            x = layer(x, mask)
        return model.gather_indexes(x, lens - 1)

    params = list(model.parameters())
    fast = model(seq, lens)
    ref = full_path()
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
    g_fast = torch.autograd.grad((fast * w).sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad((ref * w).sum(), params, allow_unused=True)
    for (n, _), a, b in zip(model.named_parameters(), g_fast, g_ref):
        if b is None:
            assert a is None or not a.abs().any(), n
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("name", MODELS)
def test_full_sort_predict_scores_every_item_and_loss_backpropagates(dataset, tiny_data, name):
    from recbole.data.interaction import Interaction

    model = make(name, dataset, tiny_data)
    seq, lens = random_batch(dataset.item_num, [4, 8, 2], 20, 1)
    inter = Interaction({"item_id_list": seq, "item_length": lens, "item_id": torch.tensor([1, 2, 3])})
    scores = model.full_sort_predict(inter)
    assert scores.shape == (3, dataset.item_num)
    torch.testing.assert_close(model.predict(inter), scores.gather(1, torch.tensor([[1], [2], [3]])).squeeze(1))
    loss = model.train().calculate_loss(inter)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if "item_embedding" in n)


def test_bpr_loss_is_supported(dataset, tiny_data):
    from recbole.data.interaction import Interaction

    model = make("Hydra4Rec", dataset, tiny_data, loss_type="BPR",
                 train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    seq, lens = random_batch(dataset.item_num, [4, 8], 20, 2)
    inter = Interaction({"item_id_list": seq, "item_length": lens, "item_id": torch.tensor([1, 2]),
                         "neg_item_id": torch.tensor([5, 6])})
    loss = model.calculate_loss(inter)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_parameter_counts_with_and_without_embeddings(dataset, tiny_data):
    model = make("Mamba4Rec", dataset, tiny_data)
    total, without = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    assert total - without == dataset.item_num * SMALL["hidden_size"]


@pytest.mark.parametrize(
    "name, over, key",
    [
        ("Hydra4Rec", {"d_conv": 4}, "d_conv"),
        ("Hydra4Rec", {"headdim": 12}, "headdim"),
        ("Mamba2Rec", {"headdim": 7}, "headdim"),
        ("Mamba2Rec", {"ngroups": 3}, "ngroups"),
        ("Mamba4Rec", {"d_state": 0}, "d_state"),
        ("Mamba4Rec", {"hidden_size": -4}, "hidden_size"),
        ("Mamba4Rec", {"num_layers": 0}, "num_layers"),
        ("Mamba4Rec", {"dropout_prob": 1.5}, "dropout_prob"),
        ("Hydra4Rec", {"loss_type": "MSE"}, "loss_type"),
    ],
)
def test_invalid_hyperparameter_is_a_clear_error_naming_the_key(dataset, tiny_data, name, over, key):
    with pytest.raises(ConfigError, match=rf"\b{key}\b"):
        make(name, dataset, tiny_data, **over)


def test_invalid_hyperparameter_through_the_cli_exits_2(tiny_data, capsys):
    code = main(["--model=Hydra4Rec", "--dataset=ml-tiny", f"--data_path={tiny_data}", "--d_conv=4",
                 "--state=WARNING"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: invalid d_conv=4") and len(err.splitlines()) == 1


@pytest.mark.parametrize("gate_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_gated_projection_at_index_equals_the_full_projection_gathered(gate_first, bias):
    from recbole_ssm.layers.block import gated_projection

    torch.manual_seed(0)
    proj = torch.nn.Linear(6, 10, bias=bias).double()
    hidden = torch.randn(4, 7, 6, dtype=torch.float64)
    index = torch.tensor([0, 6, 3, 2])
    gate, rest = gated_projection(proj, hidden, 3, gate_first)
    full = proj(hidden)
    torch.testing.assert_close(gate, full[..., :3] if gate_first else full[..., -3:])
    torch.testing.assert_close(rest, full[..., 3:] if gate_first else full[..., :-3])
    gate_at, rest_at = gated_projection(proj, hidden, 3, gate_first, index)
    torch.testing.assert_close(gate_at, gate[torch.arange(4), index])
    torch.testing.assert_close(rest_at, rest)
