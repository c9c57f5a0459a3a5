"""Fixtures for the teacher-stage tests: records, and a tiny offline tiktoken encoding file."""

from __future__ import annotations

import base64
import json
from pathlib import Path


def write_records(path: Path, n: int, extra: dict | None = None) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            rec = {
                "id": f"doc-{i:04d}",
                "url": f"https://t.example/{i}",
                "title": f"Town number {i} on the river",
                "body": f"Town {i} sells salt and glass. About {i * 10} people live there.",
                "queries": [f"town {i}"],
                **(extra or {}),
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def write_tiktoken_file(path: Path) -> Path:
    """A byte-level BPE with the 256 single bytes plus a few merges, in tiktoken's file format."""
    ranks = [bytes([b]) for b in range(256)] + [b"th", b"the", b" t", b"in", b"er", b" the"]
    path.write_text("".join(f"{base64.b64encode(tok).decode()} {rank}\n" for rank, tok in enumerate(ranks)))
    return path
