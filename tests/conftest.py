"""Shared fixtures: a small slice of ml-100k written as atomic files, runs in a temp folder."""

from __future__ import annotations

import os

import pytest

TINY_USERS = 120  # users 1..120 of ml-100k: ~12.7k interactions


def pytest_configure(config):
    """Under pytest-xdist (``make test`` starts one worker per CPU) a worker, and every process a
    test starts, keeps to one thread, so that the workers do not fight over the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)


def ml100k_inter_path() -> str:
    import recbole

    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k", "ml-100k.inter")


def write_ml100k_slice(root: str, name: str, max_user: int = TINY_USERS) -> str:
    """Write ``root/name/name.inter`` with the interactions of users 1..max_user; return root."""
    with open(ml100k_inter_path(), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    keep = [r for r in rows if int(r.split("\t", 1)[0]) <= max_user]
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write(header + "\n" + "\n".join(keep) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """data_path holding ``ml-tiny``: a small slice of ml-100k (never the network, never ../shared)."""
    return write_ml100k_slice(str(tmp_path_factory.mktemp("data")), "ml-tiny")


# Settings that keep a RecBole run to seconds on 2 cores.
TINY = {
    "epochs": 1,
    "MAX_ITEM_LIST_LENGTH": 20,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "train_batch_size": 256,
    "eval_batch_size": 256,
    "show_progress": False,
    "state": "WARNING",
    "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
}


@pytest.fixture
def tiny_config(tiny_data) -> dict:
    return {**TINY, "data_path": tiny_data}


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """RecBole writes log/, saved/ and log_tensorboard/ into the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECBOLE_SSM_OFFLINE", "1")


def models_where(test) -> list[str]:
    """The package's models (``recbole_ssm.models.MODELS``, found by module name) whose class passes
    ``test``: the tests' model lists follow the registry, so a new model is tested without a list to edit."""
    from recbole_ssm.models import MODELS

    return [name for name, cls in MODELS.items() if test(cls)]


def is_ssm(cls) -> bool:
    from recbole_ssm.models.base import SSMRecommender

    return issubclass(cls, SSMRecommender)


def trains_causally(cls) -> bool:
    """A causal model that trains under ``all`` (every position of a window)."""
    from recbole_ssm.targets import supported_targets

    return "all" in supported_targets(cls) and not getattr(cls, "bidirectional", False)
