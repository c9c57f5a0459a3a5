"""Labelled text-to-SQL data on the Hugging Face Hub: JSONL splits plus a dataset card whose YAML tells
``datasets.load_dataset("OWNER/NAME")`` where each split is. Token from ``HF_TOKEN`` only; private by default."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from litgpt_ext.errors import UserError
from litgpt_ext.export.hub import push_folder

SKIP = {"summary.json", "quarantine.jsonl", "exec_cache.jsonl", "README.md"}


def default_repo(owner: str, summary: dict) -> str:
    return f"{owner}/dataset_orm_{summary['source']}_{summary['split']}_{summary['version']}"


def dataset_card(splits: list[str], summary: dict) -> str:
    meta = {
        "configs": [
            {"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}.jsonl"} for s in splits]}
        ],
        "task_categories": ["text-classification"],
        "tags": ["text-to-sql", "reward-model", "litgpt-ext"],
    }
    counts = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if isinstance(v, int | float | str))
    dropped = "\n".join(f"| {k} | {v} |" for k, v in summary.get("dropped", {}).items()) or "| (none) | 0 |"
    return (
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n"
        f"# Execution-labelled text-to-SQL candidates ({summary['version']}, {summary['source']})\n\n"
        "Built with `litgpt-ext distill_sql_label`: every candidate query was executed in a read-only SQLite sandbox "
        "next to the question's gold query. `label` is 1 when the candidate runs, returns rows and its result equals "
        "the gold's (a multiset of rows; ordered when the gold has a top-level ORDER BY; numbers compared with a "
        "tolerance), 0 when it runs and returns something else. `exec_score` = (runs + returns rows) / 2. "
        f"Version `{summary['version']}`: v1 = questions with both labels, balanced; v2 = every labelled candidate; "
        "eval = every candidate incl. failures, with a result `fingerprint`.\n\n"
        "Columns: `id`, `question_id`, `question`, `db_id`, `schema`, `sql`, `data` (first result rows), "
        "`exec_score`, `label`.\n\n"
        f"| count | value |\n| --- | --- |\n{counts}\n\n| dropped | rows |\n| --- | --- |\n{dropped}\n\n"
        '```python\nfrom datasets import load_dataset\nds = load_dataset("OWNER/NAME")\n```\n'
    )


def stage(out_dir: Path, summary: dict, dest: Path) -> list[str]:
    """Lay out ``dest`` as the Hub repo: ``data/<split>.jsonl``, ``summary.json``, ``README.md``."""
    splits = sorted(p.stem for p in Path(out_dir).glob("*.jsonl") if p.name not in SKIP)
    if not splits:
        raise UserError("no split files to upload", path=out_dir)
    (dest / "data").mkdir(parents=True, exist_ok=True)
    for split in splits:
        shutil.copyfile(Path(out_dir) / f"{split}.jsonl", dest / "data" / f"{split}.jsonl")
    (dest / "summary.json").write_text(json.dumps(summary, indent=2))
    (dest / "README.md").write_text(dataset_card(splits, summary))
    return splits


def push_dataset(out_dir: Path, repo: str, summary: dict, public: bool = False, api=None) -> str:
    repo_id = repo if "/" in repo else default_repo(repo, summary)
    with tempfile.TemporaryDirectory() as tmp:
        stage(out_dir, summary, Path(tmp))
        url = push_folder(
            Path(tmp),
            repo_id,
            private=not public,
            api=api,
            repo_type="dataset",
            message="Upload with distill_sql_label",
        )
    print(f"pushed {repo_id} ({'public' if public else 'private'}): {url}")
    return repo_id


def pull_dataset(repo_id: str, out_dir: Path) -> list[str]:
    """Download a pushed dataset into ``out_dir`` as ``<split>.jsonl`` + ``summary.json`` + ``README.md``."""
    from huggingface_hub import snapshot_download

    if "/" not in repo_id:
        raise UserError(f"expected OWNER/NAME, got {repo_id!r}", field="from_hub")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            snapshot_download(
                repo_id=repo_id, repo_type="dataset", local_dir=tmp, token=os.environ.get("HF_TOKEN") or None
            )
        )
        files = sorted((local / "data").glob("*.jsonl"))
        if not files:
            raise UserError("the dataset has no data/*.jsonl files", field="from_hub")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, out_dir / f.name)
        for extra in ("summary.json", "README.md"):
            if (local / extra).is_file():
                shutil.copyfile(local / extra, out_dir / extra)
    print(f"downloaded {repo_id}: {', '.join(f.stem for f in files)} -> {out_dir}")
    return [f.stem for f in files]
