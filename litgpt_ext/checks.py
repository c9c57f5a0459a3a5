"""Inputs checked at start, with one line naming the flag: numbers that make no sense, checkpoint directories.

Every command that reads a checkpoint or takes numbers uses these (they depend on nothing else in the package,
so any module can import them without an import circle)."""

from __future__ import annotations

from pathlib import Path

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


def check_checkpoint_dir(checkpoint_dir: Path) -> None:
    """One-line error instead of litgpt's multi-line message + exit 1."""
    if not checkpoint_dir.is_dir():
        raise UserError("not a checkpoint directory", path=checkpoint_dir, field="checkpoint_dir")
    missing = [f for f in ("lit_model.pth", "model_config.yaml") if not (checkpoint_dir / f).is_file()]
    if not any((checkpoint_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        missing.append("tokenizer.json or tokenizer.model")
    if missing:
        raise UserError(f"missing {', '.join(missing)}", path=checkpoint_dir, field="checkpoint_dir")
