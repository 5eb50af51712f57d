"""Data-parallel training on the CPU (gloo, 2 processes): sharding, one evaluation, one checkpoint,
failures that stop every rank, and torchrun."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from recbole_ssm.bench import ddp
from recbole_ssm.checkpoint import evaluate_checkpoint
from recbole_ssm.distributed import DistributedError, free_port
from recbole_ssm.errors import UsageError
from recbole_ssm.quick_start import run
from recbole_ssm.registry import get_model
from tests.conftest import TINY
from tests.test_cli import SCRIPT, assert_one_line_error, cli_args

pytestmark = pytest.mark.slow
GRU4Rec = get_model("GRU4Rec")  # RecBole's, with all-position training
SETTINGS = {**TINY, "epochs": 2, "stopping_step": 10}
# GRU4Rec's own property file is found by its name: the subclasses below take these instead
GRU = {"embedding_size": 16, "num_layers": 1, "dropout_prob": 0.3, "loss_type": "CE"}


class RecordingGRU4Rec(GRU4Rec):
    """RecBole's GRU4Rec that appends every training example it is given to rank<RANK>.txt."""

    def calculate_loss(self, interaction):
        folder = os.environ["RECORD_DIR"]
        seq, lengths, users = interaction["item_id_list"], interaction["item_length"], interaction["user_id"]
        with open(os.path.join(folder, f"rank{os.environ.get('RANK', 'single')}.txt"), "a") as f:
            for u, n, s in zip(users.tolist(), lengths.tolist(), seq.tolist()):
                f.write(f"{u}:{n}:{s[0]}:{s[n - 1]}\n")  # (user, length, first, last): one example
        return super().calculate_loss(interaction)


class FailingGRU4Rec(GRU4Rec):
    """Rank 1 raises at its third training step (after writing the time); rank 0 is busy for minutes
    there (it would notice only at its next collective)."""

    calls = 0

    def calculate_loss(self, interaction):
        FailingGRU4Rec.calls += 1
        if os.environ.get("RANK") == "0" and FailingGRU4Rec.calls == 3:
            time.sleep(300)
        if os.environ.get("RANK") == "1" and FailingGRU4Rec.calls == 3:
            with open(os.environ["FAIL_TIME_FILE"], "w") as f:
                f.write(repr(time.time()))
            raise RuntimeError("rank one broke on purpose")
        return super().calculate_loss(interaction)


def read(path) -> list[str]:
    with open(path) as f:
        return f.read().split()


@pytest.mark.parametrize("targets", ["last", "all"])
def test_two_ranks_train_disjoint_halves_of_the_data(tiny_data, tmp_path, monkeypatch, targets):
    monkeypatch.setenv("RECORD_DIR", str(tmp_path))
    settings = {**SETTINGS, **GRU, "data_path": tiny_data, "train_targets": targets,
                "checkpoint_dir": str(tmp_path / "ck")}
    run(RecordingGRU4Rec, "ml-tiny", None, {**settings, "epochs": 1}, saved=False)
    everything = read(tmp_path / "ranksingle.txt")  # one epoch in one process: every example once
    assert len(set(everything)) == len(everything)

    out = run(RecordingGRU4Rec, "ml-tiny", None, {**settings, "nproc": 2}, saved=False)
    assert out.result["test_result"] and out.config["world_size"] == 2
    ranks = [read(tmp_path / f"rank{r}.txt") for r in (0, 1)]
    half = len(everything) // 2
    assert [len(r) for r in ranks] == [2 * half, 2 * half]  # two epochs of n // 2 each
    for epoch in (0, 1):
        a, b = (set(r[epoch * half:(epoch + 1) * half]) for r in ranks)
        assert len(a) == len(b) == half and not a & b  # disjoint, no example twice
        assert a | b <= set(everything) and len(everything) - len(a | b) == len(everything) % 2
    assert ranks[0][:half] != ranks[0][half:]  # reshuffled between epochs


def test_two_rank_metrics_are_a_single_process_evaluation_of_the_checkpoint(tiny_data, tmp_path):
    settings = {**SETTINGS, "data_path": tiny_data, "train_targets": "all", "checkpoint_dir": str(tmp_path / "ck"),
                "nproc": 2}
    out = run("GRU4Rec", "ml-tiny", None, settings)
    assert glob.glob(str(tmp_path / "ck" / "*.pth")) == [out.saved_model_file]
    assert len(out.timings["epoch_times"]) == 2
    assert evaluate_checkpoint(out.saved_model_file, "test") == out.result["test_result"]
    assert evaluate_checkpoint(out.saved_model_file, "valid") == out.result["best_valid_result"]


def test_a_failing_rank_stops_every_rank_within_seconds(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIL_TIME_FILE", str(tmp_path / "failed_at"))
    settings = {**SETTINGS, **GRU, "data_path": tiny_data, "train_targets": "all", "train_window_batch_size": 8,
                "nproc": 2}
    with pytest.raises(DistributedError, match="rank 1 failed: RuntimeError: rank one broke on purpose"):
        run(FailingGRU4Rec, "ml-tiny", None, settings, saved=False)
    with open(tmp_path / "failed_at") as f:
        assert time.time() - float(f.read()) < 20  # rank 0 was stopped too


def test_torchrun_starts_the_ranks(tiny_data, tmp_path):
    args = ["--model=GRU4Rec", "--dataset=ml-tiny",
            *cli_args({**SETTINGS, "data_path": tiny_data, "train_targets": "all", "epochs": 1,
                       "checkpoint_dir": str(tmp_path / "ck")})]
    env = {**os.environ, "RECBOLE_SSM_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           SCRIPT, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test  hit@10=") == 1  # rank 0 prints the result
    assert len(glob.glob(str(tmp_path / "ck" / "*.pth"))) == 1


@pytest.mark.parametrize(("settings", "env", "words"), [
    ({"nproc": 0}, {}, "nproc"),
    ({"nproc": 2}, {"WORLD_SIZE": "2"}, "under torchrun"),
])
def test_distributed_misuse_is_one_line(tiny_data, settings, env, words, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UsageError) as err:
        run("GRU4Rec", "ml-tiny", None, {**TINY, "data_path": tiny_data, **settings})
    assert_one_line_error(f"error: {err.value}", words)


def test_bench_ddp_writes_a_table_per_process_count(tiny_data, tmp_path):
    assert ddp.main(["--model=GRU4Rec", "--dataset=ml-tiny", "--nprocs=1,2", "--epochs=1", f"--data_path={tiny_data}",
                     "--MAX_ITEM_LIST_LENGTH=20", "--hidden_size=16", f"--output={tmp_path}"]) == 0
    rows = (tmp_path / "ddp.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["GRU4Rec", "1"], ["GRU4Rec", "2"]]
    assert rows[1].split(",")[3] == "1.00x"
