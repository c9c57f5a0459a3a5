"""Streaming, sharded ``safetensors`` output: tensors are written shard by shard as they are converted, so peak
memory is about one shard, whatever the model size."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from litgpt_ext.errors import UserError
from litgpt_ext.io import atomic_write_json, save_safetensors

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """``5GB``, ``500MB``, ``2GiB`` or a byte count."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not m or m.group(2) not in _UNITS:
        raise UserError(f"cannot read size {text!r} (use e.g. 5GB, 500MB)", field="max_shard_size")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


class ShardWriter:
    def __init__(self, out_dir: Path, max_shard_bytes: int, metadata: dict | None = None) -> None:
        self.out_dir, self.max_bytes = Path(out_dir), max_shard_bytes
        self.metadata = {"format": "pt", **(metadata or {})}
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.current and self.current_bytes + size > self.max_bytes:
            self._flush()
        # an owned, contiguous copy: safetensors refuses views that share storage (e.g. split q/k/v)
        self.current[name] = tensor.detach().contiguous().clone()
        self.current_bytes += size
        self.total += size

    def _flush(self) -> None:
        path = self.out_dir / f".shard-{len(self.shards):05d}.tmp"
        save_safetensors(self.current, path, metadata=self.metadata)
        self.shards.append((path, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def close(self) -> list[Path]:
        """Name the shards (``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + index) and return them."""
        if self.current or not self.shards:
            self._flush()
        n = len(self.shards)
        if n == 1:
            final = self.out_dir / "model.safetensors"
            self.shards[0][0].rename(final)
            return [final]
        weight_map, finals = {}, []
        for i, (tmp, names) in enumerate(self.shards, start=1):
            final = self.out_dir / f"model-{i:05d}-of-{n:05d}.safetensors"
            tmp.rename(final)
            finals.append(final)
            weight_map.update({name: final.name for name in names})
        atomic_write_json(
            self.out_dir / "model.safetensors.index.json",
            {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))},
        )
        return finals
