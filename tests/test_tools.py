"""Tests of the checkout around the package (the scripts under tools/, .gitignore): they live in the
checkout, not in the wheel, so this file is not among the tests .ci/wheel-check runs against the
installed package."""

import importlib.util
import os
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_window_padding_tool_counts_padding_of_both_batchings(tmp_path, capsys):
    tool = load_tool("window_padding")
    g = torch.Generator().manual_seed(3)
    lines = [" ".join([f"u{u}"] + [f"i{int(i)}" for i in torch.randint(1, 50, (int(n),), generator=g)])
             for u, n in enumerate(torch.randint(4, 60, (41,), generator=g))]
    path = tmp_path / "seq.txt"
    path.write_text("\n".join(lines) + "\n")
    assert tool.main([str(path), "20", "8", "40"]) == 0
    out = capsys.readouterr().out.splitlines()
    real = sum(len(line.split()) - 4 for line in lines)  # inputs with a target: items but the last two, less one
    assert out[0].endswith(f"{real} positions with a target")
    fixed, by_length = (line.split("\t") for line in out[2:4])
    assert int(fixed[2]) >= int(by_length[2]) >= real  # batches by length pad no more
    assert float(by_length[3]) == pytest.approx(1 - real / int(by_length[2]), abs=1e-3)
    assert tool.main([str(path)]) == 2


def test_plot_valid_curves_draws_each_record_and_rejects_what_is_not_one(tmp_path, capsys):
    import json

    import matplotlib.image

    tool = load_tool("plot_valid_curves")
    records = []
    for name, scores in (("a", [[0, 0.01], [1, 0.02], [2, 0.015]]), ("b", [[0, 0.03], [1, 0.05]])):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"valid_scores": scores, "valid_metric": "ndcg@10"}))
        records.append(f"{path}={name}")
    out = tmp_path / "curves.png"
    assert tool.main([str(out), *records, "--title=t"]) == 0
    assert matplotlib.image.imread(str(out)).shape[0] > 100
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"status": "timeout"}))
    assert tool.main([str(tmp_path / "x.png"), str(empty)]) == 2
    assert "has no validation scores" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "x.png"), str(tmp_path / "missing.json")]) == 2
    assert tool.main(["not-a-png", records[0]]) == 2
    assert not (tmp_path / "x.png").exists()


def test_tests_run_against_the_wheel_need_nothing_outside_the_package():
    """.ci/wheel-check copies only tests/ next to the installed package: the test files it names must not
    open the checkout's tools/, docs/, results/ or benchmarks/ folders (they are not in the wheel)."""
    import re

    script = open(os.path.join(ROOT, ".ci", "wheel-check")).read()
    named = sorted(set(re.findall(r"tests/(test_\w+\.py)", script)))
    assert "test_regime.py" in named and "test_tools.py" not in named
    checkout_only = re.compile(r"""["'](tools|docs|results|benchmarks)(/|["'])""")
    for name in named + ["conftest.py"]:
        text = open(os.path.join(ROOT, "tests", name)).read()
        hits = [m.group(0) for m in checkout_only.finditer(text)]
        assert not hits, f"tests/{name} reads {hits} from the checkout, which .ci/wheel-check does not copy"


def test_gitignore_keeps_bench_records_and_drops_artefacts():
    """bench records (runs/*.json, tables, plots) are tracked so docs keep their raw numbers; checkpoints,
    resume states, logs, data sets and Ray Tune output are not."""
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")

    def ignored(path):
        rc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode
        assert rc in (0, 1), f"git check-ignore failed on {path}"
        return rc == 0

    dropped = ["results/ml-1m/saved/Mamba2Rec-Dec-03.pth", "results/ml-1m/saved/x-resume.pth",
               "results/ml-1m/L200/logs/Mamba2Rec-seed-2020.log", "results/ml-1m/bench.log",
               "saved/SASRec.pth", "log/SASRec/x.log", "ray_results/tune/result.json",
               "dataset/ml-1m/ml-1m.inter", ".venv/bin/python"]
    kept = ["results/ml-1m/runs/Mamba2Rec-seed-2020.json", "results/ml-1m/table.md", "results/ml-1m/table.csv",
            "results/ml-1m/lengths.png", "results/ml-1m/by_history.jsonl", "dataset/README.md",
            "recbole_ssm/models/base.py"]
    assert [p for p in dropped if not ignored(p)] == []
    assert [p for p in kept if ignored(p)] == []


