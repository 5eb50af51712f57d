"""``python -m recbole_ssm.data prepare SOURCE --input PATH [...]``."""

import sys

from recbole_ssm.errors import UsageError
from recbole_ssm.options import wants_help

USAGE = "usage: python -m recbole_ssm.data prepare {movielens,amazon2023,seqtext,csv} --input PATH [...]\n"


def _prepare(argv: list[str]) -> int:
    if argv[0] != "prepare":
        raise UsageError(f"unknown command {argv[0]!r}: use `python -m recbole_ssm.data prepare SOURCE ...`")
    from recbole_ssm.data.cli import main

    return main(argv[1:], prog="python -m recbole_ssm.data prepare")


def _main(argv: list[str]) -> int:
    if not argv or wants_help(argv):
        print(USAGE + "run `python -m recbole_ssm.data prepare --help` for the options", flush=True)
        return 0 if argv else 2
    from recbole_ssm.entry import guarded

    return guarded(_prepare, argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
