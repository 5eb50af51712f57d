"""Step-wise inference of the causal SSM recommenders: a user's state updated one item at a time
gives the same scores as encoding the whole history (full_sort_predict)."""

from __future__ import annotations

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_ssm.serve.state import stepwise
from tests.conftest import models_where
from tests.test_models import dataset, make, random_batch  # noqa: F401  (dataset is a fixture)

CAUSAL = models_where(stepwise)  # the step API (what the service steps): GRU4Rec, Mamba2Rec, Mamba4Rec, RecMamba


def full_scores(model, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    return model.full_sort_predict(Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens}))


# CPU always; CUDA too where there is one (recbole-ssm's kernels, or mamba-ssm's where they import)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def stepwise_model(name, dataset, tiny_data, seed, device="cpu", **over):  # noqa: F811
    model = make(name, dataset, tiny_data, num_layers=2, **over)
    with torch.no_grad():  # weights away from the near-zero initialisation, so that errors show
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.device = torch.device(device)
    return model.to(device).eval()


def assert_scores_close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("seed", [41, 42])
def test_stepping_item_by_item_scores_like_the_whole_history(dataset, tiny_data, name, seed):  # noqa: F811
    model = stepwise_model(name, dataset, tiny_data, seed)
    seq, lens = random_batch(dataset.item_num, [13, 13, 13], 20, seed)
    with torch.no_grad():
        state = model.init_state(3)
        for t in range(13):
            model.step(state, seq[:, t])
            if t + 1 in (1, 6, 13):
                prefix = seq.clone()
                prefix[:, t + 1:] = 0
                assert_scores_close(model.score(state), full_scores(model, prefix, torch.full((3,), t + 1)))
    assert state.length.tolist() == [13, 13, 13]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CAUSAL)
def test_state_from_mixed_lengths_then_steps_scores_like_the_whole_history(dataset, tiny_data, name, device):  # noqa: F811
    model = stepwise_model(name, dataset, tiny_data, 43, device)
    lengths = [13, 1, 7, 17, 4]
    seq, lens = random_batch(dataset.item_num, lengths, 20, 44)
    new = torch.randint(1, dataset.item_num, (5, 3), generator=torch.Generator().manual_seed(45))
    seq, lens, new = seq.to(device), lens.to(device), new.to(device)
    with torch.no_grad():
        state = model.state_from(seq, lens)
        assert_scores_close(model.score(state), full_scores(model, seq, lens))
        size = state.nbytes()
        longer = seq.clone()
        for k in range(3):
            model.step(state, new[:, k])
            longer[torch.arange(5, device=device), lens + k] = new[:, k]
        assert_scores_close(model.score(state), full_scores(model, longer, lens + 3))
    assert state.nbytes() == size  # constant-size state


def test_a_bidirectional_model_has_no_stepwise_update(dataset, tiny_data):  # noqa: F811
    model = make("Hydra4Rec", dataset, tiny_data)
    with pytest.raises(NotImplementedError, match="Hydra4Rec is bidirectional"):
        model.init_state(2)


def test_recmamba_cannot_step_past_its_learned_positions(dataset, tiny_data):  # noqa: F811
    model = make("RecMamba", dataset, tiny_data)
    seq, lens = random_batch(dataset.item_num, [20], 20, 46)
    with torch.no_grad():
        state = model.state_from(seq, lens)
        with pytest.raises(ValueError, match="MAX_ITEM_LIST_LENGTH=20"):
            model.step(state, torch.tensor([5]))


def test_recmamba_without_positions_steps_past_max_item_list_length(dataset, tiny_data):  # noqa: F811
    model = stepwise_model("RecMamba", dataset, tiny_data, 47, position_embedding=False)
    assert model.position_embedding is None and not model.bounded_positions
    assert not any("position" in name for name, _ in model.named_parameters())
    seq, lens = random_batch(dataset.item_num, [20, 9], 27, 48)  # L=20: the first row fills it
    new = torch.randint(1, dataset.item_num, (2, 7), generator=torch.Generator().manual_seed(49))
    longer = seq.clone()
    with torch.no_grad():
        state = model.state_from(seq[:, :20], lens)
        for k in range(7):
            model.step(state, new[:, k])
            longer[torch.arange(2), lens + k] = new[:, k]
        # 27 items in the first row, 7 past L: the scores of the whole history, read at once
        assert_scores_close(model.score(state), full_scores(model, longer, lens + 7))
    assert state.length.tolist() == [27, 16]
