"""Config precedence: RecBole < overall.yaml < model yaml < dataset yaml < --config_files < --KEY=VALUE."""

from __future__ import annotations

import os

import pytest
import yaml

from recbole_ssm import config as cfg
from recbole_ssm.errors import ConfigError, UsageError
from recbole_ssm.quick_start import build_config
from tests.conftest import write_ml100k_slice


def write(path: str, data: dict) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


@pytest.fixture
def props(tmp_path, monkeypatch):
    """A properties folder where each level sets keys a..e (and the levels above it override)."""
    root = tmp_path / "props"
    write(str(root / "overall.yaml"), {"key_a": "overall", "key_b": "overall", "key_c": "overall",
                                       "key_d": "overall", "key_e": "overall", "eval_batch_size": 123,
                                       "metrics": ["Hit", "NDCG"], "valid_metric": "NDCG@10",
                                       "train_neg_sample_args": None})
    write(str(root / "model" / "SASRec.yaml"), {"key_b": "model", "key_c": "model", "key_d": "model",
                                               "key_e": "model"})
    write(str(root / "dataset" / "ml-tiny.yaml"), {"key_c": "dataset", "key_d": "dataset", "key_e": "dataset"})
    monkeypatch.setattr(cfg, "PROPERTIES_DIR", str(root))
    return root


def test_tuned_settings_sit_above_the_data_set_and_below_the_user(props, tiny_data, tmp_path):
    """properties/tuned/<dataset>/<Model>.yaml (the sweeps' choice for that pair) overrides the data
    set's file and is overridden by the user's files and command line; tuned_defaults=False skips it,
    and another model on the same data set never reads it."""
    write(str(props / "tuned" / "ml-tiny" / "SASRec.yaml"), {"key_c": "tuned", "key_d": "tuned", "key_e": "tuned"})
    user_file = write(str(tmp_path / "user.yaml"), {"key_e": "file", "data_path": tiny_data})
    config, _ = build_config("SASRec", "ml-tiny", [user_file], {})
    assert (config["key_b"], config["key_c"], config["key_d"], config["key_e"]) == ("model", "tuned", "tuned", "file")
    assert cfg.tuned_file("SASRec", "ml-tiny") in cfg.property_files("SASRec", "ml-tiny", tiny_data)
    plain, _ = build_config("SASRec", "ml-tiny", [user_file], {"tuned_defaults": False})
    assert plain["key_c"] == plain["key_d"] == "dataset"
    write(str(props / "model" / "GRU4Rec.yaml"), {"key_b": "model"})
    other, _ = build_config("GRU4Rec", "ml-tiny", [user_file], {})
    assert other["key_c"] == other["key_d"] == "dataset"


def test_each_level_wins_where_it_should(props, tiny_data, tmp_path):
    user_file = write(str(tmp_path / "user.yaml"), {"key_d": "file", "key_e": "file", "data_path": tiny_data})
    config, _ = build_config("SASRec", "ml-tiny", [user_file], {"key_e": "cmd"})
    assert config["key_a"] == "overall"
    assert config["key_b"] == "model"
    assert config["key_c"] == "dataset"
    assert config["key_d"] == "file"
    assert config["key_e"] == "cmd"
    # overall.yaml beats RecBole's default (4096); RecBole's defaults fill what nobody set.
    assert config["eval_batch_size"] == 123
    assert config["learning_rate"] == pytest.approx(0.001)
    # RecBole's model yaml for SASRec still applies below ours
    assert config["n_heads"] == 2


def test_the_yaml_beside_the_atomic_files_sits_between_the_package_and_the_user(props, tiny_data, tmp_path):
    beside = os.path.join(tiny_data, "ml-tiny", "ml-tiny.yaml")
    write(beside, {"key_c": "beside", "key_d": "beside", "key_e": "beside"})
    try:
        user_file = write(str(tmp_path / "user.yaml"), {"key_d": "file", "data_path": tiny_data})
        config, _ = build_config("SASRec", "ml-tiny", [user_file], {"key_e": "cmd"})
    finally:
        os.unlink(beside)
    assert (config["key_b"], config["key_c"], config["key_d"], config["key_e"]) == ("model", "beside", "file", "cmd")


def test_the_package_ships_its_properties():
    assert os.path.commonpath([cfg.PROPERTIES_DIR, cfg.PACKAGE_DIR]) == cfg.PACKAGE_DIR
    for sub in ("overall.yaml", "model/Mamba4Rec.yaml", "dataset/ml-100k.yaml", "hyper/Hydra4Rec.yaml"):
        assert os.path.isfile(os.path.join(cfg.PROPERTIES_DIR, sub)), sub


def test_later_config_files_override_earlier_ones(props, tiny_data, tmp_path):
    a = write(str(tmp_path / "a.yaml"), {"key_d": "a", "data_path": tiny_data})
    b = write(str(tmp_path / "b.yaml"), {"key_d": "b"})
    config, _ = build_config("SASRec", "ml-tiny", [a, b], None)
    assert config["key_d"] == "b"


