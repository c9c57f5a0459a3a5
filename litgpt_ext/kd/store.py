"""Stored teacher log-probs: the top-k of the teacher's next-token distribution at every answer position.

A store is a directory (what ``distill_logprobs`` writes, what ``finetune_kd --teacher_logprobs`` reads):

* ``manifest.json`` — the teacher (path, name, weights' size and time), ``k``, the temperature, the storage dtype,
  and the fingerprints of what the log-probs belong to: each split's tokens (input ids and labels, in dataset
  order) and the tokenizer's files. ``finetune_kd`` recomputes both from its own data and refuses a store made
  from anything else;
* ``train.topk.pt`` / ``val.topk.pt`` — packed like ``train.pt``: flat per-position arrays plus ``offsets``
  (sample ``i``'s answer positions are rows ``offsets[i]:offsets[i + 1]``, in the order the loss visits them):
  ``ids`` int32 ``(P, k)`` sorted by probability, ``logps`` float16 (or float32) ``(P, k)``, ``tail`` float32
  ``(P,)`` — the log of the mass outside the k tokens (``log(1 − Σ p_k)``, exact: a log-sum-exp over the rest) —
  and ``target`` float32 ``(P,)``, the teacher's log-prob of the label at temperature 1 (its own cross-entropy).
  A ``--cross_tokenizer`` store is in the *teacher's* tokens: its rows are the teacher's answer positions, it adds
  ``tokens`` int32 ``(P,)`` (the teacher's answer tokens, aligned with the student's at load) and keeps the
  teacher's tokenizer files in ``teacher_tokenizer/``.

Top-20 of a 32k vocabulary in float16 is ~100 bytes per position, against 128 kB for the full float32 row.

A ``--sampling sample`` store (manifest ``"sampling": "sample"``, ``"samples": N``) keeps tokens drawn from the
teacher instead, in ``train.sampled.pt`` / ``val.sampled.pt`` (:mod:`litgpt_ext.kd.sampled`): per position the
distinct drawn tokens (``width`` int16, then ``ids`` int32 and ``weights`` — counts, or importance-weighted counts —
flat), ``entropy``, ``top`` and ``target``. One store holds one scheme: its split files and its parts are checked
against the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from litgpt_ext.errors import UserError
from litgpt_ext.io import atomic_path, atomic_write_json

FORMAT = "litgpt_ext.topk/v1"
SAMPLED_FORMAT = "litgpt_ext.sampled/v1"
"""A sampled store's split files (:mod:`litgpt_ext.kd.sampled`)."""
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


SUFFIXES = {"topk": "topk", "sample": "sampled"}
"""How a store keeps the teacher's distribution — its top-k (``train.topk.pt``), or tokens drawn from it
(``train.sampled.pt``, :mod:`litgpt_ext.kd.sampled`) — and its split files' suffix; the manifest's ``sampling``
says which (absent: top-k)."""


def split_file(directory: Path, split: str, scheme: str = "topk") -> Path:
    return Path(directory) / f"{split}.{SUFFIXES[scheme]}.pt"


def scheme_of(manifest: dict) -> str:
    return manifest.get("sampling", "topk")


def dataset_fingerprint(dataset: Sequence, max_seq_length: int | None = None) -> str:
    """A hash of a dataset's tokens (input ids + labels, cut as the collate cuts them), in order. Only the tokens
    count: the same samples under a longer ``max_seq_length`` that cuts nothing have the same fingerprint."""
    h = hashlib.sha256()
    h.update(f"{len(dataset)}|".encode())
    for i in range(len(dataset)):
        sample = dataset[i]
        ids = sample["input_ids"][:max_seq_length] if max_seq_length else sample["input_ids"]
        labels = sample["labels"][: len(ids)]
        h.update(ids.to(torch.int32).numpy().tobytes())
        h.update(labels.to(torch.int32).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:32]


def tokenizer_fingerprint(checkpoint_dir: Path) -> str:
    """A hash of a checkpoint's tokenizer files (the vocabulary and its rules)."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        path = Path(checkpoint_dir) / name
        if path.is_file():
            h.update(name.encode() + b"|" + path.read_bytes())
    return h.hexdigest()[:32]


def teacher_identity(teacher_dir: Path) -> dict:
    weights = Path(teacher_dir) / "lit_model.pth"
    stat = weights.stat()
    return {
        "path": str(Path(teacher_dir).resolve()),
        "weights_bytes": stat.st_size,
        "weights_mtime_ns": stat.st_mtime_ns,
    }


def save_split(directory: Path, split: str, parts: dict[str, torch.Tensor], scheme: str = "topk") -> None:
    with atomic_path(split_file(directory, split, scheme)) as tmp:
        torch.save({"format": FORMAT if scheme == "topk" else SAMPLED_FORMAT, **parts}, tmp)


def write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_json(Path(directory) / MANIFEST, manifest)


def load_split(path: Path, fmt: str) -> dict:
    """A split file of a store, checked to be of ``fmt`` (a file of the other scheme is named as such)."""
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise UserError("missing (not a complete distill_logprobs output?)", path=path) from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"not a {fmt} file (a store mixes two --sampling schemes?)", path=path)
    return data


class TopK:
    """One split of a store, sliced by sample."""

    def __init__(self, path: Path) -> None:
        data = load_split(path, FORMAT)
        self.path = path
        self.ids, self.logps, self.tail, self.target = data["ids"], data["logps"], data["tail"], data["target"]
        self.offsets = data["offsets"]
        self.tokens = data.get("tokens")
        """A cross-tokenizer store's answer tokens (the teacher's ids, one per row), else None."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, index: int) -> slice:
        return slice(int(self.offsets[index]), int(self.offsets[index + 1]))

    def gather(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The rows of these samples, concatenated in this order (the order of a batch's answer positions)."""
        spans = [self.rows(i) for i in indices]
        pick = torch.cat([torch.arange(s.start, s.stop) for s in spans]) if spans else torch.zeros(0, dtype=torch.long)
        return {
            "t_ids": self.ids[pick].long(),
            "t_logps": self.logps[pick],
            "t_tail": self.tail[pick],
            "t_target": self.target[pick],
        }


def load_store(directory: Path) -> dict:
    """The manifest of a store, checked to be one."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise UserError("not a directory (a distill_logprobs output)", path=directory, field="teacher_logprobs")
    if not path.is_file():
        raise UserError(
            f"no {MANIFEST} (not a complete distill_logprobs output)", path=directory, field="teacher_logprobs"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise UserError(f"not a {FORMAT} store", path=path, field="teacher_logprobs")
    return manifest
