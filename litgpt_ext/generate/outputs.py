"""Reading ``generate_batch``'s output back: what later stages (preference pairs, SQL labels) consume."""

from __future__ import annotations

from pathlib import Path

from litgpt_ext.data.records import iter_jsonl
from litgpt_ext.errors import UserError


def read_generations(path: Path, flag: str = "generations") -> dict[str, dict]:
    """``generate_batch`` output by id: ``{"texts": [...]}`` (``None`` samples left out) or ``{"error": ...}`` for
    its error records; anything else is a located error (``flag`` names the command's option in it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path=path, field=flag)
    found: dict[str, dict] = {}
    for n, row in iter_jsonl(path):
        if not isinstance(row, dict) or row.get("id") is None:
            raise UserError("expected a JSON object with an id", path=path, line=n, field="id")
        if "error" in row:
            found[str(row["id"])] = {"error": str(row["error"])}
            continue
        texts = row.get("generations")
        if not isinstance(texts, list) or not all(isinstance(t, str) or t is None for t in texts):
            raise UserError("expected a list of generated texts", path=path, line=n, field="generations")
        found[str(row["id"])] = {"texts": [t for t in texts if t is not None]}
    return found
