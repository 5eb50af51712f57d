"""Bad atomic files and checkpoints that no longer fit their data set: one line, exit code 2, the file named,
through the command line."""

from __future__ import annotations

import os
import shutil

import pytest

from recbole_ssm.checkpoint import evaluate_checkpoint
from recbole_ssm.cli import main
from recbole_ssm.data.atomic import check_inter_file
from recbole_ssm.data.reading import DataFormatError
from recbole_ssm.quick_start import run
from tests.conftest import TINY, ml100k_inter_path, write_ml100k_slice
from tests.test_cli import assert_one_line_error

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def rows(n: int = 400) -> list[str]:
    with open(ml100k_inter_path(), encoding="utf-8") as f:
        return f.read().splitlines()[1:n + 1]


def columns(lines: list[str], keep: tuple) -> list[str]:
    return ["\t".join(line.split("\t")[i] for i in keep) for line in lines]


BAD_FILES = [
    ("empty", "", "is empty"),
    ("header only", HEADER + "\n", "has a header but no interactions"),
    ("no types", HEADER.replace(":token", "").replace(":float", "") + "\n" + "\n".join(rows()) + "\n",
     "header field 'user_id' is not NAME:TYPE"),
    ("unknown type", HEADER.replace("timestamp:float", "timestamp:date") + "\n" + "\n".join(rows()) + "\n",
     "'timestamp:date'"),
    ("commas", HEADER.replace("\t", ",") + "\n" + "\n".join(r.replace("\t", ",") for r in rows()) + "\n",
     "separated by <TAB>"),
    ("no item column", "user_id:token\trating:float\ttimestamp:float\n" + "\n".join(columns(rows(), (0, 2, 3))) + "\n",
     "has no column 'item_id'"),
    ("no timestamp", "user_id:token\titem_id:token\trating:float\n" + "\n".join(columns(rows(), (0, 1, 2))) + "\n",
     "has no column 'timestamp'"),
    ("short row", HEADER + "\n" + "\n".join(rows()[:50]) + "\n7\t8\n" + "\n".join(rows()[50:]) + "\n",
     "line 52 has 2 field(s), the header 4"),
    ("non-numeric timestamp", HEADER + "\n" + "\n".join(rows()[:9]) + "\n1\t2\t3\tyesterday\n" + "\n".join(rows()[9:])
     + "\n", "line 11: timestamp:float is 'yesterday', not a number"),
    ("non-numeric rating", HEADER + "\n1\t2\tfive\t881250949\n" + "\n".join(rows()) + "\n",
     "line 2: rating:float is 'five'"),
]


@pytest.mark.parametrize(("text", "words"), [(t, w) for _, t, w in BAD_FILES], ids=[c for c, _, _ in BAD_FILES])
def test_bad_inter_file_is_one_line_through_the_cli(tmp_path, capsys, text, words):
    folder = tmp_path / "data" / "bad"
    folder.mkdir(parents=True)
    (folder / "bad.inter").write_text(text)
    code = main(["--model=GRU4Rec", "--dataset=bad", f"--data_path={tmp_path / 'data'}", "--epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert_one_line_error(err[-1], words, "bad.inter")
    assert not os.path.exists("saved") or not os.listdir("saved")  # nothing trained, nothing written


def test_a_good_file_passes_and_counts_its_interactions(tmp_path):
    path = tmp_path / "ok.inter"
    path.write_text(HEADER + "\n" + "\n".join(rows(123)) + "\n\n")  # a trailing blank line is fine
    assert check_inter_file(str(path), required=["user_id", "item_id", "timestamp"]) == 123
    with pytest.raises(DataFormatError, match="has no column 'price'"):
        check_inter_file(str(path), required=["price"])


def test_a_checkpoint_whose_data_set_changed_is_one_line(tmp_path, capsys):
    data = write_ml100k_slice(str(tmp_path / "data"), "ml-moving")
    out = run("GRU4Rec", "ml-moving", None, {**TINY, "data_path": data})
    shutil.rmtree(os.path.join(data, "ml-moving"))
    write_ml100k_slice(data, "ml-moving", max_user=300)  # more users and items than at training time
    from recbole_ssm.errors import UsageError

    with pytest.raises(UsageError, match="does not fit GRU4Rec on the data set now at") as err:
        evaluate_checkpoint(out.saved_model_file)
    assert_one_line_error(f"error: {err.value}", "changed since training", "item_embedding.weight")
    code = main(["recommend", f"--checkpoint={out.saved_model_file}", "--users=1"])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err.strip().splitlines()[-1], "does not fit", out.saved_model_file)
