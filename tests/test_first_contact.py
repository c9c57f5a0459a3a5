"""What a new user's own task ran into (file modes, exit codes, reruns, defaults, prompts in exports): each case
failed before its fix."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from litgpt_ext.io import atomic_write_json, atomic_write_jsonl, atomic_write_text


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root):
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_files_get_the_mode_the_umask_gives(tmp_path, mask):
    with umask(mask):
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        atomic_write_jsonl(tmp_path / "c.jsonl", [{"a": 1}])
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    assert set(_modes(tmp_path).values()) == {0o666 & ~mask}


def test_export_is_readable_as_the_umask_says(tiny_checkpoint, tmp_path):
    from litgpt_ext.export.command import export_hf

    with umask(0o022):
        export_hf(tiny_checkpoint, out_dir=tmp_path / "hf")
    modes = _modes(tmp_path / "hf")
    assert "model.safetensors" in modes and "tokenizer_config.json" in modes and "README.md" in modes
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}
