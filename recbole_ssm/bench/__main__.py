"""``python -m recbole_ssm.bench ops [options]``: the SSM ops benchmark (see recbole_ssm.bench.ops)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "ops":
        print("usage: python -m recbole_ssm.bench ops [--help]", file=sys.stderr)
        return 2
    from recbole_ssm.bench.ops import main as ops_main

    return ops_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
