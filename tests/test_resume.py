"""An interrupted training run resumes from the state saved before its current epoch and ends
exactly as the uninterrupted run does."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from recbole_ssm.cli import main
from recbole_ssm.errors import Interrupted
from recbole_ssm.quick_start import run
from tests.conftest import TINY
from tests.test_cli import SCRIPT, assert_one_line_error, cli_args

SETTINGS = {**TINY, "epochs": 3, "stopping_step": 10, "train_targets": "all"}  # all: 19 steps an epoch


def test_interrupted_run_resumes_to_the_same_metrics(tiny_data, tmp_path):
    settings = {**SETTINGS, "data_path": tiny_data}
    whole = run("GRU4Rec", "ml-tiny", None, settings)
    assert not glob.glob(os.path.join("saved", "*-resume.pth"))  # a finished run leaves no resume state

    def interrupt_after_second_validation(index, score, result):
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"resume with: python run_recbole_ssm.py --resume=") as stop:
        run("GRU4Rec", "ml-tiny", None, settings, callbacks=[interrupt_after_second_validation])
    path = str(stop.value).split("--resume=")[1]
    assert torch.load(path, weights_only=False)["epoch"] == 1  # the state before the interrupted epoch
    resumed = run(resume=path)
    assert resumed.result["best_valid_result"] == whole.result["best_valid_result"]
    assert resumed.result["test_result"] == whole.result["test_result"]
    assert len(resumed.trainer.epoch_times) == 3  # epoch 0 from the state, then epochs 1 and 2 again
    assert resumed.trainer.valid_scores == whole.trainer.valid_scores  # epoch 0's score from the state
    assert [e for e, _ in whole.trainer.valid_scores] == [0, 1, 2]
    assert not os.path.exists(path)


def test_sigterm_mid_run_then_resume_through_the_cli(tiny_data, tmp_path):
    args = ["--model=GRU4Rec", "--dataset=ml-tiny",
            *cli_args({**SETTINGS, "data_path": tiny_data, "epochs": 5, "checkpoint_dir": str(tmp_path / "ck")})]
    env = {**os.environ, "RECBOLE_SSM_OFFLINE": "1"}
    whole = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, SCRIPT, *args, f"--checkpoint_dir={tmp_path / 'ck2'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 480
    while time.time() < deadline and proc.poll() is None:  # wait until epoch 2 of 5 has started
        found = glob.glob(str(tmp_path / "ck2" / "*-resume.pth"))
        try:
            if found and torch.load(found[0], weights_only=False)["epoch"] >= 2:
                break
        except (OSError, RuntimeError, EOFError):
            pass  # being replaced
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert_one_line_error(err.strip().splitlines()[-1], "training interrupted", "--resume=")
    path = err.strip().splitlines()[-1].split("--resume=")[1]
    resumed = subprocess.run([sys.executable, SCRIPT, f"--resume={path}"], capture_output=True, text=True,
                             env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = lambda text: [line for line in text.splitlines() if line.startswith(("valid", "test"))]  # noqa: E731
    assert metrics(resumed.stdout) == metrics(whole.stdout) and len(metrics(whole.stdout)) == 2


@pytest.mark.parametrize(("args", "words"), [
    (["--resume=/nonexistent-resume.pth"], "resume state not found"),
    (["--resume=README.md"], "is not a resume state"),
    (["--model=GRU4Rec", "--resume=x.pth"], "give it alone"),
])
def test_resume_errors_are_one_line(args, words, tmp_path, capsys):
    (tmp_path / "README.md").write_text("not a checkpoint\n")
    assert main([a.replace("README.md", str(tmp_path / "README.md")) for a in args]) == 2
    assert_one_line_error(capsys.readouterr().err, words)
