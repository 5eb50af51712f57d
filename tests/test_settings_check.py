"""Every bad setting is caught before RecBole builds anything: one line, exit code 2, the key named."""

from __future__ import annotations

import pytest

from recbole_ssm.cli import main
from recbole_ssm.settings_check import check_user_settings, declared_types
from tests.test_cli import assert_one_line_error

BAD = [
    ("--epochs=abc", "epochs"), ("--learning_rate=foo", "learning_rate"), ("--train_batch_size=0", "train_batch_size"),
    ("--MAX_ITEM_LIST_LENGTH=0", "MAX_ITEM_LIST_LENGTH"), ("--seed=x", "seed"),
    ("--eval_args={split:{LS:x}}", "eval_args"), ("--epochs=-1", "epochs"), ("--stopping_step=abc", "stopping_step"),
    ("--gpu_id=abc", "gpu_id"), ("--eval_batch_size=-5", "eval_batch_size"), ("--eval_step=0", "eval_step"),
    ("--weight_decay=-1", "weight_decay"), ("--dropout_prob=1.5", "dropout_prob"), ("--hidden_size=0", "hidden_size"),
    ("--num_layers=2.5", "num_layers"), ("--loss_type=MSE", "loss_type"), ("--train_targets=some", "train_targets"),
    ("--learner=lbfgs", "learner"), ("--state=LOUD", "state"), ("--topk=0", "topk"), ("--topk=[10,x]", "topk"),
    ("--eval_args={order: XO}", "eval_args.order"), ("--eval_args={group_by: item}", "eval_args.group_by"),
    ("--eval_args={mode: uni}", "eval_args.mode"), ("--eval_args={split: {RS: [0.8, 0.2]}}", "eval_args.split.RS"),
    ("--eval_args=full", "eval_args"), ("--eval_args={splits: {LS: valid_and_test}}", "eval_args"),
    ("--metric_decimal_place=-1", "metric_decimal_place"), ("--reproducibility=maybe", "reproducibility"),
    ("--shuffle=3", "shuffle"), ("--metrics=5", "metrics"), ("--d_state=0", "d_state"),
    ("--ce_chunk_mib=0", "ce_chunk_mib"), ("--train_window_batch_size=0", "train_window_batch_size"),
    ("--learning_rate=0", "learning_rate"), ("--epochs=3.5", "epochs"), ("--nproc=0", "nproc"),
]


@pytest.mark.parametrize(("arg", "key"), BAD)
def test_bad_value_on_the_command_line(arg, key, capsys):
    assert main(["--model=Mamba2Rec", "--epochs=1", arg]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, f"invalid {key.split('.')[0]}=", key)


def test_type_declared_by_recboles_model_file(capsys):
    assert declared_types("SASRec")["hidden_act"] == frozenset({"str"})
    assert main(["--model=SASRec", "--hidden_act=5"]) == 2
    assert_one_line_error(capsys.readouterr().err, "invalid hidden_act=5", "a string")
    assert main(["--model=SASRec", "--layer_norm_eps=tiny"]) == 2
    assert_one_line_error(capsys.readouterr().err, "invalid layer_norm_eps='tiny'", "a number")


def test_bad_value_in_a_yaml_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 2\nlearning_rate: fast\n")
    assert main(["--model=Mamba2Rec", f"--config_files={path}"]) == 2
    assert_one_line_error(capsys.readouterr().err, "invalid learning_rate='fast'", f"in {path}")


def test_good_values_pass():
    values = {"gpu_id": "0,1", "topk": [5, 10], "metrics": ["Hit", "NDCG"], "learning_rate": 1, "seed": 0,
              "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                            "mode": {"valid": "full", "test": "uni100"}},
              "clip_grad_norm": {"max_norm": 5}, "dropout_prob": 0.0, "state": "warning", "learner": "AdamW",
              "show_progress": False, "train_neg_sample_args": None, "transform": None}
    assert check_user_settings(values, {}, "Mamba2Rec") == []


def test_unknown_key_is_a_warning_with_a_suggestion_or_an_error_when_strict(tmp_path, capsys):
    warnings = check_user_settings({"learnin_rate": 0.1, "epochs": 1}, {}, "Mamba2Rec")
    assert warnings == ["unknown setting 'learnin_rate' (--learnin_rate) (did you mean learning_rate?): it is not used"]
    assert main(["--model=Mamba2Rec", "--learnin_rate=0.1", "--strict_config=True"]) == 2
    assert_one_line_error(capsys.readouterr().err, "unknown setting 'learnin_rate'", "did you mean learning_rate",
                          "strict_config")
