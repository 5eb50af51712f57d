"""Each shim in compat.py is needed (unpatched RecBole misbehaves) and effective."""

from __future__ import annotations

import os
import pickle
import sys
import warnings

import pandas as pd
import pytest
import torch

from recbole_ssm import compat
from recbole_ssm.quick_start import build_config, run


def test_recbole_config_reads_sys_argv_unless_isolated(tiny_data, monkeypatch):
    from recbole.config import Config

    monkeypatch.setattr(sys, "argv", ["host-program", "--epochs=77"])
    raw = Config(model="SASRec", dataset="ml-100k", config_dict={"train_neg_sample_args": None})
    assert raw["epochs"] == 77  # needed: RecBole picks up the host's arguments
    config, _ = build_config("SASRec", "ml-tiny", None, {"data_path": tiny_data})
    assert config["epochs"] != 77  # effective


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_data):
    from tests.conftest import TINY

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ckpt"))
    try:
        out = run("SASRec", "ml-tiny", None, {**TINY, "data_path": tiny_data})
    finally:
        os.chdir(cwd)
    return out.saved_model_file


class _Foreign:
    pass


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_checkpoint_reads_recbole_checkpoints_but_not_code(checkpoint, tmp_path):
    state = compat.load_checkpoint(checkpoint)
    assert state["config"]["model"] == "SASRec"
    evil = tmp_path / "evil.pth"
    torch.save({"config": _Evil()}, evil)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        compat.load_checkpoint(str(evil))
    foreign = tmp_path / "foreign.pth"
    torch.save({"config": _Foreign()}, foreign)
    with pytest.raises(pickle.UnpicklingError, match="_Foreign"):
        compat.load_checkpoint(str(foreign))


def test_gradscaler_warning_is_silenced_only_inside_quiet_recbole():
    from torch.cuda import amp

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        amp.GradScaler(enabled=False)
    assert any("GradScaler" in str(w.message) for w in seen)  # needed
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with compat.quiet_recbole():
            amp.GradScaler(enabled=False)
    assert not any("GradScaler" in str(w.message) for w in seen)  # effective


def test_recbole_fill_nan_works_on_pinned_pandas_and_its_warning_is_silenced(tiny_data):
    from recbole.data.dataset import Dataset

    assert int(pd.__version__.split(".")[0]) < 3, "pandas 3 makes RecBole's in-place fillna a no-op"
    from tests.conftest import TINY

    config, _ = build_config("SASRec", "ml-tiny", None, {**TINY, "data_path": tiny_data})
    with compat.quiet_recbole():
        ds = Dataset(config)
    ds.inter_feat.loc[0, "rating"] = float("nan")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds._fill_nan()
    assert any("chained assignment" in str(w.message) for w in seen)  # needed
    assert not ds.inter_feat["rating"].isna().any()  # and the fill really happened
    ds.inter_feat.loc[0, "rating"] = float("nan")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with compat.quiet_recbole():
            ds._fill_nan()
    assert not any("chained assignment" in str(w.message) for w in seen)  # effective


def test_recbole_trainer_load_fails_on_new_torch_unless_inside_checkpoint_loading(checkpoint, tmp_path):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(checkpoint)  # needed: weights_only=True by default since torch 2.6
    plain_load = torch.load
    with compat.recbole_checkpoint_loading():
        state = torch.load(checkpoint)
    assert "state_dict" in state and state["config"]["model"] == "SASRec"
    evil = tmp_path / "evil.pth"
    torch.save({"config": _Evil()}, evil)
    with compat.recbole_checkpoint_loading(), pytest.raises(pickle.UnpicklingError):
        torch.load(str(evil))  # still no code from the file
    assert torch.load is plain_load  # restored after the block


