"""The models on CUDA (skipped without it): the fused mamba-ssm / causal-conv1d path against
recbole-ssm's own PyTorch kernels on the same device and weights. (Step-wise inference on CUDA:
tests/test_stepwise.py, parametrized by device.)"""

from __future__ import annotations

import pytest
import torch

from recbole_ssm.ops import backend as B
from tests.conftest import is_ssm, models_where
from tests.test_models import dataset, random_batch  # noqa: F401  (dataset is a fixture)
from tests.test_stepwise import stepwise_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SSMS = models_where(is_ssm)
HAS_KERNELS = B.mamba_selective_scan() is not None and B.mamba_ssd() is not None


def forward_and_grads(model, seq, lens):
    model.zero_grad(set_to_none=True)
    out = model.forward(seq, lens)
    (out * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.skipif(not HAS_KERNELS, reason="needs an importable mamba_ssm")
@pytest.mark.parametrize("name", SSMS)
def test_fused_kernels_match_the_pytorch_kernels_in_a_model(monkeypatch, dataset, tiny_data, name):  # noqa: F811
    model = stepwise_model(name, dataset, tiny_data, 51, "cuda").train()
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
