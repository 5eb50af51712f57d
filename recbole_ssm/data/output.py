"""The output folder of a converter: checked before anything is read, written whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from recbole_ssm.data.writing import format_summary
from recbole_ssm.errors import UsageError
from recbole_ssm.utils import default_mode


def check_targets(output: str, yaml_path: str | None, force: bool) -> None:
    """Refuse, before any work, to replace an existing output folder or dataset yaml without --force."""
    if os.path.exists(output) and not force:
        raise UsageError(f"output folder {output} already exists: pass --force to replace it")
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"output {output} exists and is not a folder: remove it or choose another --output")
    if yaml_path and os.path.exists(yaml_path) and not force:
        raise UsageError(f"dataset config {yaml_path} already exists: pass --force to replace it, "
                         "or --properties-dir to write it elsewhere")


class OutputFolder:
    """A temp folder beside ``output``; :meth:`commit` renames it into place (replacing the old one)."""

    def __init__(self, output: str) -> None:
        self.output = os.path.abspath(output)
        parent = os.path.dirname(self.output)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.output)}.tmp-", dir=parent)
        os.chmod(self.tmp, default_mode(0o777))  # mkdtemp's 0700 would outlive the rename

    def path(self, filename: str) -> str:
        return os.path.join(self.tmp, filename)

    def commit(self) -> None:
        old = None
        if os.path.exists(self.output):
            base, parent = os.path.basename(self.output), os.path.dirname(self.output)
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.rmdir(old)
            os.replace(self.output, old)
        os.replace(self.tmp, self.output)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_summary_files(folder: OutputFolder, summary: dict) -> None:
    with open(folder.path("summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    with open(folder.path("summary.txt"), "w", encoding="utf-8") as f:
        f.write(format_summary(summary))
