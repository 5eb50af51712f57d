"""A new model is two files: its class in models/<name>.py and its defaults in
properties/model/<Name>.yaml. Added to a copy of the package, with no other edit, it is listed by
--help, trains, is tested and reloads from its checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = '''"""TinyMamba: Mamba2Rec's layers at a width of its own (a model added as two files)."""

from recbole_ssm.layers import Mamba2Mixer
from recbole_ssm.models.base import SSMRecommender, ssd_settings


class TinyMamba(SSMRecommender):
    def make_mixer(self, config):
        return Mamba2Mixer(self.hidden_size, **ssd_settings(self, config))
'''

YAML = """hidden_size: 16          # (int) width
num_layers: 1            # (int) layers
dropout_prob: 0.1        # (float) dropout
d_state: 8               # (int) SSM state size
d_conv: 4                # (int) conv width
expand: 2                # (int) inner width factor
headdim: 16              # (int) channels per head
ngroups: 1               # (int) groups
chunk_size: 16           # (int) SSD chunk length
loss_type: CE            # (str) loss
trim_padding: True       # (bool) trim padding
train_targets: all       # (str) every position of whole history windows
"""


@pytest.mark.slow
def test_a_model_added_as_two_files_is_listed_trains_and_reloads(tmp_path, tiny_data):
    package = tmp_path / "copy" / "recbole_ssm"
    shutil.copytree(os.path.join(REPO, "recbole_ssm"), package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    (package / "models" / "tinymamba.py").write_text(MODEL)
    (package / "properties" / "model" / "TinyMamba.yaml").write_text(YAML)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "copy"), "RECBOLE_SSM_OFFLINE": "1"}
    env.pop("RECBOLE_SSM_PROPERTIES", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "recbole_ssm", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    shown = cli("--help")
    assert shown.returncode == 0 and "TinyMamba" in shown.stdout, shown.stderr[-2000:]
    trained = cli("--model=TinyMamba", "--dataset=ml-tiny", f"--data_path={tiny_data}", "--epochs=1",
                  "--MAX_ITEM_LIST_LENGTH=20", "--show_progress=False", "--state=WARNING")
    assert trained.returncode == 0, trained.stderr[-3000:]
    first = trained.stdout.splitlines()[0]
    assert first.startswith("model=TinyMamba dataset=ml-tiny") and "train_targets=all" in first
    assert "(without embeddings" in first  # parameters counted: the yaml's width was read
    test_line = next(line for line in trained.stdout.splitlines() if line.startswith("test "))
    checkpoint = next(line.split()[1] for line in trained.stdout.splitlines() if line.startswith("saved "))
    again = cli("evaluate", f"--checkpoint={checkpoint}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert test_line in again.stdout.splitlines()
