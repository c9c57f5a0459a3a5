"""Reading ``generate_batch``'s output back: what later stages (preference pairs, SQL labels) consume."""

from __future__ import annotations

import json
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


def accumulate_stats(path: Path, run: dict) -> dict:
    """The stats file's content after ``run``: a run that continued an output (``already_done``) adds its prompts,
    tokens and seconds to those of the runs that wrote the rest of it, so rates cover the whole file's generation
    time; a fresh output starts the count again."""
    totals = {**run, "runs": 1}
    if run["already_done"] and path.is_file():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = {}
        if isinstance(before, dict) and before.get("prompts"):
            for key in ("prompts", "generated_tokens", "error_records", "truncated_prompts", "seconds", "runs"):
                totals[key] = round(before.get(key, 0 if key != "runs" else 1) + totals[key], 3)
    seconds = max(totals["seconds"], 1e-9)
    totals["prompts_per_s"] = round(totals["prompts"] / seconds, 3)
    totals["tokens_per_s"] = round(totals["generated_tokens"] / seconds, 1)
    return totals


def stats_path(output: Path) -> Path:
    """Where a run's throughput is written: ``generations.jsonl`` -> ``generations.stats.json`` (the last run's)."""
    return output.with_name(f"{output.stem}.stats.json")


def union_stats(per_rank: list[dict]) -> dict:
    """One run's stats over every process: counts add up, the time is the slowest process's."""
    counts = ("prompts", "generated_tokens", "error_records", "truncated_prompts", "already_done")
    total = {**per_rank[0], **{key: sum(r[key] for r in per_rank) for key in counts}}
    total["seconds"] = max(r["seconds"] for r in per_rank)
    total["processes"] = len(per_rank)
    return total
