"""bench table / bench efficiency: end to end on tiny settings, resume, failure records, errors."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import sys

import pytest

from recbole_ssm.bench import memory, records, report, workers
from recbole_ssm.bench import table as bench_table
from recbole_ssm.bench.cli import main as bench_main
from recbole_ssm.cli import main as cli_main
from recbole_ssm.errors import UsageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TABLE_TINY = [
    "--epochs=1", "--MAX_ITEM_LIST_LENGTH=20", "--hidden_size=16", "--inner_size=32", "--n_layers=1", "--headdim=16",
    "--train_batch_size=256", "--eval_batch_size=256", "--state=WARNING",
    "--latency_repeats=3", "--latency_batch=16", "--threads=1", "--progress=false",
]


def read_csv(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_png(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, path
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    assert width > 100 and height > 100
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (height, width)


@pytest.mark.slow
def test_table_end_to_end_and_resume(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "res")
    argv = ["table", "--models=SASRec,Hydra4Rec", "--dataset=ml-tiny", f"--data_path={tiny_data}",
            "--seeds=1", f"--output={out}", *TABLE_TINY]
    assert bench_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| SASRec" in printed and "| Hydra4Rec" in printed

    rows = read_csv(os.path.join(out, "table.csv"))
    assert [r["model"] for r in rows] == ["SASRec", "Hydra4Rec"]
    for row in rows:
        empty = [k for k, v in row.items() if v == ""]
        assert not empty, f"{row['model']}: empty columns {empty}"
        assert row["seeds"] == "1"
        for metric in ("hit@10_mean", "ndcg@10_mean", "mrr@10_mean"):
            assert 0.0 <= float(row[metric]) <= 1.0
        assert float(row["ndcg@10_mean"]) <= float(row["hit@10_mean"])
        assert float(row["latency_b1_ms_mean"]) > 0 and float(row["latency_bn_ms_mean"]) > 0
        assert float(row["epoch_s_mean"]) > 0 and float(row["epochs_mean"]) == 1
        assert float(row["process_peak_rss_mib_mean"]) > 50
        assert 0 < int(row["params_no_emb"]) < int(row["params"])
    table = open(os.path.join(out, "table.md"), encoding="utf-8").read()
    assert "Command: `python run_recbole_ssm.py bench table --models=SASRec,Hydra4Rec" in table
    assert "Latency b=16 (ms/user)" in table and "CPU cores" in table
    from recbole_ssm.bench.report import cpu_model

    assert f" torch threads; CPU of the runs: {cpu_model()} (2 runs)" in table

    # resume: a finished (model, seed) is reused, not retrained
    record = os.path.join(out, "runs", "SASRec-seed-2020.json")
    before = json.load(open(record, encoding="utf-8"))
    # one validation per epoch; the best one is the kept checkpoint's, shown beside the test metrics
    assert [e for e, _ in before["valid_scores"]] == list(range(before["epochs"]))
    assert before["best_epoch"] == 0 and before["valid_metric"] == "ndcg@10"
    assert before["valid"]["ndcg@10"] == pytest.approx(max(v for _, v in before["valid_scores"]), abs=1e-4)
    sasrec = next(r for r in rows if r["model"] == "SASRec")
    assert float(sasrec["valid_mean"]) == pytest.approx(before["valid"]["ndcg@10"], abs=1e-6)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    assert ["Valid NDCG@10", "Best epoch"] == cells[0][5:7]  # the mean ± std table
    assert ["SASRec", "2020", f"{before['test']['hit@10']:.4f}"] in [c[:3] for c in cells]  # a per-run row
    assert before["epoch_s"] == bench_table.epoch_seconds(before["epoch_times"]) > 0
    # the kept checkpoint's test with the history left out: what `evaluate --eval_filter_seen=true` gives
    from recbole_ssm.checkpoint import evaluate_checkpoint

    saved = [f for f in os.listdir(os.path.join(out, "saved")) if f.startswith("SASRec-") and f.endswith(".pth")]
    assert len(saved) == 1, saved
    left_out = evaluate_checkpoint(os.path.join(out, "saved", saved[0]), "test", {"eval_filter_seen": True})
    assert before["test_seen_out"] == pytest.approx({k.lower(): float(v) for k, v in left_out.items()}, abs=1e-6)
    assert before["test_seen_out"] != before["test"]  # not the unfiltered ranking again
    assert float(sasrec["ndcg@10_seen_out_mean"]) == pytest.approx(before["test_seen_out"]["ndcg@10"], abs=1e-6)
    assert "NDCG@10, history left out" in cells[0]
    assert bench_main(argv) == 0
    captured = capsys.readouterr()
    assert "2 finished run(s) reused" in captured.err
    assert json.load(open(record, encoding="utf-8")) == before

    # --report_only: the table from finished runs only; a missing seed is not trained, only counted
    more = [a if a != "--seeds=1" else "--seeds=2" for a in argv]
    assert bench_main([*more, "--report_only"]) == 0
    assert not os.path.exists(os.path.join(out, "runs", "SASRec-seed-2021.json"))
    assert [r["seeds"] for r in read_csv(os.path.join(out, "table.csv"))] == ["1", "1"]
    assert "| 1/2 " in capsys.readouterr().out

    # a later call with fewer models: table.md keeps the folder's other runs apart, with their command
    assert "## Other runs in this folder" not in table
    only = [a if a != "--models=SASRec,Hydra4Rec" else "--models=SASRec" for a in argv]
    assert bench_main(only) == 0
    capsys.readouterr()
    text = open(os.path.join(out, "table.md"), encoding="utf-8").read()
    main, _, others = text.partition("## Other runs in this folder")
    assert "| SASRec" in main and "| Hydra4Rec" not in main and "| Hydra4Rec" in others
    assert "- Hydra4Rec: `python run_recbole_ssm.py bench table --models=SASRec,Hydra4Rec " in others
    hydra = json.load(open(os.path.join(out, "runs", "Hydra4Rec-seed-2020.json"), encoding="utf-8"))
    assert f"| {hydra['test']['ndcg@10']:.4f} ± 0.0000 |" in others
    assert [r["model"] for r in read_csv(os.path.join(out, "table.csv"))] == ["SASRec"]

    # other settings in the same folder: refused with one line, nothing overwritten
    changed = [a if a != "--epochs=1" else "--epochs=2" for a in argv]
    assert cli_main(["bench", *changed]) == 2
    assert "was measured with other settings" in capsys.readouterr().err
    assert json.load(open(record, encoding="utf-8")) == before


def test_best_epoch_is_the_first_best_validation():
    assert bench_table.best_epoch([]) is None
    assert bench_table.best_epoch([(0, 0.1), (1, 0.3), (2, 0.3), (3, 0.2)]) == 1  # a tie keeps the first
    assert bench_table.best_epoch([(0, 0.5), (1, 0.3), (2, 0.4)], bigger=False) == 1
    assert bench_table.best_epoch([(4, 0.2), (9, 0.25)]) == 9  # epochs as recorded (eval_step > 1, a resume)


def test_per_run_rows_show_each_seed():
    spec = records.ModelSpec(label="M", name="M")
    rec = {"status": "ok", "test": {"hit@10": 0.2, "ndcg@10": 0.1, "mrr@10": 0.05}, "valid": {"ndcg@10": 0.12},
           "valid_metric": "ndcg@10", "epochs": 12, "best_epoch": 1, "epoch_s": 3.14159,
           "test_seen_out": {"hit@10": 0.3, "ndcg@10": 0.16789}}
    old = {**rec, "test": {**rec["test"], "ndcg@10": 0.3}}
    del old["best_epoch"], old["valid_metric"], old["test_seen_out"]  # a record written before these were kept
    rows = bench_table.run_rows([spec], {("M", 2020): rec, ("M", 2021): {"status": "timeout"}, ("M", 2022): old},
                                [2020, 2021, 2022])
    assert rows == [["M", "2020", "0.2000", "0.1000", "0.0500", "0.1200", "0.1679", "12", "1", "3.14"],
                    ["M", "2022", "0.2000", "0.3000", "0.0500", "0.1200", "-", "12", "-", "3.14"]]
    assert len(bench_table.RUN_HEADER) == len(rows[0])


@pytest.mark.slow
def test_efficiency_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "eff")
    argv = ["efficiency", "--models=SASRec,Hydra4Rec", "--lengths=16,32", "--batch=2", "--hidden_size=16",
            "--n_items=100", "--repeats=1", "--threads=1", "--progress=false", "--headdim=16", f"--output={out}"]
    assert bench_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Train time vs SASRec" in printed

    rows = read_csv(os.path.join(out, "efficiency.csv"))
    assert [(r["model"], r["length"]) for r in rows] == [
        ("SASRec", "16"), ("SASRec", "32"), ("Hydra4Rec", "16"), ("Hydra4Rec", "32")]
    for row in rows:
        empty = [k for k, v in row.items() if v == "" and k != "error"]
        assert not empty, f"{row['model']} L={row['length']}: empty columns {empty}"
        assert row["status"] == "ok"
        assert float(row["train_ms"]) > 0 and float(row["infer_ms"]) > 0
        assert float(row["train_mem_mib"]) >= 0 and float(row["infer_mem_mib"]) >= 0
        if row["model"] == "SASRec":
            assert float(row["train_ms_vs_base"]) == 1.0
        else:
            ratio = float(row["train_ms"]) / float(next(r["train_ms"] for r in rows
                                                         if r["model"] == "SASRec" and r["length"] == row["length"]))
            assert float(row["train_ms_vs_base"]) == pytest.approx(ratio, rel=1e-3)
    for name in ("efficiency_time.png", "efficiency_memory.png"):
        assert_png(os.path.join(out, name))
    report = open(os.path.join(out, "efficiency.md"), encoding="utf-8").read()
    assert "Command: `python run_recbole_ssm.py bench efficiency" in report
    # which implementation each SSM op ran, per point and in the report (a CUDA table must say it)
    from recbole_ssm.ops import cpu_kernel

    scan = "cpp" if cpu_kernel.load() is not None else "torch"
    record = json.load(open(os.path.join(out, "points", "Hydra4Rec-L-16.json"), encoding="utf-8"))
    assert record["kernels"] == {"selective_scan": scan, "ssd": "torch", "causal_conv1d": "torch"}
    assert record["gpu"] is None
    assert f"recbole-ssm's PyTorch path): selective_scan={scan}, ssd=torch, causal_conv1d=torch.\n" in report


def test_efficiency_timeout_is_recorded_not_raised(tmp_path, capsys):
    out = str(tmp_path / "eff")
    argv = ["efficiency", "--models=SASRec", "--lengths=8", "--batch=2", "--hidden_size=8", "--n_items=50",
            "--timeout=0.05", "--progress=false", f"--output={out}"]
    assert bench_main(argv) == 0
    assert "timeout" in capsys.readouterr().out
    rows = read_csv(os.path.join(out, "efficiency.csv"))
    assert rows[0]["status"] == "timeout" and rows[0]["train_ms"] == ""
    assert_png(os.path.join(out, "efficiency_time.png"))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("raise MemoryError('cannot allocate memory')", "OOM"),
        ("raise RuntimeError('[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: not enough memory: "
         "you tried to allocate 1 bytes. out of memory')", "OOM"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "OOM"),
        ("raise ValueError('broken setting')", "failed"),
        ("import time; time.sleep(30)", "timeout"),
    ],
)
def test_worker_failures_become_records(tmp_path, monkeypatch, body, status):
    (tmp_path / "fake_bench_worker.py").write_text(
        "import sys\n"
        "from recbole_ssm.bench.workers import worker_entry\n"
        f"def work(spec):\n    {body}\n"
        "sys.exit(worker_entry(sys.argv[1:], work))\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    rec = workers.run_worker("fake_bench_worker", {}, timeout_s=3)
    assert rec["status"] == status
    if status == "failed":
        assert "broken setting" in rec["error"]


def test_worker_result_is_returned(tmp_path, monkeypatch):
    (tmp_path / "ok_bench_worker.py").write_text(
        "import sys\n"
        "from recbole_ssm.bench.workers import worker_entry\n"
        "sys.exit(worker_entry(sys.argv[1:], lambda spec: {'status': 'ok', 'x': spec['x'] * 2}))\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    rec = workers.run_worker("ok_bench_worker", {"x": 21}, timeout_s=30)
    assert rec["status"] == "ok" and rec["x"] == 42 and rec["wall_s"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["efficiency", "--models=NoSuchRec", "--lengths=16"], "unknown model 'NoSuchRec'"),
        (["efficiency", "--models=SASRec", "--lengths=16,abc"], "bad value 'abc' in --lengths"),
        (["efficiency", "--models=SASRec", "--lengths=0"], "expected integers >= 1"),
        (["efficiency", "--models=SASRec", "--lengths=16,16"], "lists a value twice"),
        (["efficiency", "--models=SASRec"], "--lengths takes a comma-separated list"),
        (["efficiency", "--models=SASRec", "--lengths=16", "--device=tpu"], "--device takes one of cpu, cuda"),
        (["efficiency", "--models=SASRec", "--lengths=16", "--baseline=GRU4Rec"], "--baseline=GRU4Rec is not one"),
        (["efficiency", "--models=SASRec", "--lengths=16", "--batch=x"], "--batch takes a whole number >= 1"),
        (["efficiency", "--models=SASRec:n_layers", "--lengths=16"], "malformed model spec"),
        (["efficiency", "--models=SASRec,SASRec", "--lengths=16"], "listed twice"),
        (["efficiency", "--models=SASRec", "--lengths=16", "--MAX_ITEM_LIST_LENGTH=5"], "set by bench efficiency"),
        (["table", "--dataset=ml-tiny"], "--models takes a comma-separated list"),
        (["table", "--models=SASRec", "--dataset=no-such-data", "--data_path=."], "unknown dataset"),
        (["table", "--models=SASRec", "--seeds=0"], "--seeds takes a whole number >= 1"),
        (["table", "--models=SASRec", "--seed=3"], "set by bench table itself"),
        (["table", "--models=SASRec", "--metrics=[NoSuchMetric]"], "invalid configuration"),
        (["nosuch"], "unknown bench command 'nosuch'"),
        (["table", "--models=SASRec", "positional"], "unexpected argument 'positional'"),
    ],
)
def test_misuse_is_one_line_error(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("RECBOLE_SSM_OFFLINE", "1")
    assert cli_main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert message in err


def test_help_lists_both_commands(capsys):
    assert cli_main(["bench", "--help"]) == 0
    text = capsys.readouterr().out
    assert "bench table" in text and "bench efficiency" in text
    assert bench_main(["efficiency", "--help"]) == 0
    assert "--lengths" in capsys.readouterr().out


def test_python_dash_m_entry_point(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "recbole_ssm.bench", "efficiency", "--models=SASRec",
                           "--lengths=1,x"], capture_output=True, text=True, env=workers.package_env())
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: bad value 'x' in --lengths=1,x: expected integers >= 1"


def test_model_specs_and_stats():
    specs = records.parse_model_specs("SASRec,SASRec:n_layers=1:n_heads=1,2Mamba4Rec")
    assert [s.label for s in specs] == ["SASRec", "SASRec:n_layers=1:n_heads=1", "2Mamba4Rec"]
    assert specs[1].overrides == {"n_layers": 1, "n_heads": 1}
    assert specs[2].canonical == "Mamba2Rec"
    assert report.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert report.mean_std([5.0]) == (5.0, 0.0)
    table = report.markdown_table(["a", "bb"], [["1", "2"]])
    assert table.splitlines()[0] == "| a | bb |" and table.splitlines()[2] == "| 1 | 2  |"


def test_cpu_peak_memory_sees_a_large_allocation():
    import numpy as np

    with memory.CpuPeakMemory() as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    assert mem.mib >= 60


def test_table_epoch_time_is_the_median_of_the_runs_epochs():
    assert bench_table.epoch_seconds([1.0, 100.0, 1.2]) == 1.2  # one paused epoch does not move it
    assert bench_table.epoch_seconds([2.0, 4.0]) == 3.0
    assert math.isnan(bench_table.epoch_seconds([]))


def test_fingerprint_holds_the_tuned_settings_only_where_the_run_reads_them(tmp_path, monkeypatch):
    """A tuned file (properties/tuned/<dataset>/<Model>.yaml) has the model file's name: both count,
    apart; a run given tuned_defaults=False does not read it, so its fingerprint leaves it out."""
    import shutil

    from recbole_ssm import config as cfg

    props = tmp_path / "props"
    shutil.copytree(cfg.PROPERTIES_DIR, props)
    monkeypatch.setattr(cfg, "PROPERTIES_DIR", str(props))
    plain = records.settings_files_digest("2Mamba4Rec", "ml-100k")
    tuned = props / "tuned" / "ml-100k" / "Mamba2Rec.yaml"
    tuned.parent.mkdir(parents=True)
    tuned.write_text("num_layers: 2\n")
    with_tuned = records.settings_files_digest("2Mamba4Rec", "ml-100k")
    assert with_tuned["Mamba2Rec.yaml"] == plain["Mamba2Rec.yaml"]  # the model's own file, still its own
    assert set(with_tuned) - set(plain) == {os.path.join("tuned", "ml-100k", "Mamba2Rec.yaml")}
    assert records.settings_files_digest("2Mamba4Rec", "ml-100k", tuned=False) == plain
    tuned.write_text("num_layers: 3\n")
    assert records.settings_files_digest("2Mamba4Rec", "ml-100k") != with_tuned
    model_file = props / "model" / "Mamba2Rec.yaml"
    model_file.write_text(model_file.read_text().replace("num_layers: 1 ", "num_layers: 4 "))
    assert records.settings_files_digest("2Mamba4Rec", "ml-100k")["Mamba2Rec.yaml"] != plain["Mamba2Rec.yaml"]


def test_fingerprint_follows_property_and_config_files(tmp_path):
    cfg = tmp_path / "extra.yaml"
    cfg.write_text("learning_rate: 0.001\n")
    before = records.settings_files_digest("2Mamba4Rec", "ml-100k", [str(cfg)])
    assert {"overall.yaml", "Mamba2Rec.yaml", "ml-100k.yaml", str(cfg)} <= set(before)
    cfg.write_text("learning_rate: 0.01\n")
    after = records.settings_files_digest("2Mamba4Rec", "ml-100k", [str(cfg)])
    assert after[str(cfg)] != before[str(cfg)] and after["Mamba2Rec.yaml"] == before["Mamba2Rec.yaml"]
    assert records.fingerprint({"files": after}) != records.fingerprint({"files": before})
    # the mapping counts, not the text: a comment, a blank line and the key order change nothing
    cfg.write_text("learning_rate: 0.01\nepochs: 3\n")
    two = records.settings_files_digest("2Mamba4Rec", "ml-100k", [str(cfg)])
    cfg.write_text("# a comment\nepochs: 3   # (int)\n\nlearning_rate: 0.01\n")
    assert records.settings_files_digest("2Mamba4Rec", "ml-100k", [str(cfg)]) == two
    cfg.write_text("learning_rate: 0.01\nepochs: 4\n")
    assert records.settings_files_digest("2Mamba4Rec", "ml-100k", [str(cfg)])[str(cfg)] != two[str(cfg)]
    # a setting added at its neutral value (the behaviour from before it existed) changes nothing
    cfg.write_text("learning_rate: 0.01\nepochs: 3\nce_negatives: 0\neval_score_chunks: true\n")
    assert records.settings_files_digest("2Mamba4Rec", "ml-100k", [str(cfg)]) == two
    cfg.write_text("learning_rate: 0.01\nepochs: 3\nce_negatives: 64\n")
    assert records.settings_files_digest("2Mamba4Rec", "ml-100k", [str(cfg)])[str(cfg)] != two[str(cfg)]


def test_the_shipped_defaults_of_the_neutral_settings_are_neutral():
    """overall.yaml holds ce_negatives, ce_negative_sampler and eval_score_chunks at the values that
    behave as before they existed, so its digest, and every record measured before, is unchanged."""
    import os

    import yaml

    from recbole_ssm.config import PROPERTIES_DIR

    with open(os.path.join(PROPERTIES_DIR, "overall.yaml"), encoding="utf-8") as f:
        shipped = yaml.safe_load(f)
    assert {k: shipped[k] for k in records.NEUTRAL_SETTINGS} == records.NEUTRAL_SETTINGS


def test_ops_benchmark_prints_every_row_on_tiny_sizes(capsys):
    from recbole_ssm.bench import ops

    argv = ["--batch=2", "--dim=8", "--d-state=4", "--ssd-heads=2", "--attn-heads=2", "--chunk-size=4"]
    argv += ["--lengths=9,13", "--repeats=1", "--ref-batch=2", "--ref-max-len=9", "--no-memory", "--threads=1"]
    assert ops.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 9 |") or line.startswith("| 13 |")]
    assert len(rows) == 2
    assert "x (B=2)" in rows[0] and "not run" in rows[1]  # references only up to --ref-max-len
    assert "| scan step (batch 2) |" in out and "| ssd step (batch 2) |" in out
    with pytest.raises(UsageError, match="--threads must be >= 0"):
        ops.main(["--threads=-1"])


def test_regimes_end_to_end_and_resume(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "reg")
    argv = ["regimes", "--models=Mamba2Rec,SASRec,Hydra4Rec,Hydra4Rec:num_layers=2", "--dataset=ml-tiny",
            f"--data_path={tiny_data}",
            "--batches=2",
            f"--output={out}", "--MAX_ITEM_LIST_LENGTH=20", "--hidden_size=16", "--inner_size=32", "--n_layers=1",
            "--headdim=16", "--train_batch_size=256", "--train_window_batch_size=16", "--state=WARNING",
            "--threads=1", "--progress=false"]
    assert bench_main(argv) == 0
    rows = read_csv(os.path.join(out, "regimes.csv"))
    assert [(r["model"], r["regime"]) for r in rows] == [("Mamba2Rec", "last"), ("Mamba2Rec", "all"),
                                                         ("SASRec", "last"), ("SASRec", "all"),
                                                         ("Hydra4Rec", "last"), ("Hydra4Rec", "all"),
                                                         ("Hydra4Rec:num_layers=2", "last"),
                                                         ("Hydra4Rec:num_layers=2", "cloze")]
    by = {(r["model"], r["regime"]): r for r in rows}
    # a deeper bidirectional model's window regime: the same windows, masked items as targets
    cloze = by[("Hydra4Rec:num_layers=2", "cloze")]
    assert cloze["samples_per_epoch"] == by[("Mamba2Rec", "all")]["samples_per_epoch"]
    assert 0 < int(cloze["targets_per_epoch"]) < int(by[("Hydra4Rec:num_layers=2", "last")]["targets_per_epoch"])
    assert float(cloze["epoch_ratio_last_all"]) > 0
    for model in ("Mamba2Rec", "SASRec", "Hydra4Rec"):
        last, every = by[(model, "last")], by[(model, "all")]
        assert last["targets_per_epoch"] == every["targets_per_epoch"]  # the same targets, fewer samples
        assert int(every["samples_per_epoch"]) < int(last["samples_per_epoch"])
        assert int(last["steps_timed"]) == int(every["steps_timed"]) == 2
        ratio = float(last["epoch_s"]) / float(every["epoch_s"])
        assert float(every["epoch_ratio_last_all"]) == pytest.approx(ratio, rel=1e-4)
        assert float(last["peak_mib"]) >= 0
    assert "Epoch last/windows" in open(os.path.join(out, "regimes.md"), encoding="utf-8").read()
    record = os.path.join(out, "runs", "SASRec-all.json")
    before = json.load(open(record, encoding="utf-8"))
    capsys.readouterr()
    assert bench_main(argv) == 0  # resume: nothing re-measured
    assert json.load(open(record, encoding="utf-8")) == before
    assert cli_main(["bench", "regimes", "--models=NARM", "--dataset=ml-tiny", f"--data_path={tiny_data}",
                     f"--output={out}"]) == 2  # RecBole's NARM has no window regime: refused up front
    assert "train_targets=all is not available for NARM" in capsys.readouterr().err


def test_regimes_can_measure_the_window_regimes_alone(tiny_data, tmp_path):
    out = str(tmp_path / "reg")
    argv = ["regimes", "--models=Mamba2Rec,Hydra4Rec,Mamba2Rec:train_window_positions=40", "--regimes=windows",
            "--dataset=ml-tiny", f"--data_path={tiny_data}", "--batches=1", f"--output={out}",
            "--MAX_ITEM_LIST_LENGTH=20", "--hidden_size=16", "--headdim=16", "--train_window_batch_size=16",
            "--threads=1", "--progress=false"]
    assert bench_main(argv) == 0
    rows = read_csv(os.path.join(out, "regimes.csv"))
    assert [(r["model"], r["regime"]) for r in rows] == [("Mamba2Rec", "all"), ("Hydra4Rec", "all"),
                                                         ("Mamba2Rec:train_window_positions=40", "all")]
    assert len(os.listdir(os.path.join(out, "runs"))) == 3
    by_length = rows[2]  # batches of at most 40 padded positions: more of them than of 16 windows
    assert by_length["targets_per_epoch"] == rows[0]["targets_per_epoch"]
    assert int(by_length["steps_per_epoch"]) > int(rows[0]["steps_per_epoch"])


def test_regimes_leave_window_only_settings_out_of_last():
    from recbole_ssm.bench.regimes import settings_for

    settings = {"train_window_positions": 400, "train_window_stride": 5, "hidden_size": 16}
    assert settings_for(settings, "last") == {"hidden_size": 16}
    assert settings_for(settings, "all") == settings == {**settings_for(settings, "cloze")}


def test_bench_stream_writes_latencies_and_state_sizes(tmp_path):
    out = tmp_path / "stream"
    # RecMamba's learned positions must reach the last stepped event (24 + 1 warm-up + 3 repeats)
    argv = ["stream", "--models=Mamba2Rec,SASRec,RecMamba", "--lengths=8,24", "--repeats=3", "--hidden_size=16",
            "--n_items=60", "--headdim=8", "--d_state=8", f"--output={out}"]
    assert bench_main(argv) == 0
    rows = list(csv.DictReader(open(out / "stream.csv", encoding="utf-8")))
    assert [(r["Model"], r["History n"]) for r in rows] == [("Mamba2Rec", "8"), ("Mamba2Rec", "24"),
                                                            ("SASRec", "8"), ("SASRec", "24"),
                                                            ("RecMamba", "8"), ("RecMamba", "24")]
    assert float(rows[5]["Step (ms/event)"]) > 0
    ssm, sasrec = rows[0], rows[2]
    assert float(ssm["Step (ms/event)"]) > 0 and ssm["State (bytes/user)"] == rows[1]["State (bytes/user)"]
    assert sasrec["Step (ms/event)"] == "-" and sasrec["Re-encode / baseline re-encode"] == "1.00"
    assert "slowest step / fastest step" in (out / "stream.md").read_text()
    assert (out / "stream.png").read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in os.listdir(out) if p.endswith(".tmp.png")]
    table = (out / "stream.csv").read_text()
    (out / "stream.png").unlink()
    assert bench_main(["stream", "--plot_only", f"--output={out}"]) == 0  # redrawn from the csv, nothing measured
    assert (out / "stream.png").read_bytes()[:8] == PNG_MAGIC and (out / "stream.csv").read_text() == table
    with pytest.raises(UsageError, match="no .*stream.csv; run bench stream"):
        bench_main(["stream", "--plot_only", f"--output={tmp_path / 'none'}"])


@pytest.mark.slow
def test_table_run_stopped_mid_training_continues_from_its_last_epoch(tiny_data, tmp_path):
    """SIGTERM to `bench table` while a run trains; the rerun continues that run (not from epoch 0) and
    records what an uninterrupted run records."""
    import glob
    import signal
    import subprocess
    import time

    import torch

    tiny = [a for a in TABLE_TINY if a not in ("--epochs=1", "--state=WARNING")] + [
        "--epochs=4", "--stopping_step=10", "--train_targets=all", "--train_window_batch_size=8",
        "--state=INFO"]  # INFO: the worker log shows each attempt's epochs
    args = ["table", "--models=GRU4Rec", "--dataset=ml-tiny", f"--data_path={tiny_data}", "--seeds=1", *tiny]
    whole = str(tmp_path / "whole")
    assert bench_main([*args, f"--output={whole}"]) == 0

    stopped = str(tmp_path / "stopped")
    cmd = [sys.executable, "-m", "recbole_ssm.bench", *args, f"--output={stopped}"]
    env = {**os.environ, "RECBOLE_SSM_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline, state = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None and state is None:
        for path in glob.glob(os.path.join(stopped, "saved", "*-resume.pth")):
            try:
                if torch.load(path, weights_only=False)["epoch"] >= 2:
                    state = path
            except (OSError, RuntimeError, EOFError, KeyError):
                pass  # being replaced
        time.sleep(0.05)
    assert state is not None, "the run ended before its third epoch began"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert not os.path.exists(os.path.join(stopped, "runs", "GRU4Rec-seed-2020.json"))
    assert os.path.exists(state)  # the worker was killed; its state stayed

    assert bench_main([*args, f"--output={stopped}"]) == 0
    log = open(os.path.join(stopped, "logs", "GRU4Rec-seed-2020.log"), encoding="utf-8").read()
    assert f"resuming from {state}" in log
    assert "epoch 0 training" in log.split(f"resuming from {state}")[0]  # the first attempt's lines are kept
    assert not os.path.exists(state)
    a, b = (json.load(open(os.path.join(d, "runs", "GRU4Rec-seed-2020.json"), encoding="utf-8"))
            for d in (whole, stopped))
    assert b["test"] == a["test"] and b["valid"] == a["valid"]
    assert b["epochs"] == a["epochs"] == 4 and len(b["epoch_times"]) == 4


def test_machine_line_names_the_cpu_model(tmp_path, monkeypatch):
    import platform

    from recbole_ssm.bench import report

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC 7B13\n\n"
                    "processor\t: 1\nmodel name\t: AMD  EPYC 7B13\n")
    assert report.cpu_model(str(info)) == "AMD EPYC 7B13"
    monkeypatch.setattr(platform, "processor", lambda: "x86_64-fallback")
    assert report.cpu_model(str(tmp_path / "missing")) == "x86_64-fallback"
    info.write_text("processor\t: 0\nmodel name\t:\n")  # an empty name: the fallback, not ""
    assert report.cpu_model(str(info)) == "x86_64-fallback"
    monkeypatch.setattr(report, "cpu_model", lambda: "Some CPU 9000")
    assert ", Some CPU 9000, " in report.machine_line()


def test_runs_line_names_each_runs_cpu_and_threads():
    from recbole_ssm.bench.report import runs_line

    records = [{"torch_threads": 2, "cpu": "Intel Xeon"}, {"torch_threads": 2, "cpu": "AMD EPYC 7B13"},
               {"torch_threads": 2, "cpu": "Intel Xeon"}, {"torch_threads": 1}]
    assert runs_line(records) == ("runs used 1 and 2 torch threads; CPU of the runs: AMD EPYC 7B13 (1 run); "
                                  "Intel Xeon (2 runs); not recorded (1 run)")
    assert runs_line(records[:1], "points") == "points used 2 torch threads; CPU of the points: Intel Xeon (1 point)"
    assert runs_line([]) == "runs used ? torch threads"


def test_lengths_runs_a_table_per_length_and_plots_accuracy_against_length(tiny_data, tmp_path, capsys):
    """bench lengths: one bench table per MAX_ITEM_LIST_LENGTH in its own folder; the report holds
    each length's test metrics exactly as that table has them; a second call reuses every run."""
    out = str(tmp_path / "len")
    tiny = [a for a in TABLE_TINY if not a.startswith("--MAX_ITEM_LIST_LENGTH")]
    argv = ["lengths", "--models=GRU4Rec", "--lengths=20,8", "--dataset=ml-tiny",
            f"--data_path={tiny_data}", "--train_targets=all", f"--output={out}", *tiny]
    assert bench_main(argv) == 0
    for length in (8, 20):
        table = open(os.path.join(out, f"L{length}", "table.md"), encoding="utf-8").read()
        assert f"--MAX_ITEM_LIST_LENGTH={length}" in table and "--train_targets=all" in table
    rows = read_csv(os.path.join(out, "lengths.csv"))
    assert [(r["model"], r["metric"], r["length"]) for r in rows] == [
        ("GRU4Rec", k, n) for k in ("hit@10", "ndcg@10", "mrr@10") for n in ("8", "20")]
    for row in rows:
        own = read_csv(os.path.join(out, f"L{row['length']}", "table.csv"))
        want = next(r for r in own if r["model"] == row["model"])[f"{row['metric']}_mean"]
        assert float(row["mean"]) == pytest.approx(float(want), rel=1e-5) and row["seeds"] == "1"
    assert_png(os.path.join(out, "lengths.png"))
    report = open(os.path.join(out, "lengths.md"), encoding="utf-8").read()
    header = next(line for line in report.splitlines() if line.startswith("| Model"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Model", "Metric", "L=8", "L=20"]
    assert "Command: `python run_recbole_ssm.py bench lengths --models=GRU4Rec --lengths=20,8" in report
    capsys.readouterr()
    assert bench_main(argv) == 0
    assert capsys.readouterr().err.count("1 finished run(s) reused") == 2
    # other settings into the same folder: a one-line error that names --overwrite, which bench
    # lengths passes on to each length's table (the runs are redone with the new settings)
    other = [*argv, "--learning_rate=0.002"]
    assert cli_main(["bench", *other]) == 2
    assert "add --overwrite" in capsys.readouterr().err
    assert bench_main([*other, "--overwrite"]) == 0
    assert "--learning_rate=0.002" in open(os.path.join(out, "L8", "table.md"), encoding="utf-8").read()


def test_lengths_plot_labels_only_the_lengths(monkeypatch, tmp_path):
    """A log axis labels minor ticks too (2x10^3 beside 2048 in the ML-1M plot): only the lengths read are."""
    from recbole_ssm.bench import lengths as bench_lengths

    figures = []
    monkeypatch.setattr(report, "save_png", lambda fig, path: figures.append(fig))
    values = {("M", n, "ndcg@10"): (0.1 + n * 1e-6, 0.0) for n in (200, 2048)}
    bench_lengths._plot(str(tmp_path / "x.png"), ["M"], [200, 2048], values, "d")
    (fig,) = figures
    fig.canvas.draw()
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
             if t.get_text() and t.get_visible() and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert shown == ["200", "2048"]


@pytest.mark.parametrize(("argv", "message"), [
    (["lengths", "--lengths=50"], "bench lengths needs --models"),
    (["lengths", "--models=SASRec"], "--lengths takes a comma-separated list of integers"),
    (["lengths", "--models=SASRec", "--lengths=50,50"], "lists a value twice"),
    (["lengths", "--models=SASRec", "--lengths=50", "--MAX_ITEM_LIST_LENGTH=9"], "set by bench lengths itself"),
])
def test_lengths_misuse_is_one_line_error(argv, message, capsys):
    assert cli_main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


IGNORED = {  # path in the repository -> whether git ignores it (.gitignore)
    "results/ml-1m-all/runs/Mamba2Rec-seed-2020.json": False,  # finished-run records are kept
    "results/ml-1m-all/table.md": False,
    "results/ml-1m-all/table.csv": False,
    "results/lifelong/synth/points/RecMamba-L4096.json": False,
    "results/ml-1m-all/saved/Mamba2Rec-seed-2020-0123456789abcdef-resume.pth": True,  # checkpoints, resume states
    "results/ml-1m-all/saved/Mamba2Rec-Dec-03-2026_12-54-27.pth": True,
    "results/ml-1m-all/logs/Mamba2Rec-seed-2020.log": True,  # logs
    "results/lengths-ml-1m/L200/logs/x.log": True,
    "saved/Mamba2Rec-Dec-03-2026.pth": True,
    "log/Mamba2Rec/run.log": True,
    "ray_results/sweep/trial/result.json": True,
    "dataset/ml-1m/ml-1m.inter": True,  # data sets are never committed
    "dataset/README.md": False,
}


@pytest.mark.parametrize("path,ignored", sorted(IGNORED.items()))
def test_gitignore_keeps_records_and_tables_but_not_checkpoints_logs_or_data(path, ignored):
    import shutil
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if shutil.which("git") is None or not os.path.exists(os.path.join(root, ".git")):
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=root)
    assert done.returncode in (0, 1), f"git check-ignore failed on {path}"
    assert (done.returncode == 0) == ignored


def test_every_bench_report_formats_a_cell_one_way():
    from recbole_ssm.bench.report import cell

    assert cell(None) == cell(float("nan")) == cell(float("nan"), 0.1, 4) == "-"
    assert cell(0.03981, 0.00104, 4) == "0.0398 ± 0.0010" and cell(0.03981, None, 4) == "0.0398"
    # about three significant digits for times and memory
    assert [cell(v) for v in (0.0891, 0.5, 1.294, 18.34, 310.5, 1023.4)] == ["0.0891", "0.500", "1.29", "18.3",
                                                                          "310", "1023"]
    assert cell(3.46, 0.06) == "3.46 ± 0.06" and cell(12, digits=0) == "12"
