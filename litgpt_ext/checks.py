"""Numeric flags that make no sense stop a command at start, with one line naming the flag."""

from __future__ import annotations

from litgpt_ext.errors import UserError


def at_least(flag: str, value, minimum: float) -> None:
    """``value >= minimum`` (None passes: the flag is unset)."""
    if value is not None and not value >= minimum:
        raise UserError(f"must be >= {minimum}, got {value}", field=flag)


def above(flag: str, value, bound: float) -> None:
    """``value > bound`` (None passes)."""
    if value is not None and not value > bound:
        raise UserError(f"must be > {bound}, got {value}", field=flag)


def within(flag: str, value, low: float, high: float, low_open: bool = False) -> None:
    """``low <= value <= high`` (``low < value`` with ``low_open``; None passes)."""
    if value is None:
        return
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise UserError(f"must be in {bracket}{low}, {high}], got {value}", field=flag)
