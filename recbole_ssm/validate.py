"""Checks of configuration values: each failure is a ConfigError naming the key, the value and the rule."""

from __future__ import annotations

from typing import Any, Callable

from recbole_ssm.errors import ConfigError

_UNSET = object()


def require(config, key: str, ok: Callable[[Any], bool], rule: str, default: Any = _UNSET):
    """Read ``config[key]`` and check it with ``ok``, or raise a ConfigError naming the key and the rule.

    RecBole's Config gives None for a missing key: that is ``default`` when one is given, else an error.
    """
    value = config[key]
    if value is None:
        if default is not _UNSET:
            return default
        raise ConfigError(f"{key} is not set: {rule}")
    try:
        good = ok(value)
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ConfigError(f"invalid {key}={value!r}: {rule}")
    return value


def whole(v) -> bool:
    """An int, and not a bool (YAML and the CLI give True/False as bools, which are ints to Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def number(v) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(v) -> bool:
    return whole(v) and v > 0


def positive_number(v) -> bool:
    return number(v) and v > 0
