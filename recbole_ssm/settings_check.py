"""One check of the user's settings (``--KEY=VALUE`` and ``--config_files``) before RecBole builds anything.

Types come from the property files themselves: RecBole's and recbole-ssm's yaml document each
key as ``key: default  # (int) ...``, ``(float)``, ``(list or int or None)`` and so on; the
model's own file is read first, so a key takes the type its model declares. On top of the
types, :data:`RULES` gives the ranges and choices that matter (positive counts, probabilities,
known names, the structure of ``eval_args``). A failure is a :class:`ConfigError` (a UsageError: exit code 2) naming the
key, the value, where it came from and what it takes.

A key that no property file of RecBole or recbole-ssm knows is most likely misspelt: it is
reported with the closest known keys, as a warning, or as an error with ``strict_config: True``.
"""

from __future__ import annotations

import difflib
import functools
import glob
import os
import re
from typing import Any, Callable

import yaml

from recbole_ssm.errors import ConfigError
from recbole_ssm.validate import number, positive_int, positive_number, whole

_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "list": list}
_WORDS = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "True or False",
          "dict": "a mapping {key: value}", "list": "a list [a, b]", "None": "empty (~)"}

# keys RecBole's Config sets or reads besides those in its yaml, and the CLI's own
_INTERNAL = {"model", "dataset", "config_files", "MODEL_TYPE", "MODEL_INPUT_TYPE", "device", "local_rank",
             "nproc", "world_size", "offset", "ip", "port", "single_spec", "eval_type", "valid_metric_bigger",
             "valid_neg_sample_args", "test_neg_sample_args", "verbose", "strict_config"}


@functools.cache
def _declarations(path: str) -> dict[str, tuple[frozenset, Any]]:
    """``{key: (allowed type names, default)}`` of the keys one yaml file sets with a ``# (type)`` note."""
    from recbole_ssm.config import declarations

    if not os.path.isfile(path):
        return {}
    out: dict[str, tuple[frozenset, Any]] = {}
    for d in declarations(path)[1]:
        if d.unset or d.types is None:
            continue
        names = frozenset(n.strip() for n in d.types.split(" or "))
        if not names <= set(_TYPES) | {"None"}:
            continue  # a note that is not a type list, e.g. "(int, unset by default)"
        # ~ is allowed where the default is ~, and for mappings: RecBole reads ~ there as "none"
        # (train_neg_sample_args: ~ turns negative sampling off)
        out[d.key] = (names | {"None"} if d.default is None or isinstance(d.default, dict) else names, d.default)
    return out


@functools.cache
def _keys_of(path: str) -> frozenset:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return frozenset()
    return frozenset(data) if isinstance(data, dict) else frozenset()


def declared_types(model_name: str) -> dict[str, frozenset]:
    """Each documented key's allowed types, as this model's property files declare them."""
    from recbole_ssm.config import property_files

    out: dict[str, frozenset] = {}
    for path in property_files(model_name, None, recbole=True):  # later files (the package's model file) win
        out.update({k: v[0] for k, v in _declarations(path).items()})
    return out


@functools.lru_cache(maxsize=1)
def known_keys() -> frozenset:
    """Every key any property file of RecBole or recbole-ssm sets, and RecBole's internal ones."""
    keys = set(_INTERNAL)
    from recbole_ssm.config import PROPERTIES_DIR, recbole_properties_dir

    for root in (recbole_properties_dir(), PROPERTIES_DIR):
        for path in glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True):
            if os.path.basename(os.path.dirname(path)) in ("dataset",) and "url" in os.path.basename(path):
                continue  # download addresses, not settings
            keys |= _keys_of(path)
    return frozenset(keys)


# ---------------------------------------------------------------------------------------
# ranges and choices


def _at_least(low) -> Callable[[Any], bool]:
    return lambda v: number(v) and v >= low


def _probability(v) -> bool:
    return number(v) and 0 <= v < 1


def _split(v) -> str | None:
    if not isinstance(v, dict) or len(v) != 1:
        return "split takes {'RS': [train, valid, test]} or {'LS': valid_and_test}"
    (kind, arg), = v.items()
    if kind == "RS":
        if not (isinstance(arg, list) and len(arg) == 3 and all(number(x) and x >= 0 for x in arg) and sum(arg) > 0):
            return "split.RS takes three non-negative ratios, e.g. [0.8, 0.1, 0.1]"
    elif kind == "LS":
        if arg not in ("valid_and_test", "valid_only", "test_only"):
            return "split.LS takes valid_and_test, valid_only or test_only"
    else:
        return f"split takes RS or LS, not {kind!r}"
    return None


def _mode(v) -> bool:
    one = lambda m: isinstance(m, str) and re.fullmatch(r"full|labeled|(uni|pop)\d+", m) is not None  # noqa: E731
    return one(v) or (isinstance(v, dict) and set(v) <= {"valid", "test"} and all(one(m) for m in v.values()))


