"""What a bench command records of each measured point: model specs (``NAME:key=value``), the
settings fingerprint that decides whether a finished record is reused, and the records on disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

from recbole_ssm.errors import UsageError
from recbole_ssm.settings_check import PLAIN_CE
from recbole_ssm.utils import atomic_write_text

_SPEC_KEY = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class ModelSpec:
    """A model name plus per-model settings, written ``NAME`` or ``NAME:key=value:key=value``.

    ``SASRec:n_layers=1`` is SASRec with one layer; its label (the row name) is the spec as typed.
    """

    label: str
    name: str
    overrides: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def canonical(self) -> str:
        from recbole_ssm.registry import canonical_name

        return canonical_name(self.name)


def parse_model_specs(text: str | None) -> list[ModelSpec]:
    """``"SASRec,SASRec:n_layers=1,Mamba4Rec"`` -> specs; unknown models raise the registry's error."""
    from recbole_ssm.config import parse_value
    from recbole_ssm.registry import get_model

    if not text or not isinstance(text, str):
        raise UsageError("--models takes a comma-separated list, e.g. --models=SASRec,Mamba4Rec")
    specs: list[ModelSpec] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"empty model name in --models={text!r}")
        name, *pairs = item.split(":")
        overrides = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not _SPEC_KEY.fullmatch(key):
                raise UsageError(f"malformed model spec {item!r}: expected NAME or NAME:key=value[:key=value]")
            overrides[key] = parse_value(value)
        get_model(name)  # unknown model -> the registry's one-line error
        if any(s.label == item for s in specs):
            raise UsageError(f"model {item!r} is listed twice in --models")
        specs.append(ModelSpec(item, name, overrides))
    return specs


def fingerprint(settings: dict) -> str:
    """A short hash of the settings a record was measured with (resume only reuses equal ones)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Settings that, at these values, behave as the package did before they existed: a property file
# that adds one at its neutral value keeps its digest, so the records measured before still count.
NEUTRAL_SETTINGS = {**PLAIN_CE, "ce_negative_sampler": "uniform", "eval_score_chunks": True, "tuned_defaults": True}


def without_neutral(mapping):
    """``mapping`` less the keys of :data:`NEUTRAL_SETTINGS` that hold their neutral value."""
    if not isinstance(mapping, dict):
        return mapping
    return {k: v for k, v in mapping.items() if not (k in NEUTRAL_SETTINGS and v == NEUTRAL_SETTINGS[k])}


def settings_files_digest(model_name: str, dataset: str, files: Iterable[str] = (), tuned: bool = True) -> dict:
    """``{file: sha256 prefix}`` of the property and config files a run reads (the tuned settings'
    file only where the run reads it: ``tuned`` is the run's ``tuned_defaults``).

    Part of every record's fingerprint: after a change of a model's defaults (e.g. in
    properties/model/NAME.yaml) old records are no longer reused. What is hashed is the mapping
    a file holds, not its bytes, so comments, blank lines and key order do not count.
    """
    from recbole_ssm.config import property_files, tuned_file
    from recbole_ssm.registry import canonical_name

    name = canonical_name(model_name)
    tuned_path = tuned_file(name, dataset)
    out = {}
    for path in [*property_files(name, dataset, tuned=tuned), *files]:
        if path in files:
            key = os.path.abspath(path)
        elif path == tuned_path:  # beside the model's own file, which has the same name
            key = os.path.join("tuned", dataset, os.path.basename(path))
        else:
            key = os.path.basename(path)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError:
            out[key] = "missing"
            continue
        try:
            text = json.dumps(without_neutral(yaml.safe_load(raw)), sort_keys=True, default=str)
        except yaml.YAMLError:  # not YAML: its bytes
            text = raw.hex()
        out[key] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def record_name(*parts: Any) -> str:
    """File-system-safe name for a record."""
    text = "-".join(str(p) for p in parts)
    return re.sub(r"[^\w.=\-]+", "_", text) + ".json"


def read_record(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_record(path: str, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
