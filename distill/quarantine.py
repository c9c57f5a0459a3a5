"""What a command dropped and why: every builder of data keeps one, so nothing disappears silently."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from litgpt_ext.io import atomic_write_jsonl


class Quarantine:
    """Dropped rows, each with its reason and whatever locates it; counted for ``summary.json``."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.reasons: Counter[str] = Counter()

    def add(self, reason: str, **info) -> None:
        self.reasons[reason] += 1
        self.rows.append({"reason": reason, **info})

    def counts(self) -> dict[str, int]:
        return dict(sorted(self.reasons.items()))

    def write(self, path: Path) -> None:
        """``quarantine.jsonl`` (rewritten whole: it is derived from this run)."""
        atomic_write_jsonl(path, self.rows)

    def report(self, path: Path, verb: str = "dropped") -> None:
        for reason, count in sorted(self.reasons.items()):
            print(f"  {verb} {count:,} ({reason}) -> {path}")