def _eval_args(v) -> str | None:
    if not isinstance(v, dict):
        return "eval_args takes a mapping of split, order, group_by and mode"
    unknown = set(v) - {"split", "order", "group_by", "mode"}
    if unknown:
        return f"eval_args has no key {sorted(unknown)[0]!r} (split, order, group_by, mode)"
    if "split" in v:
        problem = _split(v["split"])
        if problem:
            return "eval_args." + problem
    if "order" in v and v["order"] not in ("RO", "TO"):
        return "eval_args.order takes RO (random) or TO (time)"
    if "group_by" in v and v["group_by"] not in ("user", "none", None):
        return "eval_args.group_by takes user or none"
    if "mode" in v and not _mode(v["mode"]):
        return "eval_args.mode takes full, uniN, popN or labeled (or {valid: ..., test: ...})"
    return None


_POSITIVE = "a whole number >= 1"
# The ce_* loss settings at the values that leave the loss plain full CE over all items (the models'
# CausalLoss, the run's check that a model takes them, the benchmarks' neutral settings).
PLAIN_CE = {"ce_negatives": 0, "ce_label_smoothing": 0.0, "ce_temperature": 1.0, "ce_filter_seen": False}

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: (positive_int, _POSITIVE) for k in (
        "epochs", "train_batch_size", "eval_batch_size", "eval_step", "stopping_step", "MAX_ITEM_LIST_LENGTH",
        "n_layers", "n_heads", "num_layers", "hidden_size", "inner_size", "embedding_size",
        "train_window_batch_size", "nproc", "d_state", "d_conv", "expand", "headdim", "chunk_size")},
    **{k: (lambda v: whole(v) and v >= 0, "a whole number >= 0") for k in (
        "worker", "metric_decimal_place", "loss_decimal_place", "seed")},
    "learning_rate": (positive_number, "a number > 0"),
    "weight_decay": (_at_least(0), "a number >= 0"),
    "ce_chunk_mib": (positive_number, "a number of MiB > 0"),
    "ce_negatives": (lambda v: whole(v) and v >= 0, "a whole number >= 0 (0: full CE over all items)"),
    "ce_negative_sampler": (lambda v: v in ("uniform", "popularity"), "uniform or popularity"),
    "ce_label_smoothing": (_probability, "a number in [0, 1) (0: the plain target)"),
    "ce_temperature": (positive_number, "a number > 0 (1: the plain logits)"),
    "ce_filter_seen": (lambda v: isinstance(v, bool), "True or False"),
    "train_window_stride": (lambda v: v is None or positive_int(v), "a whole number >= 1, or ~ for no overlap"),
    "train_window_positions": (lambda v: v is None or positive_int(v),
                               "a whole number >= 1 (padded positions a batch), or ~ for windows a batch"),
    **{k: (_probability, "a probability in [0, 1)") for k in (
        "dropout_prob", "hidden_dropout_prob", "attn_dropout_prob", "mask_ratio")},
    "loss_type": (lambda v: v in ("CE", "BPR"), "CE or BPR"),
    "train_targets": (lambda v: v in ("last", "all", "cloze"), "last, all or cloze"),
    "learner": (lambda v: isinstance(v, str) and v.lower() in ("adam", "adamw", "sgd", "adagrad", "rmsprop",
                                                              "sparse_adam"),
                "adam, adamw, sgd, adagrad, rmsprop or sparse_adam"),
    "state": (lambda v: isinstance(v, str) and v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
              "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    "gpu_id": (lambda v: v is None or (whole(v) and v >= 0) or (isinstance(v, str) and re.fullmatch(r"(\d+(,\d+)*)?", v)
                                                               is not None),
               "a GPU number or a comma-separated list of them, e.g. 0 or 0,1"),
    "topk": (lambda v: positive_int(v) or (isinstance(v, list) and v and all(positive_int(x) for x in v)),
             "a whole number >= 1 or a list of them"),
}


def _type_ok(value: Any, names: frozenset) -> bool:
    if value is None:
        return "None" in names
    for name in names - {"None"}:
        kind = _TYPES[name]
        if kind is float and number(value):
            return True
        if kind is int and whole(value):
            return True
        if kind in (str, bool, dict, list) and type(value) is kind:
            return True
    return False


def check_user_settings(values: dict[str, Any], sources: dict[str, str], model_name: str) -> list[str]:
    """Check the user's settings; raise ConfigError on the first bad one, return warnings for unknown keys.

    ``sources[key]`` says where the value came from (``--KEY`` or a file), for the message.
    """
    types = declared_types(model_name)
    for key, value in values.items():
        where = sources.get(key, f"--{key}")
        if key == "eval_args":
            problem = _eval_args(value)
            if problem:
                raise ConfigError(f"invalid eval_args={value!r} ({where}): {problem}")
            continue
        if key in RULES:
            ok, rule = RULES[key]
            try:
                good = bool(ok(value))
            except TypeError:
                good = False
            if not good:
                raise ConfigError(f"invalid {key}={value!r} ({where}): {rule}")
            continue
        names = types.get(key)
        if names is not None and not _type_ok(value, names):
            words = " or ".join(_WORDS[n] for n in sorted(names))
            raise ConfigError(f"invalid {key}={value!r} ({where}): {words}")
    known = known_keys() | set(types) | set(RULES)  # RULES: also settings no property file sets
    warnings = []
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=2, cutoff=0.75)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            warnings.append(f"unknown setting {key!r} ({sources.get(key, f'--{key}')}){hint}: it is not used")
    if warnings and values.get("strict_config"):
        raise ConfigError(warnings[0].replace(": it is not used", "; strict_config is on"))
    return warnings
