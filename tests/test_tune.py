"""Ray Tune sweeps: search spaces, error paths, results, and one real sweep through the CLI."""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import yaml

from recbole_ssm.cli import main
from recbole_ssm.config import PROPERTIES_DIR, read_yaml
from recbole_ssm.errors import UsageError
from recbole_ssm.tune import report
from recbole_ssm.tune.space import known_keys, load_space, parse_space, to_param_space

pytest.importorskip("ray.tune")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "run_recbole_ssm.py")
HYPER_MODELS = sorted(f.removesuffix(".yaml") for f in os.listdir(os.path.join(PROPERTIES_DIR, "hyper")))  # tune spaces
# A GRU4Rec run of seconds on the ml-tiny slice (conftest.tiny_data).
SMALL = ["--epochs=3", "--MAX_ITEM_LIST_LENGTH=20", "--hidden_size=16", "--embedding_size=16", "--state=WARNING"]


def write(path, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def script_env(tmp_path) -> dict:
    """The scripts import this checkout (Ray's workers too); HOME and TMPDIR are empty folders."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HOME": str(home), "TMPDIR": str(tmp),
            "RECBOLE_SSM_OFFLINE": "1"}


def run_script(args: list[str], env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


# ---------------------------------------------------------------------------------------
# search spaces


@pytest.mark.parametrize("model", HYPER_MODELS)
def test_shipped_spaces_are_valid_and_sample_within_bounds(model):
    params = load_space(os.path.join(PROPERTIES_DIR, "hyper", f"{model}.yaml"), model, "ml-100k")
    assert {"learning_rate", "hidden_size"} <= {p.key for p in params}
    assert {p.key for p in params} <= known_keys(model, "ml-100k")
    space = to_param_space(params, "random")
    for p in params:
        for _ in range(20):
            value = space[p.key].sample()
            if p.dist == "choice":
                assert value in p.args
            elif p.dist == "randint":
                assert p.args[0] <= value < p.args[1] and float(value).is_integer()
            else:
                assert p.args[0] <= value <= p.args[1]


SWEEPS_DIR = os.path.join(ROOT, "tools", "sweeps")


def package_sweeps() -> list[tuple[str, str]]:
    """(dataset, model) of every sweep tools/sweeps/run.sh runs, read from its ALL list."""
    text = open(os.path.join(SWEEPS_DIR, "run.sh"), encoding="utf-8").read()
    listed = re.search(r'^ALL="([^"]*)"', text, re.M).group(1).split()
    return [tuple(s.split("/")) for s in listed]


# settings a search space may vary that shape the network (and so can fail to build together)
SHAPE_KEYS = ("num_layers", "n_layers", "n_heads", "hidden_size", "inner_size", "expand", "d_state", "headdim")


@pytest.mark.parametrize("dataset,model", package_sweeps())
def test_package_sweep_spaces_build_and_train_at_every_shape(dataset, model, tiny_data):
    """Every combination of a package sweep's network sizes builds its model and takes a training
    step under ``all``: a sweep never spends hours to find that a sampled shape cannot run (e.g. a
    hidden size Mamba2Rec's heads do not divide, or one n_heads does not divide)."""
    import itertools

    import torch
    from recbole.data import create_dataset
    from recbole.data.interaction import Interaction

    from recbole_ssm import compat
    from recbole_ssm.quick_start import build_config
    from recbole_ssm.targets import TARGETS
    from tests.conftest import TINY

    space = os.path.join(SWEEPS_DIR, dataset, "SASRec.yaml" if model == "SASRec" else "ssm.yaml")
    params = load_space(space, model, dataset)
    shapes = [p for p in params if p.key in SHAPE_KEYS]
    assert shapes and all(p.dist == "choice" for p in shapes), "network sizes are searched as choices"
    base = {**TINY, "data_path": tiny_data, "MAX_ITEM_LIST_LENGTH": 6, "train_targets": "all"}
    config, cls = build_config(model, "ml-tiny", None, base)
    with compat.quiet_recbole():
        data = create_dataset(config)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(1, data.item_num, (3, 6), generator=g)
    batch = Interaction({"item_id_list": seq, "item_length": torch.tensor([6, 4, 1]),
                         TARGETS: torch.where(torch.arange(6) < torch.tensor([[6], [4], [1]]),
                                              torch.randint(1, data.item_num, (3, 6), generator=g), 0)})
    combos = list(itertools.product(*(p.args for p in shapes)))
    for combo in combos:
        sizes = dict(zip((p.key for p in shapes), combo))
        config, cls = build_config(model, "ml-tiny", None, {**base, **sizes})
        net = cls(config, data).train()
        loss = net.calculate_loss(batch)
        loss.backward()
        assert torch.isfinite(loss), sizes
        assert all(config[k] == v for k, v in sizes.items()), sizes


def test_space_reads_yaml_floats_without_a_dot_as_numbers(tmp_path):
    path = write(tmp_path / "s.yaml", "learning_rate: {loguniform: [1e-4, 1e-2]}\n"
                                      "dropout_prob: {choice: [1e-1, 0.2]}\n")
    params = load_space(path, "GRU4Rec")
    assert params[0].args == [1e-4, 1e-2]
    assert params[1].args == [0.1, 0.2]


def test_grid_search_runs_every_combination_of_lists():
    from ray.tune.search.variant_generator import generate_variants

    params = parse_space({"hidden_size": {"choice": [16, 32]}, "num_layers": {"grid": [1, 2, 3]}}, "GRU4Rec")
    variants = [cfg for _, cfg in generate_variants(to_param_space(params, "grid"))]
    assert sorted((v["hidden_size"], v["num_layers"]) for v in variants) == [
        (h, n) for h in (16, 32) for n in (1, 2, 3)
    ]
    with pytest.raises(UsageError, match="--search=grid needs value lists, but learning_rate uses loguniform"):
        to_param_space(parse_space({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, "GRU4Rec"), "grid")


@pytest.mark.parametrize(
    "space, words",
    [
        ({"learning_rate": {"logunifrom": [1e-4, 1e-2]}}, "unknown distribution 'logunifrom'; use one of"),
        ({"hidden_sise": {"choice": [32]}}, "'hidden_sise' is not a setting of GRU4Rec"),
        ({"d_state": {"choice": [16]}}, "'d_state' is not a setting of GRU4Rec"),
        ({"learning_rate": {"loguniform": [0, 1e-2]}}, "needs LOW > 0"),
        ({"learning_rate": {"uniform": [0.5, 0.1]}}, "needs LOW < HIGH"),
        ({"num_layers": {"randint": [1, 2.5]}}, "randint takes [LOW, HIGH] (integers)"),
        ({"hidden_size": {"choice": []}}, "choice takes a non-empty list"),
        ({"hidden_size": 64}, "must be one {DISTRIBUTION: ARGS}"),
        ({"hidden_size": {"choice": [32], "grid": [64]}}, "must be one {DISTRIBUTION: ARGS}"),
        ({"model": {"choice": ["SASRec"]}}, "'model' cannot be searched"),
    ],
)
def test_bad_space_is_a_one_line_error(space, words):
    with pytest.raises(UsageError) as exc:
        parse_space(space, "GRU4Rec")
    assert words in str(exc.value)
    assert "\n" not in str(exc.value)


def test_ssm_model_keys_come_from_its_property_file():
    keys = known_keys("Mamba2Rec")
    assert {"d_state", "headdim", "ngroups", "chunk_size", "learning_rate", "MAX_ITEM_LIST_LENGTH"} <= keys
    assert "n_heads" not in keys
    assert known_keys("2Mamba4Rec") == keys


# ---------------------------------------------------------------------------------------
# error paths of the command line: one line, exit 2, before any trial (or Ray) starts


@pytest.mark.parametrize(
    "space_text, words",
    [
        ("learning_rate: {loguniform: [1e-4, 1e-2]\n", "is not valid YAML"),
        ("- learning_rate\n", "must hold a mapping"),
        ("learning_rate: {gaussian: [0.001, 0.1]}\n", "unknown distribution 'gaussian'"),
        ("n_heads: {choice: [1, 2]}\n", "'n_heads' is not a setting of GRU4Rec"),
    ],
)
def test_tune_rejects_bad_space_files_before_starting(tmp_path, capsys, space_text, words):
    space = write(tmp_path / "space.yaml", space_text)
    storage = tmp_path / "runs"
    code = main(["tune", "--model=GRU4Rec", f"--space={space}", f"--storage={storage}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and words in err and "\n" not in err
    assert not storage.exists(), "nothing is written before the space is valid"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--space=/nonexistent/space.yaml"], "space file not found: /nonexistent/space.yaml"),
        (["--scheduler=hyperband"], "--scheduler takes one of asha, fifo"),
        (["--search=bayes"], "--search takes one of random, grid"),
        (["--num_samples=0"], "--num_samples takes a whole number >= 1"),
        (["--cpus_per_trial=0"], "--cpus_per_trial takes a number > 0"),
        (["--model=NoSuchModel"], "unknown model 'NoSuchModel'"),
        (["--resume", "--name=never-ran"], "--resume: no sweep to continue in"),
        (["--nproc=2"], "--nproc is not available in a sweep"),
    ],
)
def test_tune_rejects_bad_options(tmp_path, capsys, args, words):
    base = {"--model": "--model=GRU4Rec", "--storage": f"--storage={tmp_path / 'runs'}"}
    for arg in args:
        base[arg.split("=")[0]] = arg
    code = main(["tune", *base.values()])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and words in err and "\n" not in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["ray://", ""])
def test_unreachable_address_fails_within_seconds(tmp_path, capsys, scheme):
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    t0 = time.perf_counter()
    code = main(["tune", "--model=GRU4Rec", f"--address={address}", f"--storage={tmp_path / 'runs'}",
                 "--epochs=1"])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"error: cannot reach a Ray cluster at --address={address}") and "\n" not in err
    assert "ray start --head" in err
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_resume_keeps_the_stored_settings(tmp_path, capsys):
    from recbole_ssm.tune.cli import build_settings

    settings = build_settings({"model": "GRU4Rec"}, {"epochs": 3})
    run_dir = tmp_path / "runs" / "GRU4Rec_ml-100k"
    run_dir.mkdir(parents=True)
    write(run_dir / "sweep.yaml", settings.to_yaml())
    write(run_dir / "tuner.pkl", "")  # the file Tune looks for to restore a sweep
    base = ["tune", "--resume", f"--storage={tmp_path / 'runs'}"]
    cases = [
        (["--model=GRU4Rec", "--epochs=9"], "--resume: the fixed --KEY=VALUE settings not as in the sweep"),
        (["--model=GRU4Rec", "--epochs=3", "--num_samples=2"], "--resume: --num_samples not as in the sweep"),
        (["--name=GRU4Rec_ml-100k", "--epochs=3"], "pass only --storage, --name and --address"),
    ]
    for args, words in cases:
        assert main(base + args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err
    # without --resume, a folder holding a sweep is never overwritten
    assert main(["tune", "--model=GRU4Rec", f"--storage={tmp_path / 'runs'}"]) == 2
    assert "already holds a sweep: add --resume" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# the results table and best.yaml (from Tune's Result objects; no Ray needed)


def _result(trial, lr, metrics, error=None):
    return SimpleNamespace(config={"learning_rate": lr}, metrics={"trial_id": trial, **metrics},
                           error=error, path=f"/runs/x/{trial}")


def test_table_sorts_by_validation_with_failed_trials_last(tmp_path):
    results = [
        _result("a", 0.001, {"best_valid_score": 0.02, "epochs_trained": 1}),
        _result("b", 0.01, {"best_valid_score": 0.05, "epochs_trained": 3, "finished": True,
                            "test/ndcg@10": 0.04}),
        _result("c", 1e38, {}, error=RuntimeError("Traceback ...\nValueError: Training loss is nan")),
        _result("d", 0.003, {"best_valid_score": 0.03, "epochs_trained": 3, "finished": True,
                             "test/ndcg@10": 0.02}),
        _result("e", None, {"best_valid_score": 0.01, "epochs_trained": 1}),
    ]
    # Tune's own view: "e" was running when the sweep was interrupted; its config lives on the trial
    configs = [r.config for r in results[:-1]] + [{"learning_rate": 0.02}]
    states = ["TERMINATED", "TERMINATED", "ERROR", "TERMINATED", "PENDING"]
    rows = report.sort_rows(report.rows_from_results(results, ["learning_rate"], configs, states), bigger=True)
    assert [(r.trial, r.status) for r in rows] == [
        ("b", "finished"), ("d", "finished"), ("a", "stopped"), ("e", "unfinished"), ("c", "failed")]
    assert rows[3].params == {"learning_rate": 0.02}
    rows = [r for r in rows if r.trial != "e"]
    assert rows[-1].error == "ValueError: Training loss is nan"
    assert report.best_row(rows, bigger=True).trial == "b"
    assert report.best_row(report.sort_rows(rows, bigger=False), bigger=False).trial == "a"

    frame = report.to_frame(rows, "ndcg@10")
    report.write_csv(frame, str(tmp_path / "t.csv"))
    with open(tmp_path / "t.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table] == ["b", "d", "a", "c"]
    assert table[0]["valid ndcg@10"] == "0.05" and table[0]["test ndcg@10"] == "0.04"
    assert table[3]["error"] == "ValueError: Training loss is nan"
    assert "ValueError" in report.format_table(frame)


def test_choice_with_the_history_left_out_is_among_finished_trials(tmp_path):
    """Finished trials report their best checkpoint's validation and test with the history left
    out; that choice can name another trial than RecBole's ranking, and never a stopped one."""
    seen = "valid_seen_out/ndcg@10"
    results = [
        _result("a", 0.001, {"best_valid_score": 0.06, "epochs_trained": 1}),  # stopped: no such score
        _result("b", 0.01, {"best_valid_score": 0.05, "epochs_trained": 3, "finished": True,
                            "test/ndcg@10": 0.04, seen: 0.061, "test_seen_out/ndcg@10": 0.05}),
        _result("d", 0.003, {"best_valid_score": 0.03, "epochs_trained": 3, "finished": True,
                             "test/ndcg@10": 0.02, seen: 0.072, "test_seen_out/ndcg@10": 0.06}),
    ]
    rows = report.sort_rows(report.rows_from_results(results, ["learning_rate"]), bigger=True)
    assert report.best_row(rows, bigger=True).trial == "a"
    assert report.best_row_seen_out(rows, "ndcg@10", bigger=True).trial == "d"
    assert report.best_row_seen_out(rows, "ndcg@10", bigger=False).trial == "b"
    assert report.best_row_seen_out(rows[:1], "ndcg@10", bigger=True) is None
    report.write_csv(report.to_frame(rows, "ndcg@10"), str(tmp_path / "t.csv"))
    with open(tmp_path / "t.csv", encoding="utf-8") as f:
        table = {r["trial"]: r for r in csv.DictReader(f)}
    assert table["d"]["valid ndcg@10 (history left out)"] == "0.072"
    assert table["d"]["test ndcg@10 (history left out)"] == "0.06"
    assert table["a"]["valid ndcg@10 (history left out)"] == ""


def test_best_yaml_is_a_config_file_with_exact_values(tmp_path):
    lr = 0.0012345678901234567
    config = report.best_config({"eval_batch_size": 512}, {"epochs": 3}, {"learning_rate": lr},
                                "GRU4Rec", "ml-100k", 2020, True)
    path = str(tmp_path / "best.yaml")
    report.write_best_yaml(path, config, "Best trial x.\nrerun line")
    loaded = read_yaml(path)
    assert loaded == {"model": "GRU4Rec", "dataset": "ml-100k", "eval_batch_size": 512, "epochs": 3,
                      "learning_rate": lr, "seed": 2020, "reproducibility": True}
    from recbole_ssm.quick_start import build_config

    rb, _ = build_config("GRU4Rec", "ml-100k", [path])
    assert rb["learning_rate"] == lr and rb["epochs"] == 3


# ---------------------------------------------------------------------------------------
# one real sweep


def _trial_epochs(trial_dir: str) -> list[int]:
    """The epochs a trial reported, in order, from Tune's progress.csv."""
    with open(os.path.join(trial_dir, "progress.csv"), encoding="utf-8") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("epoch")]


def _valid_metric(stdout: str, metric: str) -> float:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("valid"))
    return float(re.search(rf"{re.escape(metric)}=([0-9.]+)", line).group(1))


def _ray_cpus() -> int:
    """The CPUs a local Ray cluster started here has (Ray reads cgroup quotas and CPU affinity)."""
    try:
        from ray._private.utils import get_num_cpus

        return int(get_num_cpus())
    except (ImportError, AttributeError):
        return len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_asha_sweep_table_best_yaml_reproduces_and_resume(tmp_path, tiny_data):
    """3 trials under ASHA, one at a time in the grid's order (each asks for every CPU of the local Ray
    cluster): one that learns, one that learns nothing (ASHA must stop it at the first rung), one
    that fails (its learning rate overflows the weights)."""
    space = write(tmp_path / "space.yaml", "learning_rate: {grid: [1.0e-2, 1.0e-9, 1.0e+38]}\n"
                                           "dropout_prob: {uniform: [0.1, 0.3]}\n")
    storage = tmp_path / "runs"
    env = script_env(tmp_path)
    args = ["tune", "--model=GRU4Rec", "--dataset=ml-tiny", f"--space={space}", "--num_samples=1",
            "--scheduler=asha", f"--cpus_per_trial={_ray_cpus()}", f"--storage={storage}",
            "--name=sweep", f"--data_path={tiny_data}", *SMALL,
            "--train_batch_size=256"]  # about 50 steps an epoch: enough for 1e-2 to beat an untrained model at epoch 1
    proc = run_script(args, env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = storage / "sweep"

    # nothing outside the run folder: Ray's temp dir is inside it, HOME and TMPDIR stay empty
    assert glob.glob(str(run_dir / "ray" / "session_*"))
    assert os.listdir(env["TMPDIR"]) == [] and os.listdir(env["HOME"]) == []
    for link in glob.glob("/tmp/rs-*/r"):
        assert not os.path.realpath(link).startswith(str(run_dir))

    # the table: printed and written as CSV, sorted by the validation metric, the failure last
    with open(run_dir / "trials.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    assert [r["trial"] for r in table][0] in proc.stdout and "valid ndcg@10" in proc.stdout
    failed = [r for r in table if r["status"] == "failed"]
    assert len(failed) == 1 and float(failed[0]["learning_rate"]) == 1e38 and failed[0]["error"]
    assert table[-1]["status"] == "failed"
    scores = [float(r["valid ndcg@10"]) for r in table[:-1]]
    assert scores == sorted(scores, reverse=True)
    assert {r["status"] for r in table[:-1]} <= {"finished", "stopped"}

    # every trial's reported epochs are 1, 2, ... and its row counts them
    trial_dirs = {os.path.basename(d): d for d in glob.glob(str(run_dir / "run_trial_*"))}
    epochs = {}
    for row in table[:-1]:
        (d,) = [d for name, d in trial_dirs.items() if row["trial"] in name]
        epochs[row["trial"]] = _trial_epochs(d)
        assert epochs[row["trial"]] == list(range(1, len(epochs[row["trial"]]) + 1))
        assert int(row["epochs"]) == len(epochs[row["trial"]])
    # ASHA (reduction factor 2): the trial that learns nothing reaches the first rung (epoch 1) below
    # the one before it and is stopped there; the one that learns runs every epoch and is tested
    by_lr = {float(r["learning_rate"]): r for r in table}
    learns, idle = by_lr[1e-2], by_lr[1e-9]
    assert learns["status"] == "finished" and epochs[learns["trial"]] == [1, 2, 3]
    assert idle["status"] == "stopped" and epochs[idle["trial"]] == [1], (idle, epochs)
    assert float(idle["valid ndcg@10"]) < float(learns["valid ndcg@10"])
    assert float(learns["test ndcg@10"]) > 0
    # the finished trial's checkpoint with the history left out, as `evaluate` scores it
    from recbole_ssm.checkpoint import evaluate_splits

    (checkpoint,) = glob.glob(os.path.join(trial_dirs[next(n for n in trial_dirs if learns["trial"] in n)],
                                           "saved", "*.pth"))
    _, seen_out = evaluate_splits(checkpoint, ("valid", "test"), {"eval_filter_seen": True})
    assert float(learns["valid ndcg@10 (history left out)"]) == pytest.approx(seen_out["valid"]["ndcg@10"], abs=1e-9)
    assert float(learns["test hit@10 (history left out)"]) == pytest.approx(seen_out["test"]["hit@10"], abs=1e-9)
    assert idle["valid ndcg@10 (history left out)"] == ""  # stopped: never scored that way

    # best.yaml reruns the best trial through the normal CLI with the same validation metric
    best = table[0]
    best_yaml = read_yaml(str(run_dir / "best.yaml"))
    assert best_yaml["learning_rate"] == pytest.approx(float(best["learning_rate"]), rel=1e-12)
    assert best_yaml["epochs"] == 3 and best_yaml["hidden_size"] == 16
    rerun = ["--model=GRU4Rec", "--dataset=ml-tiny", f"--config_files={run_dir / 'best.yaml'}"]
    if best["status"] != "finished":  # stopped by ASHA: compare the epochs it ran
        rerun.append(f"--epochs={best['epochs']}")
    again = run_script(rerun, env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _valid_metric(again.stdout, "ndcg@10") == pytest.approx(float(best["valid ndcg@10"]), abs=1e-9)


    # --resume on the finished sweep runs nothing again and gives the same table
    first = (run_dir / "trials.csv").read_text()
    resumed = run_script(["tune", "--resume", f"--storage={storage}", "--name=sweep"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "trials.csv").read_text() == first
    json.dumps(best_yaml)  # plain values only (no numpy scalars)
    assert yaml.safe_dump(best_yaml)


@pytest.mark.slow
def test_interrupted_sweep_resumes_its_trial_from_the_last_epoch(tmp_path, tiny_data):
    """Ctrl-C during a trial's epochs, then --resume: the trial goes on from the training state it
    saved before its current epoch (not from epoch 1) and ends with the numbers of an uninterrupted
    run of the same settings."""
    import signal

    env = script_env(tmp_path)
    storage = tmp_path / "runs"
    space = write(tmp_path / "space.yaml", "learning_rate: {grid: [3.0e-3]}\n")
    settings = [*SMALL[1:], "--epochs=6", "--stopping_step=100", "--train_batch_size=64"]
    args = ["tune", "--model=GRU4Rec", "--dataset=ml-tiny", f"--space={space}", "--scheduler=fifo", "--num_samples=1",
            f"--cpus_per_trial={_ray_cpus()}", f"--storage={storage}", "--name=sweep",
            f"--data_path={tiny_data}", *settings]
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    progress = []
    while time.time() < deadline and proc.poll() is None:
        progress = glob.glob(str(storage / "sweep" / "run_trial_*" / "progress.csv"))
        if progress and len(_trial_epochs(os.path.dirname(progress[0]))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the trial ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "trials unfinished; continue with" in err
    (trial_dir,) = [d for d in glob.glob(str(storage / "sweep" / "run_trial_*")) if os.path.isdir(d)]
    assert os.path.isfile(os.path.join(trial_dir, "saved", "trial-resume.pth"))

    resumed = run_script(["tune", "--resume", f"--storage={storage}", "--name=sweep"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Tune's progress.csv: the epochs of the first worker process, then those of the resumed one,
    # which starts where the first stopped (the state saved before the epoch that was cut off)
    with open(os.path.join(trial_dir, "progress.csv"), encoding="utf-8") as f:
        reports = [(r["pid"], int(float(r["epoch"]))) for r in csv.DictReader(f) if r.get("epoch")]
    pids = list(dict.fromkeys(pid for pid, _ in reports))
    assert len(pids) == 2, reports
    first = [e for pid, e in reports if pid == pids[0]]
    second = [e for pid, e in reports if pid == pids[1]]
    assert len(first) >= 2 and second[0] > 1 and second[0] <= first[-1] + 1, reports
    assert second == list(range(second[0], 7)), reports
    assert not os.path.exists(os.path.join(trial_dir, "saved", "trial-resume.pth"))  # the trial completed
    with open(storage / "sweep" / "trials.csv", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "finished" and int(row["epochs"]) == 6
    # the sweep's wall clock: one entry per call, the total over both
    clock = json.loads((storage / "sweep" / "wall_clock.json").read_text())
    assert len(clock["calls"]) == 2 and all(c["seconds"] > 0 for c in clock["calls"])
    assert clock["total_seconds"] == pytest.approx(sum(c["seconds"] for c in clock["calls"]), abs=0.2)

    straight = run_script(["--model=GRU4Rec", "--dataset=ml-tiny", f"--data_path={tiny_data}",
                           "--learning_rate=3.0e-3", *settings], env, tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert _valid_metric(straight.stdout, "ndcg@10") == pytest.approx(float(row["valid ndcg@10"]), abs=1e-9)


@pytest.mark.slow
@pytest.mark.skipif(_ray_cpus() < 2, reason="needs 2 CPUs for two one-CPU trials to fit side by side")
def test_max_concurrent_runs_trials_one_after_another(tmp_path, tiny_data):
    """--max_concurrent=1 with one-CPU trials on a machine where two would fit: the second trial
    starts after the first has ended."""
    env = script_env(tmp_path)
    storage = tmp_path / "runs"
    space = write(tmp_path / "space.yaml", "learning_rate: {grid: [1.0e-3, 3.0e-3]}\n")
    args = ["tune", "--model=GRU4Rec", "--dataset=ml-tiny", f"--space={space}", "--search=grid",
            "--scheduler=fifo", "--cpus_per_trial=1", "--max_concurrent=1", f"--storage={storage}",
            "--name=sweep", f"--data_path={tiny_data}", *SMALL[1:], "--epochs=2"]
    proc = run_script(args, env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spans = []
    for d in glob.glob(str(storage / "sweep" / "run_trial_*")):
        if not os.path.isdir(d):
            continue
        with open(os.path.join(d, "progress.csv"), encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        # Tune's timestamp is the report's wall clock in whole seconds; time_total_s counts from the trial's start
        spans.append((float(rows[0]["timestamp"]) - float(rows[0]["time_total_s"]), float(rows[-1]["timestamp"])))
    assert len(spans) == 2
    (start_a, end_a), (start_b, end_b) = sorted(spans)
    assert start_b >= end_a - 1.0, spans  # 1 s: the timestamps' resolution


@pytest.mark.slow
def test_time_budget_cuts_the_running_trial_after_its_epoch_and_runs_no_more(tmp_path, tiny_data):
    """--time_budget_h: three trials one after another, each with far more epochs than the budget
    allows; at the budget's end the first ends after its epoch and is tested at its best one (cut),
    and the other two never start (not run). The budget is fixed on --resume."""
    env = script_env(tmp_path)
    storage = tmp_path / "runs"
    budget_h = 60 / 3600  # room for Ray to start on a loaded machine before the first trial
    space = write(tmp_path / "space.yaml", "learning_rate: {grid: [1.0e-3, 2.0e-3, 3.0e-3]}\n")
    args = ["tune", "--model=GRU4Rec", "--dataset=ml-tiny", f"--space={space}", "--search=grid",
            "--scheduler=fifo", f"--cpus_per_trial={_ray_cpus()}", f"--storage={storage}", "--name=sweep",
            f"--time_budget_h={budget_h}", f"--data_path={tiny_data}", *SMALL[1:], "--epochs=1000",
            "--stopping_step=1000", "--train_batch_size=64"]
    proc = run_script(args, env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = storage / "sweep"
    with open(run_dir / "trials.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert sorted(r["status"] for r in table) == ["cut", "not run", "not run"], table
    (cut,) = [r for r in table if r["status"] == "cut"]
    assert float(cut["learning_rate"]) == 1e-3  # the grid's first, the only one started
    (trial_dir,) = [d for d in glob.glob(str(run_dir / "run_trial_*")) if cut["trial"] in d]
    epochs = _trial_epochs(trial_dir)
    assert 1 <= len(epochs) < 1000 and int(cut["epochs"]) == len(epochs)
    assert float(cut["test ndcg@10"]) > 0 and cut["valid ndcg@10 (history left out)"] != ""
    assert all(int(r["epochs"]) == 0 and r["valid ndcg@10"] == "" for r in table if r["status"] == "not run")
    assert "2 not run" in proc.stdout and "1 cut" in proc.stdout
    clock = json.loads((run_dir / "wall_clock.json").read_text())
    # the budget, then the epoch in progress, the test and the two trials that do not run
    assert budget_h * 3600 < clock["total_seconds"] < budget_h * 3600 + 120, clock
    best = read_yaml(str(run_dir / "best.yaml"))
    assert best["learning_rate"] == pytest.approx(1e-3)

    longer = [("--time_budget_h=2" if a.startswith("--time_budget_h=") else a) for a in args]
    other = run_script([*longer, "--resume"], env, tmp_path)
    assert other.returncode == 2 and "--time_budget_h not as in the sweep stored" in other.stderr, other.stderr
