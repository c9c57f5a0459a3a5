"""``litgpt-ext generate_merge``: join the shard outputs of generate_batch (or orm_score) in input order.

Its own module, importing neither torch nor Lightning, so joining files starts in a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path

from litgpt_ext.errors import UserError, require
from litgpt_ext.io import read_jsonl_repairing


def generate_merge(inputs: list[Path] | None = None, output: Path | None = None) -> None:
    """Join shard outputs into one file in input order (by input line), keeping one line per id.

    Args:
        inputs: The shard files (e.g. generations.shard-*.jsonl).
        output: The merged JSONL.
    """
    from litgpt_ext.io import atomic_path

    inputs, output = require(inputs, "inputs"), Path(require(output, "output"))
    index = []  # (line, file number, byte offset, length): sorts a million rows without holding them
    for n, path in enumerate(inputs):
        path = Path(path)
        if not path.is_file():
            raise UserError("file not found", path=path, field="inputs")
        list(read_jsonl_repairing(path))  # repair a torn tail first
        offset = 0
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if raw.strip():
                    index.append((*_line_and_id(raw, path, number), n, offset, len(raw)))
                offset += len(raw)
    index.sort()
    seen, written = set(), 0
    handles = [open(p, "rb") for p in inputs]
    try:
        with atomic_path(output) as tmp, open(tmp, "wb") as out:
            for _, rid, n, offset, length in index:
                if rid in seen:
                    continue
                seen.add(rid)
                handles[n].seek(offset)
                out.write(handles[n].read(length))
                written += 1
    finally:
        for h in handles:
            h.close()
    print(f"merged {written:,} lines from {len(inputs)} file(s) -> {output}")


def _line_and_id(raw: bytes, path: Path, number: int) -> tuple[int, str]:
    """A shard row's input line (``_line``, which generate_batch and orm_score write) and its ``id``."""
    try:
        row = json.loads(raw)
    except ValueError:
        raise UserError("not valid JSON", path=path, line=number) from None
    if not isinstance(row, dict):
        raise UserError("expected a JSON object", path=path, line=number)
    for key in ("_line", "id"):
        if key not in row:
            raise UserError(
                "missing (generate_merge joins the shard files of generate_batch / orm_score, whose rows carry the "
                "input line and id)",
                path=path,
                line=number,
                field=key,
            )
    if not isinstance(row["_line"], int):
        raise UserError("expected the input line number (an integer)", path=path, line=number, field="_line")
    return row["_line"], str(row["id"])
