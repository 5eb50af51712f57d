"""The mixer contract (recbole_ssm/layers/contract.py): every mixer is a Mixer, the causal ones a
CausalMixer, whose forward, prefill and step agree on random right-padded batches."""

from __future__ import annotations

import pytest
import torch

from recbole_ssm.layers import HydraMixer, Mamba2Mixer, MambaMixer
from recbole_ssm.layers.contract import CausalMixer, Mixer

CAUSAL_MIXERS = {
    "mamba": lambda: MambaMixer(8, d_state=4, d_conv=4, expand=2),
    "mamba2": lambda: Mamba2Mixer(8, d_state=4, d_conv=4, expand=2, headdim=4, chunk_size=4),
}


def check_causal_contract(mixer, seed: int) -> None:
    """forward, prefill and step, one position at a time, give the same outputs on the real
    positions of a right-padded batch of odd lengths, and prefill's state is step's state. In
    float64, to float32 rounding: the SSM state is kept in float32 (as mamba keeps it)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 3, 1])
    hidden = torch.randn(3, 7, 8, generator=g, dtype=torch.float64)
    mask = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)
    hidden = hidden * mask.unsqueeze(-1)
    with torch.no_grad():
        whole = mixer(hidden, mask)
        pre, pre_state = mixer.prefill(hidden, lengths)
        state = mixer.new_state(3, dtype=torch.float64)
        for t in range(7):
            out = mixer.step(hidden[:, t], state)
            live = mask[:, t]
            torch.testing.assert_close(out[live], whole[live, t], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(pre[live, t], whole[live, t], rtol=1e-5, atol=1e-6)
            if t == 0:  # the shortest row ends here: its state must be prefill's
                torch.testing.assert_close(state[-1][2], pre_state[-1][2].to(state[-1].dtype), rtol=1e-5, atol=1e-6)
    for got, want in zip(state, pre_state):  # the longest row, after its last item
        torch.testing.assert_close(got[0].to(torch.float64), want[0].to(torch.float64), rtol=1e-5, atol=1e-6)


def test_every_mixer_is_a_mixer_and_the_causal_ones_have_the_step_api():
    hydra = HydraMixer(8, d_state=4, d_conv=3, expand=2, headdim=4, chunk_size=4)
    assert isinstance(hydra, Mixer) and not isinstance(hydra, CausalMixer)
    for make in CAUSAL_MIXERS.values():
        assert isinstance(make(), CausalMixer)


@pytest.mark.parametrize("name", sorted(CAUSAL_MIXERS))
def test_causal_mixers_forward_prefill_and_step_agree(name):
    torch.manual_seed(0)
    mixer = CAUSAL_MIXERS[name]().double().eval()
    with torch.no_grad():  # weights away from the near-zero initialisation, so that errors show
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for seed in (1, 2):
        check_causal_contract(mixer, seed)


def test_the_contract_check_fails_for_a_step_that_forgets_its_state():
    class Forgetful(MambaMixer):
        def step(self, hidden, state):
            return super().step(hidden, self.new_state(hidden.size(0), dtype=hidden.dtype))

    torch.manual_seed(0)
    mixer = Forgetful(8, d_state=4, d_conv=4, expand=2).double().eval()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    with pytest.raises(AssertionError):
        check_causal_contract(mixer, 1)
