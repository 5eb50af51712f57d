"""Plugging into RecBole's configuration: property files, command-line keys, datasets.

Precedence, lowest to highest (each level overrides the ones before it):

1. RecBole's own defaults (``recbole/properties``),
2. ``recbole_ssm/properties/overall.yaml``,
3. ``recbole_ssm/properties/model/<Model>.yaml``,
4. ``recbole_ssm/properties/dataset/<dataset>.yaml``,
5. ``<data_path>/<dataset>/<dataset>.yaml``, beside the atomic files (``prepare`` writes it),
6. the user's ``--config_files`` (in the order given),
7. ``config_dict`` / command-line ``--KEY=VALUE``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable

import yaml

from recbole_ssm.errors import UsageError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The yaml defaults ship inside the package (an installed recbole-ssm reads them from
# site-packages); RECBOLE_SSM_PROPERTIES names another folder of the same layout instead.
PROPERTIES_DIR = os.environ.get("RECBOLE_SSM_PROPERTIES") or str(resources.files("recbole_ssm") / "properties")
DEFAULT_DATASET = "ml-100k"
EMBEDDED_DATASETS = ("ml-100k",)  # shipped inside RecBole's wheel

# RecBole reads floats like 1e-3 (no dot) as floats; plain YAML 1.1 reads them as strings.
_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?inf$|^nan$", re.I)


def parse_value(text: str) -> Any:
    """Turn a command-line value into the Python value RecBole expects."""
    if _FLOAT.match(text.strip()) and not re.fullmatch(r"[-+]?\d+", text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"cannot parse value {text!r}: {str(exc).splitlines()[0]}") from None


def parse_overrides(args: Iterable[str]) -> dict[str, Any]:
    """``["--epochs=3", "--eval_args={...}"]`` -> ``{"epochs": 3, ...}``; anything else is an error."""
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w.\-]*", key):
            raise UsageError(
                f"malformed option {arg!r}: expected --KEY=VALUE (e.g. --epochs=3, --learning_rate=1e-3)"
            )
        out[key] = parse_value(value)
    return out


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"config file not found: {path} (check --config_files)")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f.read())
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise UsageError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of KEY: VALUE, not {type(data).__name__}")
    return data


_KEY_LINE = re.compile(r"^([A-Za-z_]\w*)\s*:\s*(.*?)\s*(?:#\s*(.*))?$")
_UNSET_LINE = re.compile(r"^#\s*([A-Za-z_]\w*)\s*:\s*(\S*)\s*#\s*(\(.*)$")
_TYPE_NOTE = re.compile(r"^\(([^)]*)\)\s*(.*)$")


@dataclass(frozen=True)
class Declaration:
    """One key of a property file as its comments document it.

    ``default``: the file's value (None for ``~`` or an unset key); ``types``: the text of the
    ``# (int or None)`` note, None where the key has none; ``meaning``: the rest of its inline
    comment, after the comment lines right above it; ``unset``: a key written as a comment
    (``# key: N  # (int, unset by default) ...``), which the file documents but does not set.
    """

    key: str
    default: Any
    types: str | None
    meaning: str
    unset: bool = False


def declarations(path: str) -> tuple[str, list[Declaration]]:
    """(the file's leading comment, its keys in file order): the one reader of the property files'
    comments, for the settings check (types) and the configuration reference (docs)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    data = yaml.safe_load("\n".join(lines)) or {}
    intro, i = [], 0
    while i < len(lines) and lines[i].startswith("#"):
        intro.append(lines[i].lstrip("#").strip())
        i += 1
    rows: list[dict] = []
    above: list[str] = []
    for line in lines[i:]:
        unset = _UNSET_LINE.match(line)
        if unset:
            typed = _TYPE_NOTE.match(unset.group(3))
            rows.append({"key": unset.group(1), "default": None, "types": typed.group(1) if typed else None,
                         "meaning": typed.group(2) if typed else unset.group(3), "unset": True})
            above = []
            continue
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            if rows and rows[-1]["unset"] and not above and line.startswith("#  "):
                rows[-1]["meaning"] += " " + text  # a continuation of an unset key's comment
            else:
                above.append(text)
            continue
        m = _KEY_LINE.match(line)
        if not m:
            if not line.strip():
                above = []
            continue
        key, comment = m.group(1), m.group(3) or ""
        typed = _TYPE_NOTE.match(comment)
        meaning = typed.group(2) if typed else comment
        if above:
            meaning = " ".join(above) + (f" {meaning}" if meaning else "")
        rows.append({"key": key, "default": data.get(key), "types": typed.group(1) if typed else None,
                     "meaning": meaning, "unset": False})
        above = []
    return " ".join(intro), [Declaration(**r) for r in rows]


def recbole_properties_dir() -> str:
    """RecBole's own property files (``recbole/properties``)."""
    import recbole

    return os.path.join(os.path.dirname(recbole.__file__), "properties")


def tuned_file(model_name: str, dataset: str) -> str:
    """Where the settings the package's sweeps chose for ``model_name`` on ``dataset`` live
    (``properties/tuned/<dataset>/<Model>.yaml``; most pairs have none)."""
    return os.path.join(PROPERTIES_DIR, "tuned", dataset, f"{model_name}.yaml")


def property_files(model_name: str, dataset: str | None, data_path: str | None = None,
                   recbole: bool = False, tuned: bool = True) -> list[str]:
    """The property files that apply to this model and data set, lowest first: the package's
    (overall, the model's, the data set's, then the model's tuned settings for that data set unless
    ``tuned`` is False: :func:`tuned_file`), then the data set's own yaml beside its atomic files
    (``data_path`` None: RecBole's ``dataset/``); ``dataset`` None: none of a data set's. The one
    list of them, for the run's Config (which reads RecBole's own files itself), the settings check,
    the tune spaces and the benchmarks' settings fingerprints.

    ``recbole=True`` puts first the RecBole files that declare settings: its ``overall.yaml``,
    ``dataset/sample.yaml`` (the data keys) and the model's own file."""
    files = []
    if recbole:
        rb = recbole_properties_dir()
        files += [os.path.join(rb, "overall.yaml"), os.path.join(rb, "dataset", "sample.yaml"),
                  os.path.join(rb, "model", f"{model_name}.yaml")]
    files.append(os.path.join(PROPERTIES_DIR, "overall.yaml"))
    files.append(os.path.join(PROPERTIES_DIR, "model", f"{model_name}.yaml"))
    if dataset:
        files.append(os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml"))
        if tuned:
            files.append(tuned_file(model_name, dataset))
        files.append(os.path.join(data_path or "dataset/", dataset, f"{dataset}.yaml"))
    return [f for f in files if os.path.isfile(f)]


def merged_user_config(config_file_list: list[str] | None, config_dict: dict | None) -> dict:
    return user_settings(config_file_list, config_dict)[0]


def user_settings(config_file_list: list[str] | None, config_dict: dict | None) -> tuple[dict, dict]:
    """The user's settings, files then ``config_dict`` (later wins), and where each came from."""
    merged: dict = {}
    sources: dict = {}
    for path in config_file_list or []:
        data = read_yaml(path)
        merged.update(data)
        sources.update({k: f"in {path}" for k in data})
    merged.update(config_dict or {})
    sources.update({k: f"--{k}" for k in config_dict or {}})
    return merged, sources


# ---------------------------------------------------------------------------------------
# datasets


def _recbole_urls() -> dict:
    import recbole

    path = os.path.join(os.path.dirname(recbole.__file__), "properties", "dataset", "url.yaml")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _prepare_hint(dataset: str, folder: str) -> str:
    if dataset.startswith("ml-"):
        how = f"python -m recbole_ssm.data prepare movielens --input {dataset}.zip --output {folder}"
    elif dataset.lower().startswith("amazon"):
        how = f"python -m recbole_ssm.data prepare amazon2023 --input <Category>.jsonl.gz --output {folder}"
    else:
        how = f"python -m recbole_ssm.data prepare seqtext --input <file>.txt --output {folder}"
    return f"put RecBole atomic files at {folder}/{dataset}.inter, or run: {how}"


def _download(url: str, folder: str, dataset: str, timeout: float) -> None:
    """Download and unpack one of RecBole's dataset zips into ``folder`` (atomic: temp then rename)."""
    parent = os.path.dirname(os.path.abspath(folder)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{dataset}-", dir=parent)
    try:
        zpath = os.path.join(tmp, "download.zip")
        with urllib.request.urlopen(url, timeout=timeout) as r, open(zpath, "wb") as f:
            shutil.copyfileobj(r, f)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        os.unlink(zpath)
        unpacked = os.path.join(tmp, "unpacked")
        os.makedirs(unpacked)
        for root, _dirs, files in os.walk(tmp):
            if root.startswith(unpacked):
                continue
            for name in files:
                stem, ext = os.path.splitext(name)
                if ext in (".inter", ".user", ".item", ".kg", ".link", ".net"):
                    shutil.move(os.path.join(root, name), os.path.join(unpacked, dataset + ext))
        if not os.path.exists(os.path.join(unpacked, dataset + ".inter")):
            raise OSError("the archive holds no .inter file")
        os.replace(unpacked, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_dataset(dataset: str, data_path: str | None) -> None:
    """Make sure ``dataset`` has atomic files RecBole can read, or raise a one-line UsageError.

    ml-100k is shipped inside RecBole's wheel. Any other name must have
    ``<data_path>/<dataset>/<dataset>.inter``; a name RecBole knows how to download is fetched
    (never with a prompt) unless ``RECBOLE_SSM_OFFLINE=1``.
    """
    if dataset in EMBEDDED_DATASETS:
        return
    if not dataset or not re.fullmatch(r"[\w.\-]+", dataset):
        raise UsageError(f"invalid dataset name {dataset!r}: use letters, digits, '.', '_' or '-'")
    folder = os.path.join(data_path or "dataset/", dataset)
    if os.path.isfile(os.path.join(folder, f"{dataset}.inter")):
        return
    if os.path.isdir(folder):
        raise UsageError(f"dataset folder {folder} has no {dataset}.inter: {_prepare_hint(dataset, folder)}")
    urls = _recbole_urls()
    if dataset not in urls:
        raise UsageError(
            f"unknown dataset {dataset!r}: no atomic files at {folder}/ and RecBole cannot download it; "
            + _prepare_hint(dataset, folder)
        )
    if os.environ.get("RECBOLE_SSM_OFFLINE", "") not in ("", "0"):
        raise UsageError(f"dataset {dataset!r} is not at {folder}/ and RECBOLE_SSM_OFFLINE is set: "
                         + _prepare_hint(dataset, folder))
    try:
        _download(urls[dataset], folder, dataset, timeout=float(os.environ.get("RECBOLE_SSM_TIMEOUT", "30")))
    except Exception as exc:  # network down, proxy, bad archive: all the same to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"dataset {dataset!r} is not at {folder}/ and downloading it failed ({reason}): "
            + _prepare_hint(dataset, folder)
        ) from None