def test_project_defaults_follow_the_evaluation_protocol(tiny_data):
    config, _ = build_config("SASRec", "ml-tiny", None, {"data_path": tiny_data})
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert config["eval_args"]["order"] == "TO"
    assert config["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert config["valid_metric"] == "NDCG@10" and config["loss_type"] == "CE"
    assert config["train_neg_sample_args"]["distribution"] == "none"  # RecBole's form of "no negatives"
    assert config["topk"] == [10]


@pytest.mark.parametrize("model,regime", [
    ("Mamba4Rec", "all"), ("Mamba2Rec", "all"), ("2Mamba4Rec", "all"), ("RecMamba", "all"),
    ("Hydra4Rec", "all"), ("SASRec", "last"), ("GRU4Rec", "last"), ("BERT4Rec", "last"),
])
def test_default_training_regime(model, regime, tiny_data):
    # the causal SSMs train on every position by default (as accurate as RecBole's prefixes at
    # convergence, docs/results.md), and so does the one-layer Hydra4Rec (its every-prefix pass is
    # exact); RecBole's own models keep RecBole's regime
    config, _ = build_config(model, "ml-tiny", None, {"data_path": tiny_data})
    assert (config["train_targets"] or "last") == regime
    assert config["train_window_batch_size"] == 32
    config, _ = build_config(model, "ml-tiny", None, {"data_path": tiny_data, "train_targets": "last"})
    assert config["train_targets"] == "last"  # the command line still chooses


def test_beauty_trains_128_windows_a_batch_by_default(tmp_path):
    # the package's dataset yaml for amazon-beauty overrides overall.yaml's 32 (short windows,
    # docs/results.md); the command line still chooses
    data = write_ml100k_slice(str(tmp_path), "amazon-beauty")
    config, _ = build_config("Mamba2Rec", "amazon-beauty", None, {"data_path": data})
    assert config["train_targets"] == "all" and config["train_window_batch_size"] == 128
    config, _ = build_config("Mamba2Rec", "amazon-beauty", None, {"data_path": data, "train_window_batch_size": 32})
    assert config["train_window_batch_size"] == 32


def test_embedded_default_dataset_is_ml100k():
    config, _ = build_config("SASRec", None, None, None)
    assert config["dataset"] == "ml-100k"
    assert os.path.isfile(os.path.join(config["data_path"], "ml-100k.inter"))


def test_folder_without_inter_file_is_an_error(tmp_path):
    (tmp_path / "broken").mkdir()
    with pytest.raises(UsageError, match="has no broken.inter"):
        cfg.resolve_dataset("broken", str(tmp_path))


def test_download_failure_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RECBOLE_SSM_OFFLINE", raising=False)

    def refuse(*_a, **_k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cfg.urllib.request, "urlopen", refuse)
    with pytest.raises(UsageError) as info:
        cfg.resolve_dataset("ml-1m", str(tmp_path))
    msg = str(info.value)
    assert "downloading it failed (network is unreachable)" in msg and "\n" not in msg
    assert not (tmp_path / "ml-1m").exists(), "nothing half-written"


def test_parse_value_reads_recbole_style_values():
    assert cfg.parse_value("1e-3") == pytest.approx(1e-3)
    assert cfg.parse_value("3") == 3
    assert cfg.parse_value("True") is True
    assert cfg.parse_value("[10, 20]") == [10, 20]
    assert cfg.parse_value("CE") == "CE"
    assert cfg.parse_value("~") is None


def test_recbole_rejecting_a_setting_is_a_one_line_usage_error(tiny_data):
    with pytest.raises(UsageError, match="invalid configuration: .*train_neg_sample_args") as info:
        build_config("SASRec", "ml-tiny", None, {"data_path": tiny_data, "loss_type": "CE",
                                                  "train_neg_sample_args": {"distribution": "uniform"}})
    assert "\n" not in str(info.value)


def test_progress_bars_follow_the_terminal_unless_set(tiny_data, monkeypatch):
    import sys

    config, _ = build_config("SASRec", "ml-tiny", None, {"data_path": tiny_data})
    assert config["show_progress"] is False  # stderr is not a terminal under pytest
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    config, _ = build_config("SASRec", "ml-tiny", None, {"data_path": tiny_data})
    assert config["show_progress"] is True
    config, _ = build_config("SASRec", "ml-tiny", None, {"data_path": tiny_data, "show_progress": False})
    assert config["show_progress"] is False


def test_hydra4rec_with_more_layers_falls_back_to_last_unless_all_is_chosen(tiny_data, capsys):
    """Hydra4Rec's default 'all' is exact with one layer only: with two it trains under 'last' and
    says so in one line; asking for 'all' explicitly still gets the error that names the fixes."""
    config, _ = build_config("Hydra4Rec", "ml-tiny", None, {"data_path": tiny_data, "num_layers": 2})
    assert config["train_targets"] == "last"
    err = capsys.readouterr().err
    assert "note: Hydra4Rec trains under train_targets=last with these settings" in err and err.count("\n") == 1
    config, _ = build_config("Hydra4Rec", "ml-tiny", None, {"data_path": tiny_data, "num_layers": 2, "causal": True})
    assert config["train_targets"] == "all"
    with pytest.raises(ConfigError, match="train_targets=all cannot train Hydra4Rec with num_layers=2"):
        build_config("Hydra4Rec", "ml-tiny", None, {"data_path": tiny_data, "num_layers": 2, "train_targets": "all"})
