"""Fused C++ CPU kernel for the selective scan core, built lazily with torch's cpp_extension."""

from __future__ import annotations

from typing import Any


def load() -> Any | None:
    """The compiled kernel module, or None when it is unavailable."""
    return None
