"""Helpers for user-facing messages that must never echo ad text."""

from __future__ import annotations

import re

_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def describe_columns(columns) -> str:
    """Column names for an error message; names that do not look like one (a headerless file's
    first row is ad text) are counted, not shown."""
    names = [str(c) for c in columns]
    shown = [n for n in names if _COLUMN_NAME.match(n)]
    hidden = len(names) - len(shown)
    return f"{shown}" + (
        f" and {hidden} not shown (not name-like: is the header row missing?)" if hidden else ""
    )
