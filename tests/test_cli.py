"""The command line: end to end with RecBole's SASRec, and one-line errors with exit code 2."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from recbole_ssm.cli import main, split_run_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "run_recbole_ssm.py")


def cli_args(config: dict) -> list[str]:
    import json

    return [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in config.items()]


def run_script(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECBOLE_SSM_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_trains_sasrec_end_to_end(tiny_config):
    settings = {**tiny_config, "epochs": 3, "train_targets": "all", "state": "INFO"}  # INFO: RecBole logs each score
    proc = run_script(["--model=SASRec", "--dataset=ml-tiny", *cli_args(settings)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    # the summary names the regime, the epochs trained and the epoch whose checkpoint was tested:
    # the first with the best validation score in RecBole's log
    summary = dict(f.split("=", 1) for f in next(x for x in lines if x.startswith("model=")).split() if "=" in f)
    assert summary["model"] == "SASRec" and summary["train_targets"] == "all" and summary["epochs"] == "3"
    (log,) = glob.glob(os.path.join("log", "SASRec", "*.log"))
    scores = [float(m) for m in re.findall(r"valid_score: ([0-9.]+)", open(log, encoding="utf-8").read())]
    assert len(scores) == 3 and int(summary["best_epoch"]) == scores.index(max(scores))
    test_line = next(line for line in lines if line.startswith("test"))
    valid_line = next(line for line in lines if line.startswith("valid"))
    for line in (test_line, valid_line):
        for metric in ("hit@10=", "ndcg@10=", "mrr@10="):
            assert metric in line
            value = float(line.split(metric)[1].split()[0])
            assert 0.0 <= value <= 1.0
    assert os.listdir("saved"), "the best model is saved as a checkpoint"


def assert_one_line_error(proc_or_err: str, *words: str) -> None:
    text = proc_or_err.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error: ")
    for w in words:
        assert w in text, text


def test_unknown_model_exits_2_with_one_line_listing_models():
    proc = run_script(["--model=NoSuchModel", "--dataset=ml-100k"])
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "NoSuchModel", "SASRec", "GRU4Rec")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model=SASRec", "--dataset=no-such-data"], ["unknown dataset", "no-such-data", "atomic files"]),
        (["--model=SASRec", "--dataset=ml-1m"], ["ml-1m", "RECBOLE_SSM_OFFLINE", "prepare movielens"]),
        (["--model=SASRec", "--epochs"], ["malformed option", "--epochs", "--KEY=VALUE"]),
        (["--model=SASRec", "epochs=3"], ["malformed option", "epochs=3"]),
        (["--model=SASRec", "--epochs=[1,"], ["cannot parse value"]),
        (["--dataset=ml-100k"], ["no model given"]),
        (["--model=SASRec", "--config_files=missing.yaml"], ["config file not found", "missing.yaml"]),
        (["frobnicate"], ["unknown sub-command", "frobnicate"]),
    ],
)
def test_bad_input_is_one_line_error_with_exit_code_2(args, words, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert_one_line_error(err, *words)


def test_malformed_option_through_the_script_exits_2():
    proc = run_script(["--model=SASRec", "--epochs"])
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "malformed option")


def test_help_prints_usage(capsys):
    assert main(["--help"]) == 0
    assert "--model" in capsys.readouterr().out


def test_help_lists_the_models_found_in_the_models_package(monkeypatch, capsys):
    """The --help list of models and of the models trained under 'all' by default come from
    recbole_ssm.models.MODELS and the models' property files: a new model shows without an edit."""
    from recbole_ssm import models

    class NewRec(models.Mamba2Rec):
        pass

    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Mamba2Rec / 2Mamba4Rec" in out and "NewRec" not in out
    assert "default all for Hydra4Rec with one layer, Mamba2Rec, Mamba4Rec, RecMamba, last for the others" in out
    monkeypatch.setitem(models.MODELS, "NewRec", NewRec)
    assert main(["--help"]) == 0
    assert "NewRec" in capsys.readouterr().out


def test_split_run_args_reads_model_dataset_files_and_overrides():
    model, dataset, files, over = split_run_args(
        ["--model=SASRec", "--dataset=ml-100k", "--config_files=a.yaml b.yaml", "--epochs=3",
         "--learning_rate=1e-3", "--eval_args={split: {LS: valid_and_test}}"]
    )
    assert (model, dataset, files) == ("SASRec", "ml-100k", ["a.yaml", "b.yaml"])
    assert over["epochs"] == 3 and isinstance(over["epochs"], int)
    assert over["learning_rate"] == pytest.approx(1e-3)
    assert over["eval_args"] == {"split": {"LS": "valid_and_test"}}


def test_model_and_dataset_may_come_from_a_config_file(tiny_config, tmp_path, capsys):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "SASRec", "dataset": "ml-tiny", **tiny_config}))
    assert main([f"--config_files={path}"]) == 0
    assert "model=SASRec dataset=ml-tiny" in capsys.readouterr().out
