"""The scripts that write the docs' study tables (``make prune-study``, ``make store-study``, ``make xtok-study``,
``make families``) run for real only now and then (30-45 minutes each); a smoke run of every step keeps them working
in between: a tiny teacher, a few documents, one training step, in one process."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


def test_prune_and_cross_tokenizer_studies_run_every_step(tmp_path):
    _run("tests.prune_study", "--smoke", str(tmp_path))
    prune = json.loads((tmp_path / "table.json").read_text())
    assert len(prune["rows"]) == 9 and "random init (depth shape), no training" in prune["rows"]
    assert (tmp_path / "table.md").read_text().count("\n") == 11
    _run("tests.store_study", "--smoke", str(tmp_path))  # the prune study's teacher, data and cut student again
    store = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert list(store) == ["pruned, no training", "online KD (full distribution)", "offline top-4",
                           "offline sampled, 3 draws (bytes of top-4)"]  # fmt: skip
    assert store["offline sampled, 3 draws (bytes of top-4)"]["distinct_per_position"] <= 3
    _run("tests.xtok_study", "--smoke", str(tmp_path))
    xtok = json.loads((tmp_path / "xtok" / "table.json").read_text())["rows"]
    assert list(xtok)[0] == "SFT on the teacher's text" and xtok["SFT on the teacher's text"]["top1_agreement"] is None
    assert all(0 <= row["top1_agreement"] <= 1 for label, row in xtok.items() if "KD" in label)


def test_family_matrix_runs_every_cell():
    out = _run("tests.family_matrix", "--smoke")
    table = out[out.index("| family (litgpt config)") :]  # the table printed at the end (each row also as it comes)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 2 and all(row.count("| ok ") == 5 for row in rows), rows
