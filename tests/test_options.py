"""recbole_ssm.options: the one parser of the subcommands' --KEY=VALUE options."""

from __future__ import annotations

import pytest

from recbole_ssm.errors import UsageError
from recbole_ssm.options import Opt, parse, wants_help

SPEC = {
    "name": Opt("x"),
    "count": Opt(3, "whole", minimum=1),
    "rate": Opt(0.5, "number", minimum=0, strict=True),
    "fast": Opt(False, "flag"),
    "mode": Opt("a", "choice", choices=("a", "b")),
    "sizes": Opt("1,2", "ints", minimum=1),
    "limit": Opt(None, "whole"),
}


def test_defaults_are_read_like_given_values_and_none_stays_unset():
    own, rest = parse([], SPEC, "cmd")
    assert own == {"name": "x", "count": 3, "rate": 0.5, "fast": False, "mode": "a", "sizes": [1, 2], "limit": None}
    assert rest == {}


def test_given_values_are_converted_and_other_settings_pass_through():
    own, rest = parse(["--count=7", "--rate=2e-1", "--fast", "--mode=b", "--sizes=5,50", "--limit=0",
                       "--epochs=4", "--learning_rate=0.01", "--name=y"], SPEC, "cmd")
    assert own == {"name": "y", "count": 7, "rate": 0.2, "fast": True, "mode": "b", "sizes": [5, 50], "limit": 0}
    assert rest == {"epochs": 4, "learning_rate": 0.01}
    assert parse(["--fast=false"], SPEC, "cmd")[0]["fast"] is False
    assert parse(["--fast=On"], SPEC, "cmd")[0]["fast"] is True


@pytest.mark.parametrize("argv, words", [
    (["--count=0"], "--count takes a whole number >= 1, got '0'"),
    (["--count=2.5"], "--count takes a whole number >= 1, got '2.5'"),
    (["--count=x"], "--count takes a whole number >= 1, got 'x'"),
    (["--rate=0"], "--rate takes a number > 0, got '0'"),
    (["--rate=nan"], "--rate takes a number > 0, got 'nan'"),
    (["--fast=maybe"], "--fast takes true or false, got 'maybe'"),
    (["--mode=c"], "--mode takes one of a, b, got 'c'"),
    (["--sizes=1,x"], "bad value 'x' in --sizes=1,x: expected integers >= 1"),
    (["--sizes=3,3"], "--sizes=3,3 lists a value twice"),
    (["--sizes="], "--sizes takes a comma-separated list of integers"),
    (["--count"], "--count needs a value: --count=VALUE"),
    (["count=3"], "unexpected argument 'count=3': options are --KEY=VALUE"),
])
def test_bad_values_are_one_line_usage_errors(argv, words):
    with pytest.raises(UsageError) as err:
        parse(argv, SPEC, "cmd")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_command_without_settings_names_its_options_for_an_unknown_one():
    with pytest.raises(UsageError, match=r"cmd: unknown or malformed option '--epochs=3'; options: --name, --count"):
        parse(["--epochs=3"], SPEC, "cmd", settings=False)


def test_help_is_asked_by_the_first_argument():
    assert wants_help(["--help"]) and wants_help(["-h", "--x=1"]) and wants_help(["help"])
    assert not wants_help([]) and not wants_help(["--x=1", "--help"])