def test_eval_by_length_tool_times_both_ways_and_their_scores_agree(capsys):
    tool = load_tool("eval_by_length_ab")
    assert tool.main(["ml-100k", "200", "1", "SASRec,Mamba4Rec", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["SASRec", "Mamba4Rec"]
    import re

    for line in lines:
        by_length, whole, diff = re.search(r"by length ([\d.]+) s\twhole batch ([\d.]+) s\t.*"
                                           r"max score difference ([\d.e+-]+)$", line).groups()
        assert float(by_length) > 0 and float(whole) > 0 and float(diff) < 1e-5
    assert tool.main(["ml-100k", "200"]) == 2


def test_bench_large_catalog_runs_every_step_at_a_small_scale(tmp_path, capsys):
    """The full-size benchmark's command at 0.3% of the size: every step runs, is timed and lands
    in results.json; the epoch sample times batches of the same epoch the training step ran."""
    import json

    pytest.importorskip("pyarrow")
    tool = load_tool("bench_large_catalog")
    work = tmp_path / "w"
    assert tool.main([f"--workdir={work}", "--scale=0.003", "--batch=64", "--ce_negatives=32",
                      "--ce_sample=0.05"]) == 0
    results = json.load(open(work / "results.json"))
    assert set(tool.STEPS) <= set(results)
    kept = results["prepare"]["kept"]
    assert 2000 < kept["users"] < 2300 and 500 < kept["items"] < 700
    train = results["train"]
    assert train["epoch_s"] > 0 and train["valid_eval_s"] >= 0 and os.path.exists(train["checkpoint"])
    assert "ndcg@10=" in train["test"]
    import pyarrow.parquet as pq

    assert pq.read_table(str(work / "top10.parquet")).num_rows == 10 * kept["users"]
    for key in ("ce_negatives=0", "ce_negatives=32"):
        sample = results["full_ce"][key]
        assert sample["batches_in_epoch"] == -(-kept["users"] // 64)  # one window a user (histories < L)
        assert sample["batches_timed"] >= 3 and sample["epoch_s_extrapolated"] > 0
    assert "| export |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.main([f"--workdir={work}", "--steps=nothing"])


def _bench_record(model: str, seed: int, rng) -> dict:
    """A finished ``bench table`` run record with random numbers in every field the table reads."""
    return {"model": model, "seed": seed, "status": "ok", "valid_metric": "ndcg@10",
            "test": {k: float(rng.uniform(0.01, 0.3)) for k in ("hit@10", "ndcg@10", "mrr@10")},
            "test_seen_out": {k: float(rng.uniform(0.01, 0.3)) for k in ("hit@10", "ndcg@10")},
            "valid": {"ndcg@10": float(rng.uniform(0.01, 0.3))}, "best_epoch": int(rng.integers(0, 50)),
            "latency_b1_ms": float(rng.uniform(0.5, 3)), "latency_bn_ms": float(rng.uniform(0.05, 0.3)),
            "epoch_s": float(rng.uniform(1, 40)), "epochs": int(rng.integers(5, 90)),
            "fit_peak_mib": float(rng.uniform(80, 5000)), "process_peak_rss_mib": float(rng.uniform(500, 6000)),
            "params": 1000, "params_no_emb": 100}


def test_compare_runs_gives_bench_tables_cells_for_each_folder(tmp_path, capsys):
    """Each (model, folder) row of tools/compare_runs.py holds the cells bench table writes for that
    folder's records (random records, two folders, an unfinished run left out, a seed filter)."""
    import json

    import numpy as np

    from recbole_ssm.bench.records import ModelSpec
    from recbole_ssm.bench.table import COLUMNS, build_rows

    tool = load_tool("compare_runs")
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    folders = {}
    for label, seeds in (("full", (2020, 2021, 2022)), ("64", (2020, 2021))):
        folder = tmp_path / f"out-{label}"
        (folder / "runs").mkdir(parents=True)
        records = {}
        for model in ("2Mamba4Rec", "SASRec"):
            for seed in seeds:
                records[(model, seed)] = _bench_record(model, seed, rng)
                (folder / "runs" / f"{model}-seed-{seed}.json").write_text(json.dumps(records[(model, seed)]))
        failed = {**_bench_record("SASRec", 2023, rng), "status": "failed"}
        (folder / "runs" / "SASRec-seed-2023.json").write_text(json.dumps(failed))
        folders[label] = (str(folder), records, list(seeds))
    columns = ["ndcg@10", "hit@10_seen_out", "valid", "epoch_s", "epochs", "fit_peak_mib"]
    assert tool.main([f"{lb}={f}" for lb, (f, _r, _s) in folders.items()] + [f"--columns={','.join(columns)}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [("2Mamba4Rec", "full"), ("2Mamba4Rec", "64"),
                                            ("SASRec", "full"), ("SASRec", "64")]
    names = [c[0] for c in COLUMNS]
    for label, (_folder, records, seeds) in folders.items():
        specs = [ModelSpec("2Mamba4Rec", "2Mamba4Rec"), ModelSpec("SASRec", "SASRec")]
        bench_header, bench_rows, _ch, _cr = build_rows(specs, records, seeds, 256)
        for bench_row in bench_rows:
            (row,) = [r for r in rows if r[0] == bench_row[0] and r[1] == label]
            assert row[2] == ",".join(map(str, seeds))
            for c in columns:
                at = 2 + names.index(c)  # bench table's columns: Model, Seeds, then COLUMNS
                assert header[3 + columns.index(c)] == bench_header[at]
                assert row[3 + columns.index(c)] == bench_row[at], (label, c)
    # a seed filter keeps those seeds only; unknown columns and folders are one-line errors
    assert tool.main([f"a={folders['full'][0]}", "--seeds=2021", "--columns=ndcg@10"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[2:]
    expect = folders["full"][1][("SASRec", 2021)]["test"]["ndcg@10"]
    assert out[1].split("|")[3].strip() == "2021" and out[1].split("|")[4].strip() == f"{expect:.4f} ± 0.0000"
    with pytest.raises(SystemExit, match="unknown column"):
        tool.main([f"a={folders['full'][0]}", "--columns=ndcg@20"])
    assert tool.main([f"a={tmp_path / 'nothing'}"]) == 2
    assert "no runs/ folder" in capsys.readouterr().err
