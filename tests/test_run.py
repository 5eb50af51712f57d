"""Runs through RecBole's pipeline: determinism, checkpoint round trip, baselines, registry."""

from __future__ import annotations

import os

import pytest

from recbole_ssm import get_model
from recbole_ssm.checkpoint import evaluate_checkpoint
from recbole_ssm.cli import main
from recbole_ssm.errors import UsageError
from recbole_ssm.quick_start import objective_function, run, run_recbole_ssm


def test_same_seed_gives_identical_metrics(tiny_config):
    first = run_recbole_ssm("SASRec", "ml-tiny", None, tiny_config)
    second = run_recbole_ssm("SASRec", "ml-tiny", None, tiny_config)
    assert first["test_result"] == second["test_result"]
    assert first["best_valid_result"] == second["best_valid_result"]
    assert set(first) == {"best_valid_score", "valid_score_bigger", "best_valid_result", "test_result", "checkpoint"}
    assert os.path.isfile(second["checkpoint"]) and "SASRec-ml-tiny-" in second["checkpoint"]


def test_checkpoint_reload_reproduces_test_metrics_exactly(tiny_config):
    out = run("SASRec", "ml-tiny", None, {**tiny_config, "epochs": 2})
    assert out.saved_model_file
    reloaded = evaluate_checkpoint(out.saved_model_file, split="test")
    assert dict(reloaded) == dict(out.result["test_result"])


@pytest.mark.parametrize("model", ["GRU4Rec", "BERT4Rec"])
def test_recbole_baselines_run_through_the_cli_unchanged(model, tiny_data, capsys):
    args = [f"--model={model}", "--dataset=ml-tiny", f"--data_path={tiny_data}", "--epochs=1",
            "--MAX_ITEM_LIST_LENGTH=20", "--hidden_size=16", "--inner_size=32", "--n_layers=1",
            "--train_batch_size=256", "--eval_batch_size=256", "--state=WARNING"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"model={model}" in out and "test  hit@10=" in out


def test_objective_function_returns_recbole_keys(tiny_config):
    res = objective_function({**tiny_config, "model": "SASRec", "dataset": "ml-tiny"}, saved=False)
    assert res["model"] == "SASRec"
    assert 0.0 <= res["test_result"]["ndcg@10"] <= 1.0
    assert res["valid_score_bigger"] is True


def test_get_model_falls_back_to_recbole():
    from recbole.model.sequential_recommender import NARM, Caser

    assert get_model("NARM") is NARM
    assert get_model("Caser") is Caser


def test_baselines_are_recboles_models_subclassed():
    import recbole.model.sequential_recommender as rs

    for name in ("SASRec", "GRU4Rec", "BERT4Rec"):
        cls = get_model(name)
        assert cls.__name__ == name and issubclass(cls, getattr(rs, name)) and cls is not getattr(rs, name)
        assert hasattr(cls, "encode") == (name != "BERT4Rec")  # BERT4Rec is bidirectional: cloze, not all


def test_get_model_unknown_name_lists_sequential_models():
    with pytest.raises(UsageError, match=r"unknown model 'Nope'; available sequential models: .*SASRec"):
        get_model("Nope")


def test_trainer_hooks_time_epochs_and_report_each_validation(tiny_config):
    import recbole.trainer

    seen = []
    out = run("SASRec", "ml-tiny", None, {**tiny_config, "epochs": 2}, saved=False,
              callbacks=[lambda i, score, result: seen.append((i, score, result["ndcg@10"]))])
    assert [i for i, _s, _r in seen] == [0, 1] and all(s == r for _i, s, r in seen)
    assert len(out.trainer.epoch_times) == 2 and min(out.trainer.epoch_times) > 0
    assert isinstance(out.trainer, recbole.trainer.Trainer)  # RecBole's trainer, subclassed, not patched
    assert recbole.trainer.Trainer._train_epoch.__module__.startswith("recbole.")


def test_a_validation_callback_returning_true_ends_the_training_as_early_stopping_would(tiny_config):
    """Ended after the second validation of a 5-epoch run, the run is the 2-epoch run: the same
    validations, the same best checkpoint, the same test metrics. A callback returning anything
    but True (here the score) ends nothing."""
    config = {**tiny_config, "epochs": 5, "stopping_step": 100, "learning_rate": 3e-3, "headdim": 16}
    calls = []

    def end_after_second(i, score, result):
        calls.append(i)
        return i == 1

    ended = run("Mamba2Rec", "ml-tiny", None, config, saved=True,
                callbacks=[lambda i, score, result: score, end_after_second])
    assert calls == [0, 1] and ended.trainer.ended_by_callback == 1
    assert len(ended.trainer.epoch_times) == 2
    short = run("Mamba2Rec", "ml-tiny", None, {**config, "epochs": 2}, saved=True,
                callbacks=[lambda i, score, result: score])
    assert short.trainer.ended_by_callback is None and len(short.trainer.epoch_times) == 2
    assert ended.trainer.valid_scores == short.trainer.valid_scores
    assert ended.result["best_valid_score"] == short.result["best_valid_score"]
    assert ended.result["test_result"] == short.result["test_result"]
    assert ended.result["test_result"]["ndcg@10"] > 0
