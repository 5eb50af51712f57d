"""recbole_ssm.checkpoint: one reader for a run's saved files, each misuse a one-line error."""

from __future__ import annotations

import pytest
import torch

from recbole_ssm.checkpoint import read_checkpoint, read_resume_state
from recbole_ssm.errors import UsageError
from recbole_ssm.trainer import RESUME_FORMAT


def _save(path, obj) -> str:
    torch.save(obj, str(path))
    return str(path)


@pytest.mark.parametrize(("reader", "words"), [(read_checkpoint, "checkpoint not found"),
                                               (read_resume_state, "resume state not found")])
def test_a_missing_file_is_named(tmp_path, reader, words):
    with pytest.raises(UsageError, match=words) as err:
        reader(str(tmp_path / "nope.pth"))
    assert "\n" not in str(err.value) and "nope.pth" in str(err.value)


@pytest.mark.parametrize("reader", [read_checkpoint, read_resume_state])
def test_a_file_that_is_not_a_pickle_is_one_line(tmp_path, reader):
    path = tmp_path / "README"
    path.write_text("not a checkpoint\nsecond line\n")
    with pytest.raises(UsageError, match="is not a") as err:
        reader(str(path))
    assert "\n" not in str(err.value)


def test_each_reader_refuses_the_other_kind_of_file(tmp_path):
    """A best-model checkpoint is not a resume state and the other way round: the error says which
    file to give instead."""
    checkpoint = _save(tmp_path / "Model.pth", {"config": {"model": "X"}, "state_dict": {}})
    resume = _save(tmp_path / "Model-resume.pth", {"format": RESUME_FORMAT, "config": {}, "epoch": 3})
    assert read_checkpoint(checkpoint)["config"] == {"model": "X"}
    assert read_resume_state(resume)["epoch"] == 3
    with pytest.raises(UsageError, match="is not a resume state.*-resume.pth file"):
        read_resume_state(checkpoint)
    with pytest.raises(UsageError, match="is not a checkpoint of a training run.*checkpoint_dir"):
        read_checkpoint(_save(tmp_path / "other.pth", {"weights": torch.zeros(2)}))
    with pytest.raises(UsageError, match="is not a resume state"):
        read_resume_state(_save(tmp_path / "old.pth", {"format": "recbole-ssm resume 0", "config": {}}))
