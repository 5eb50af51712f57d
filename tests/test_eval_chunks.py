"""Full-sort evaluation as a running top-k over chunks of items gives RecBole's metrics exactly,
without ever forming a batch's (users x items) scores."""

from __future__ import annotations

import os

import pytest

from recbole_ssm.checkpoint import evaluate_splits
from recbole_ssm.quick_start import run
from tests.conftest import TINY

SHARED_BEAUTY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "amazon2014-beauty-s3rec")


def _train(model, data_path, folder, dataset="ml-tiny", **extra):
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        settings = {**TINY, "data_path": data_path, "train_targets": "all", "eval_score_chunks": False, **extra}
        return run(model, dataset, None, settings)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module", params=["Mamba2Rec", "SASRec", "GRU4Rec"])
def trained(request, tmp_path_factory, tiny_data):
    extra = {"embedding_size": 16} if request.param == "GRU4Rec" else {"headdim": 8, "d_state": 8}
    return _train(request.param, tiny_data, tmp_path_factory.mktemp("chunks"), **extra)


@pytest.mark.parametrize("filter_seen", [False, True])
def test_chunked_evaluation_gives_recboles_metrics(trained, filter_seen, monkeypatch):
    """Dense (RecBole's scores matrix) against chunked, both splits, RecBole's ranking and with the
    history left out; then chunked again with the dense path made to fail, so it is not used."""
    dense = evaluate_splits(trained.saved_model_file, ("valid", "test"),
                            {"eval_score_chunks": False, "eval_filter_seen": filter_seen})[1]
    if not filter_seen:
        assert dense["test"] == trained.result["test_result"]  # the run's own dense evaluation
    from recbole_ssm.models.causal import ReadByLength

    def no_dense(self, interaction):
        raise AssertionError("the (B, n_items) scores were formed")

    monkeypatch.setattr(ReadByLength, "full_sort_predict", no_dense)
    monkeypatch.setattr("recbole_ssm.scoring.scores_by_dot_product", lambda model: True)
    chunked = evaluate_splits(trained.saved_model_file, ("valid", "test"),
                              {"eval_score_chunks": True, "eval_filter_seen": filter_seen})[1]
    assert chunked == dense


def test_chunks_of_a_few_items_give_the_same_metrics(trained, monkeypatch):
    monkeypatch.setattr("recbole_ssm.scoring.SCORE_BUDGET_MIB", 256 * 7 * 4 / 2**20)  # 7 items a chunk
    dense = evaluate_splits(trained.saved_model_file, ("test",), {"eval_score_chunks": False})[1]
    chunked = evaluate_splits(trained.saved_model_file, ("test",), {"eval_score_chunks": True})[1]
    assert chunked == dense


def compare_on(out) -> None:
    """Dense against chunked on a finished run's test split, with RecBole's ranking and with the
    history left out, on the run's own trainer and loader (no reload)."""
    from recbole_ssm.seen import SeenItems

    trainer, loader = out.trainer, out.test_data
    for seen in (None, SeenItems.from_dataset(out.dataset)):
        loader.seen_items = seen
        results = []
        for chunks in (False, True):
            trainer.config["eval_score_chunks"] = chunks
            results.append(trainer.evaluate(loader, load_best_model=False))
        assert results[1] == results[0], seen is not None


@pytest.mark.skipif(not os.path.isdir(SHARED_BEAUTY), reason="../shared/datasets is absent")
def test_chunked_evaluation_on_amazon_beauty(tmp_path):
    """The whole Beauty 2014 test split (22,363 users, 12,101 items), a model after 1 epoch."""
    from recbole_ssm.data.pipeline import prepare

    prepare("seqtext", os.path.join(SHARED_BEAUTY, "Amazon_Beauty.txt"), output=str(tmp_path / "data" / "beauty"),
            verbose=False)
    out = _train("Mamba2Rec", str(tmp_path / "data"), tmp_path, dataset="beauty", MAX_ITEM_LIST_LENGTH=50,
                 headdim=8, d_state=8, load_col={"inter": ["user_id", "item_id", "timestamp"]},
                 eval_batch_size=4096, train_window_batch_size=512, eval_step=100)
    compare_on(out)
