"""What every command-line entry point shares: one-line errors and loading a sub-command's module.

Kept below ``cli.py`` so that ``data/``, ``bench/`` and the other entry points import it without
importing the main command line.
"""

from __future__ import annotations

import importlib
import sys

from recbole_ssm.errors import UsageError


def guarded(fn, *args) -> int:
    """Run ``fn(*args)``; a UsageError becomes one ``error:`` line and its exit code (2)."""
    try:
        return int(fn(*args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def load_command(module: str, label: str):
    """Import a sub-command's module; one missing from this install is a UsageError naming ``label``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise UsageError(f"{label} is not available in this version") from None
