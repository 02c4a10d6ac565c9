"""Helpers for values that arrive through Jinja templates."""

from __future__ import annotations


def truthy(value: bool | str) -> bool:
    """Templated flags arrive as strings unless the DAG renders native objects."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")
