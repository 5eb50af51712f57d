"""Each SSM model learns: 2 epochs through the CLI beat the popularity ranking on the same split."""

from __future__ import annotations

import re

import pytest

from recbole_ssm.checkpoint import evaluate_checkpoint
from recbole_ssm.cli import main
from recbole_ssm.quick_start import run
from tests.conftest import TINY, write_ml100k_slice

SETTINGS = ["--epochs=2", "--MAX_ITEM_LIST_LENGTH=20", "--hidden_size=32", "--learning_rate=0.005",
            "--train_batch_size=512", "--eval_batch_size=1024", "--state=WARNING", "--show_progress=False"]


@pytest.fixture(scope="module")
def slice300(tmp_path_factory) -> str:
    return write_ml100k_slice(str(tmp_path_factory.mktemp("data300")), "ml-300", max_user=300)


def valid_ndcg(model: str, data_path: str, capsys) -> float:
    assert main([f"--model={model}", "--dataset=ml-300", f"--data_path={data_path}", *SETTINGS]) == 0
    out = capsys.readouterr().out
    return float(re.search(r"^valid .*ndcg@10=([0-9.]+)", out, re.M).group(1))


@pytest.fixture(scope="module")
def popularity(slice300) -> float:
    pytest.MonkeyPatch().setenv("RECBOLE_SSM_OFFLINE", "1")
    out = run("SeqPop", "ml-300", None, {**TINY, "data_path": slice300, "MAX_ITEM_LIST_LENGTH": 20}, saved=False)
    return out.result["best_valid_result"]["ndcg@10"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["Mamba4Rec", "2Mamba4Rec", "Hydra4Rec"])
def test_two_epochs_beat_popularity(model, slice300, popularity, capsys):
    assert popularity > 0.0
    assert valid_ndcg(model, slice300, capsys) > popularity


@pytest.mark.parametrize("model", ["Mamba4Rec", "Mamba2Rec", "Hydra4Rec"])
def test_saved_model_reloads_with_identical_test_metrics(model, tiny_config):
    out = run(model, "ml-tiny", None, {**tiny_config, "headdim": 16})
    assert dict(evaluate_checkpoint(out.saved_model_file)) == dict(out.result["test_result"])
