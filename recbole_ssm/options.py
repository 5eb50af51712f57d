"""Command-line options of the subcommands (bench, tune, recommend), parsed one way.

Each command declares its own options as ``{name: Opt}``; :func:`parse` reads ``--KEY=VALUE``
arguments, converts and checks the command's own against that declaration (one-line
``UsageError``s, the same wording everywhere), and passes any other ``--KEY=VALUE`` on as RecBole
or model settings (parsed like the main command's overrides), or refuses it where the command
takes none. The commands with GNU-style options (``prepare SOURCE --input PATH``, the data
generators, ``bench ops``) use :class:`ArgParser`: argparse, with the same one-line errors.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Any

from recbole_ssm.errors import UsageError

HELP = ("-h", "--help", "help")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (a UsageError: exit code 2 under ``entry.guarded``),
    not argparse's usage dump."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def wants_help(argv: list[str]) -> bool:
    """Whether the command was asked for its usage (``-h``, ``--help`` or ``help`` first)."""
    return bool(argv) and argv[0] in HELP


@dataclass(frozen=True)
class Opt:
    """One option: its default and how its value is read.

    kind: ``text``; ``whole`` (an integer >= ``minimum``); ``number`` (a finite float >= ``minimum``,
    or > with ``strict``); ``flag`` (true/false; ``--NAME`` alone is true); ``choice`` (one of
    ``choices``); ``ints`` (comma-separated integers >= ``minimum``, none twice). A default of
    None means "not given" and is kept as None (``ints``: the option is required).
    """

    default: Any = None
    kind: str = "text"
    minimum: float = 0
    strict: bool = False
    choices: tuple = ()

    def read(self, name: str, value: Any) -> Any:
        if value is None and self.kind != "ints":
            return None
        return getattr(self, f"_{self.kind}")(f"--{name}", value)

    def _text(self, option: str, value: Any) -> str:
        return str(value)

    def _whole(self, option: str, value: Any) -> int:
        text = str(value).strip()
        if isinstance(value, bool) or not re.fullmatch(r"[+-]?\d+", text) or int(text) < self.minimum:
            raise UsageError(f"{option} takes a whole number >= {self.minimum:g}, got {value!r}")
        return int(text)

    def _number(self, option: str, value: Any) -> float:
        try:
            out = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            out = math.nan
        if not math.isfinite(out) or (out <= self.minimum if self.strict else out < self.minimum):
            raise UsageError(f"{option} takes a number {'>' if self.strict else '>='} {self.minimum:g}, "
                             f"got {value!r}")
        return out

    def _flag(self, option: str, value: Any) -> bool:
        low = str(value).strip().lower()
        if low not in TRUE + FALSE:
            raise UsageError(f"{option} takes true or false, got {value!r}")
        return low in TRUE

    def _choice(self, option: str, value: Any) -> str:
        if str(value) not in self.choices:
            raise UsageError(f"{option} takes one of {', '.join(self.choices)}, got {value!r}")
        return str(value)

    def _ints(self, option: str, value: Any) -> list[int]:
        text = "" if value is None or isinstance(value, bool) else str(value)
        if not text.strip():
            raise UsageError(f"{option} takes a comma-separated list of integers, e.g. {option}=50,200")
        out = []
        for part in (p.strip() for p in text.split(",")):
            if not re.fullmatch(r"\d+", part) or int(part) < self.minimum:
                raise UsageError(f"bad value {part!r} in {option}={text}: expected integers >= {self.minimum:g}")
            out.append(int(part))
        if len(set(out)) != len(out):
            raise UsageError(f"{option}={text} lists a value twice")
        return out


def parse(argv: list[str], spec: dict[str, Opt], command: str, settings: bool = True) -> tuple[dict, dict]:
    """``argv`` -> (the command's options, read and checked; the other ``--KEY=VALUE`` settings).

    With ``settings=False`` the command takes no other settings: an unknown option is an error
    naming the command's options.
    """
    from recbole_ssm.config import parse_overrides

    given: dict[str, Any] = {}
    rest: list[str] = []
    for arg in argv:
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: options are --KEY=VALUE")
        key, sep, value = arg[2:].partition("=")
        if key not in spec:
            if not settings:
                raise UsageError(f"{command}: unknown or malformed option {arg!r}; options: --" + ", --".join(spec))
            rest.append(arg)
        elif sep:
            given[key] = value
        elif spec[key].kind == "flag":
            given[key] = "true"
        else:
            raise UsageError(f"--{key} needs a value: --{key}=VALUE")
    own = {name: opt.read(name, given.get(name, opt.default)) for name, opt in spec.items()}
    return own, parse_overrides(rest)
