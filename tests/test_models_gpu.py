"""The models on CUDA (skipped without it): the fused mamba-ssm / causal-conv1d path against
recbole-ssm's own PyTorch kernels on the same device and weights, and step-wise inference
against the whole history, on the GPU."""

from __future__ import annotations

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_ssm.ops import backend as B
from tests.test_models import dataset, make, random_batch  # noqa: F401  (dataset is a fixture)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SSMS = ["Mamba4Rec", "Mamba2Rec", "RecMamba", "Hydra4Rec"]
CAUSAL = ["Mamba4Rec", "Mamba2Rec", "RecMamba"]
HAS_KERNELS = B.mamba_selective_scan() is not None and B.mamba_ssd() is not None


def cuda_model(name, dataset, tiny_data, seed):  # noqa: F811
    model = make(name, dataset, tiny_data, num_layers=2)
    with torch.no_grad():  # weights away from the near-zero initialisation, so that errors show
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model = model.to("cuda")
    model.device = torch.device("cuda")
    return model


def forward_and_grads(model, seq, lens):
    model.zero_grad(set_to_none=True)
    out = model.forward(seq, lens)
    (out * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.skipif(not HAS_KERNELS, reason="needs an importable mamba_ssm")
@pytest.mark.parametrize("name", SSMS)
def test_fused_kernels_match_the_pytorch_kernels_in_a_model(monkeypatch, dataset, tiny_data, name):  # noqa: F811
    model = cuda_model(name, dataset, tiny_data, 51).train()
    for m in model.modules():  # dropout off, the rest of training mode kept
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    seq, lens = random_batch(dataset.item_num, [17, 3, 20, 9], 20, 52)
    seq, lens = seq.cuda(), lens.cuda()
    monkeypatch.setenv(B.ENV_VAR, "cuda")
    fused, fused_grads = forward_and_grads(model, seq, lens)
    monkeypatch.setenv(B.ENV_VAR, "torch")
    ref, ref_grads = forward_and_grads(model, seq, lens)
    torch.testing.assert_close(fused, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
    assert fused_grads.keys() == ref_grads.keys() and fused_grads
    for n, g in ref_grads.items():
        torch.testing.assert_close(fused_grads[n], g, rtol=2e-3, atol=2e-3 * float(g.abs().max()) + 1e-6, msg=n)


@pytest.mark.parametrize("name", CAUSAL)
def test_stepping_on_cuda_scores_like_the_whole_history(dataset, tiny_data, name):  # noqa: F811
    model = cuda_model(name, dataset, tiny_data, 53).eval()
    lengths = [13, 1, 7, 17, 4]
    seq, lens = random_batch(dataset.item_num, lengths, 20, 54)
    new = torch.randint(1, dataset.item_num, (5, 3), generator=torch.Generator().manual_seed(55))
    seq, lens, new = seq.cuda(), lens.cuda(), new.cuda()

    def full(s, n):
        return model.full_sort_predict(Interaction({model.ITEM_SEQ: s, model.ITEM_SEQ_LEN: n}).to("cuda"))

    with torch.no_grad():
        state = model.state_from(seq, lens)
        want = full(seq, lens)
        torch.testing.assert_close(model.score(state), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
        longer = seq.clone()
        rows = torch.arange(5, device="cuda")
        for k in range(3):
            model.step(state, new[:, k])
            longer[rows, lens + k] = new[:, k]
        want = full(longer, lens + 3)
        torch.testing.assert_close(model.score(state), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
