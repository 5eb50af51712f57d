"""Search spaces: a yaml file of ``KEY: {DISTRIBUTION: ARGS}`` turned into a Ray Tune ``param_space``.

Example (``properties/hyper/GRU4Rec.yaml``)::

    learning_rate: {loguniform: [1e-4, 1e-2]}
    hidden_size: {choice: [32, 64, 128]}
    dropout_prob: {uniform: [0.1, 0.5]}
    num_layers: {randint: [1, 4]}          # 1, 2 or 3: the upper bound is excluded, as in Ray Tune

Every key must be a setting of the model (its property files), of RecBole (overall and
dataset settings) or of recbole-ssm (``properties/overall.yaml``); anything else, an unknown
distribution or malformed bounds is a :class:`~recbole_ssm.errors.UsageError` raised before
any trial starts. Reading and validating a space needs neither Ray nor the model class.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from recbole_ssm.config import PROPERTIES_DIR, parse_value, property_files, read_yaml, recbole_properties_dir
from recbole_ssm.errors import UsageError

Number = (int, float)


def _is_number(x: Any) -> bool:
    return isinstance(x, Number) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _numbers(args: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; read such strings as RecBole does: floats."""
    if isinstance(args, list):
        return [parse_value(a) if isinstance(a, str) else a for a in args]
    return args


def _bounds(key: str, dist: str, args: Any, *, ints: bool, positive: bool, quantized: bool) -> list:
    args = _numbers(args)
    n = 3 if quantized else 2
    form = "[LOW, HIGH, Q]" if quantized else "[LOW, HIGH]"
    check = _is_int if ints else _is_number
    kind = "integers" if ints else "numbers"
    if not isinstance(args, list) or len(args) != n or not all(check(a) for a in args):
        raise UsageError(f"{key}: {dist} takes {form} ({kind}), got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise UsageError(f"{key}: {dist} needs LOW < HIGH, got {args!r}")
    if positive and low <= 0:
        raise UsageError(f"{key}: {dist} needs LOW > 0 (a log scale), got {args!r}")
    if quantized and not args[2] > 0:
        raise UsageError(f"{key}: {dist} needs Q > 0, got {args!r}")
    return list(args)


def _values(key: str, dist: str, args: Any) -> list:
    if not isinstance(args, list) or not args:
        raise UsageError(f"{key}: {dist} takes a non-empty list of values, e.g. {{{dist}: [32, 64]}}")
    return _numbers(list(args))


# Names only, so that reading a space file does not import Ray.
DISTRIBUTIONS = (
    "uniform", "quniform", "loguniform", "qloguniform",
    "randint", "qrandint", "lograndint", "choice", "grid",
)


@dataclass(frozen=True)
class Param:
    """One searched setting: ``key: {dist: args}``."""

    key: str
    dist: str
    args: list


def known_keys(model: str, dataset: str | None = None) -> set[str]:
    """Settings a space may search for ``model``: its property files, RecBole's and recbole-ssm's."""
    from recbole_ssm.registry import canonical_name

    keys: set[str] = set()
    for path in property_files(canonical_name(model), dataset, recbole=True):
        keys.update(read_yaml(path))
    return keys


def model_has_properties(model: str) -> bool:
    """Whether ``model`` has a property file (recbole-ssm's or RecBole's) naming its own settings."""
    from recbole_ssm.registry import canonical_name

    model = canonical_name(model)
    return any(
        os.path.isfile(p)
        for p in (
            os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"),
            os.path.join(recbole_properties_dir(), "model", f"{model}.yaml"),
        )
    )


def parse_space(data: Any, model: str, dataset: str | None = None, source: str = "space") -> list[Param]:
    """Validate a space mapping (as read from yaml) for ``model``; returns its parameters in order."""
    if not isinstance(data, dict) or not data:
        raise UsageError(
            f"{source} must be a non-empty mapping KEY: {{DISTRIBUTION: ARGS}}, "
            "e.g. learning_rate: {loguniform: [1e-4, 1e-2]}"
        )
    if not model_has_properties(model):
        raise UsageError(
            f"{source}: no property file for model {model!r} (properties/model/{model}.yaml or RecBole's), "
            "so its settings cannot be checked; check --model"
        )
    keys = known_keys(model, dataset)
    checks = _checks()
    out = []
    for key, spec in data.items():
        if key in ("model", "dataset"):
            raise UsageError(f"{source}: {key!r} cannot be searched; pass --{key}=NAME")
        if key not in keys:
            raise UsageError(
                f"{source}: {key!r} is not a setting of {model} or RecBole; "
                f"remove it or fix the name (see properties/model/{model}.yaml)"
            )
        if not isinstance(spec, dict) or len(spec) != 1:
            raise UsageError(
                f"{source}: {key} must be one {{DISTRIBUTION: ARGS}}, e.g. {{choice: [32, 64]}}, "
                f"got {spec!r} "
                f"(a fixed value goes on the command line: --{key}=VALUE)"
            )
        (dist, args), = spec.items()
        if dist not in checks:
            raise UsageError(
                f"{source}: {key} uses unknown distribution {dist!r}; use one of {', '.join(DISTRIBUTIONS)}"
            )
        out.append(Param(str(key), dist, checks[dist](key, dist, args)))
    return out


def _checks() -> dict[str, Callable[[str, str, Any], list]]:
    """Argument check of each distribution: ``check(key, dist, args) -> args``."""

    def b(**kw) -> Callable[[str, str, Any], list]:
        return lambda key, dist, args: _bounds(key, dist, args, **kw)

    return {
        "uniform": b(ints=False, positive=False, quantized=False),
        "quniform": b(ints=False, positive=False, quantized=True),
        "loguniform": b(ints=False, positive=True, quantized=False),
        "qloguniform": b(ints=False, positive=True, quantized=True),
        "randint": b(ints=True, positive=False, quantized=False),
        "qrandint": b(ints=True, positive=False, quantized=True),
        "lograndint": b(ints=True, positive=True, quantized=False),
        "choice": _values,
        "grid": _values,
    }


def load_space(path: str, model: str, dataset: str | None = None) -> list[Param]:
    """Read and validate the space file at ``path`` for ``model``."""
    if not os.path.isfile(path):
        raise UsageError(f"space file not found: {path} (pass --space=properties/hyper/<Model>.yaml)")
    return parse_space(read_yaml(path), model, dataset, source=f"space file {path}")


def to_param_space(params: list[Param], search: str) -> dict:
    """Ray Tune ``param_space`` for ``params``; ``search='grid'`` runs every combination of lists."""
    from ray import tune

    builders = {
        "uniform": lambda a: tune.uniform(*a),
        "quniform": lambda a: tune.quniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "qloguniform": lambda a: tune.qloguniform(*a),
        "randint": lambda a: tune.randint(*a),
        "qrandint": lambda a: tune.qrandint(*a),
        "lograndint": lambda a: tune.lograndint(*a),
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    space = {}
    for p in params:
        if search == "grid":
            if p.dist not in ("choice", "grid"):
                raise UsageError(
                    f"--search=grid needs value lists, but {p.key} uses {p.dist}; "
                    f"write {p.key}: {{choice: [...]}} or use --search=random"
                )
            space[p.key] = tune.grid_search(p.args)
        else:
            space[p.key] = builders[p.dist](p.args)
    return space
