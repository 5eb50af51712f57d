"""A saved model evaluated in a new Python process, where no Config was ever built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from recbole_ssm import compat
from recbole_ssm.quick_start import run
from tests.conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_python(code: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "RECBOLE_SSM_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_recboles_ndcg_needs_the_numpy_aliases_that_importing_recbole_ssm_defines(tmp_path):
    code = """
        import numpy as np
        {imp}
        from recbole.evaluator.metrics import NDCG
        print(NDCG.metric_info(NDCG, np.array([[True, False]]), np.array([1])).tolist())
    """
    without = fresh_python(code.format(imp=""), str(tmp_path))
    assert without.returncode != 0 and "has no attribute 'float'" in without.stderr  # needed
    with_ = fresh_python(code.format(imp="import recbole_ssm"), str(tmp_path))
    assert with_.returncode == 0, with_.stderr  # effective
    assert json.loads(with_.stdout) == [[1.0, 1.0]]


def test_numpy_aliases_are_defined_only_where_missing():
    import numpy as np

    before = np.float64
    assert compat.restore_numpy_aliases() == []  # importing recbole_ssm already did it
    assert np.float is np.float64 and np.float64 is before and np.long is np.int_


@pytest.mark.parametrize("model", ["SASRec", "Mamba2Rec"])
def test_checkpoint_evaluates_in_a_fresh_process_to_the_training_runs_metrics(model, tiny_config, tmp_path):
    out = run(model, "ml-tiny", None, {**tiny_config, "epochs": 2, "headdim": 16,
                                       "checkpoint_dir": str(tmp_path / "saved")})
    code = f"""
        import json, torch
        from recbole_ssm.checkpoint import evaluate_checkpoint, load_data_and_model
        res = dict(evaluate_checkpoint({out.saved_model_file!r}, "test"))
        config, model, dataset, train, valid, test = load_data_and_model({out.saved_model_file!r})
        model.eval()
        with torch.no_grad():
            batch = next(iter(test))
            scores = model.full_sort_predict(batch[0])
        print(json.dumps({{"test": res, "scores": list(scores.shape)}}))
    """
    done = fresh_python(code, str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["test"] == {k: float(v) for k, v in out.result["test_result"].items()}  # exactly
    assert got["scores"][1] == out.model.n_items


def test_a_gpu_checkpoint_evaluates_on_a_machine_without_one(tiny_config, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the fallback to the CPU is not exercised")
    out = run("Mamba2Rec", "ml-tiny", None, {**tiny_config, "headdim": 16, "checkpoint_dir": str(tmp_path)})
    state = compat.load_checkpoint(out.saved_model_file)
    state["config"]["device"] = torch.device("cuda")  # as written by a training run on a GPU
    state["config"]["use_gpu"] = True
    gpu_file = str(tmp_path / "gpu.pth")
    torch.save(state, gpu_file, pickle_protocol=4)  # as RecBole writes checkpoints
    code = f"""
        import json
        from recbole_ssm.checkpoint import evaluate_checkpoint
        print(json.dumps(dict(evaluate_checkpoint({gpu_file!r}, "test"))))
    """
    done = fresh_python(code, str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {k: float(v) for k, v in
                                                                 out.result["test_result"].items()}


def test_a_checkpoint_whose_data_set_is_gone_is_a_one_line_error(tiny_config, tmp_path):
    from recbole_ssm.checkpoint import evaluate_checkpoint
    from recbole_ssm.errors import UsageError

    out = run("SASRec", "ml-tiny", None, {**tiny_config, **TINY, "data_path": tiny_config["data_path"],
                                          "checkpoint_dir": str(tmp_path)})
    state = compat.load_checkpoint(out.saved_model_file)
    state["config"]["data_path"] = str(tmp_path / "elsewhere" / "ml-tiny")
    moved = str(tmp_path / "moved.pth")
    torch.save(state, moved, pickle_protocol=4)
    with pytest.raises(UsageError, match="data set folder .*elsewhere/ml-tiny does not exist"):
        evaluate_checkpoint(moved)
    with pytest.raises(UsageError, match="checkpoint not found"):
        evaluate_checkpoint(str(tmp_path / "nope.pth"))