def test_checkpoint_unpickler_reads_numpy_scalars_as_numpy_1_and_2_pickle_them():
    import io

    import numpy as np

    data = pickle.dumps({"ndcg@10": np.float64(0.5)}, protocol=3)  # GLOBAL opcodes: module names can be swapped
    written = b"numpy._core.multiarray" if b"numpy._core.multiarray" in data else b"numpy.core.multiarray"
    for module in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        state = compat._CheckpointUnpickler(io.BytesIO(data.replace(written, module))).load()
        assert state == {"ndcg@10": 0.5}


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python 3.12+ reports invalid escapes as SyntaxWarning")
def test_recbole_syntax_warnings_are_silenced_for_recboles_files_only():
    import recbole.model.sequential_recommender.dien as dien

    with open(dien.__file__, encoding="utf-8") as f:
        source = f.read()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compile(source, dien.__file__, "exec")
    assert any(issubclass(w.category, SyntaxWarning) for w in seen)  # needed
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compat.silence_recbole_syntax_warnings()
        compile(source, dien.__file__, "exec")
        compile(source, os.path.join("elsewhere", "mine.py"), "exec")
    files = {w.filename for w in seen if issubclass(w.category, SyntaxWarning)}
    assert files == {os.path.join("elsewhere", "mine.py")}  # effective, and only for RecBole's files


def _anomaly_after(code: str) -> list[str]:
    import subprocess

    out = subprocess.run([sys.executable, "-c", code + "\nprint(torch.is_anomaly_enabled())"],
                         capture_output=True, text=True, timeout=300, check=True)
    return out.stdout.split()


def test_importing_recboles_models_leaves_anomaly_mode_as_it_was():
    # needed: RecBole's sequential models package switches autograd's anomaly mode on for good
    assert _anomaly_after("import torch; import recbole.model.sequential_recommender") == ["True"]
    # effective, by every path recbole-ssm imports it: the plugin's models, a RecBole model by name,
    # and a checkpoint's classes
    assert _anomaly_after("import torch; import recbole_ssm.models.sasrec") == ["False"]
    assert _anomaly_after("import torch; from recbole_ssm import get_model; get_model('NARM')") == ["False"]
    assert _anomaly_after("import torch; from recbole_ssm import compat; compat.import_recbole_sequential_models()"
                          ) == ["False"]
    # a process that asked for anomaly mode keeps it
    assert _anomaly_after("import torch; torch.autograd.set_detect_anomaly(True); import recbole_ssm.models\n"
                          "print(torch.is_anomaly_check_nan_enabled())") == ["True", "True"]


def test_recbole_reads_atomic_files_with_the_python_engine_unless_c_engine_atomic_files(tmp_path, monkeypatch):
    """Needed: RecBole asks pandas for its slow python engine. Effective: inside the block the C
    engine reads, and the frame is the same (quoted tokens, floats, empty fields, odd spacing)."""
    from recbole.data.dataset import dataset as recbole_dataset

    path = tmp_path / "x.inter"
    path.write_text('user_id:token\titem_id:token\trating:float\ttimestamp:float\n'
                    'u1\t"a b"\t4.5\t881250949\n u2 \ti,2\t\t1e9\nu3\t\'q\'\t-0.25\t12.75\n')
    engines = []
    real = pd.read_csv

    def spy(*args, **kwargs):
        engines.append(kwargs.get("engine"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", spy)
    kwargs = {"delimiter": "\t", "usecols": None, "encoding": "utf-8", "engine": "python",
              "dtype": {"user_id:token": str, "item_id:token": str, "rating:float": float, "timestamp:float": float}}
    theirs = recbole_dataset.pd.read_csv(path, **kwargs)
    with compat.c_engine_atomic_files():
        ours = recbole_dataset.pd.read_csv(path, **kwargs)
        assert recbole_dataset.pd is not pd
    assert recbole_dataset.pd is pd
    assert engines == ["python", "c"]
    pd.testing.assert_frame_equal(ours, theirs)
    import inspect

    assert 'engine="python"' in inspect.getsource(recbole_dataset.Dataset._load_feat)  # still needed
