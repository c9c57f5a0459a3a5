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


def config_value(checkpoint_dir: Path, key: str) -> int | None:
    """An integer of the checkpoint's ``model_config.yaml`` (None when the file or the key is missing)."""
    import yaml

    path = Path(checkpoint_dir) / "model_config.yaml"
    try:
        value = (yaml.safe_load(path.read_text()) or {}).get(key)
    except (OSError, yaml.YAMLError):
        return None
    return int(value) if isinstance(value, int) else None


def model_context(checkpoint_dir: Path) -> int | None:
    """The checkpoint's ``block_size`` (its context length), read from ``model_config.yaml``."""
    return config_value(checkpoint_dir, "block_size")


def model_width(checkpoint_dir: Path) -> int | None:
    """The checkpoint's ``n_embd``, read from ``model_config.yaml``."""
    return config_value(checkpoint_dir, "n_embd")


def fit_to_context(flag: str, value: int | None, checkpoint_dir: Path) -> int | None:
    """A length flag capped at the model's context: a longer sample cannot be trained on (litgpt refuses to forward
    it), so a value above ``block_size`` is lowered to it with one warning line, and an unset one means the context."""
    import sys

    context = model_context(checkpoint_dir)
    if context is None:
        return value
    if value is None:
        return context
    if value > context:
        print(
            f"warning: --{flag} {value} exceeds the model's context ({context}, block_size in "
            f"{Path(checkpoint_dir) / 'model_config.yaml'}): using {context}",
            file=sys.stderr,
        )
        return context
    return value
