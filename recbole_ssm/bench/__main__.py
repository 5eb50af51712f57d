"""``python -m recbole_ssm.bench {table,efficiency,ops} [options]`` (see recbole_ssm.bench.cli)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``bench table``, ``bench efficiency`` or the ops benchmark (``bench ops``)."""
    from recbole_ssm.bench.cli import console_main

    return console_main(argv)


if __name__ == "__main__":
    sys.exit(main())
