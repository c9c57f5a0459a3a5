"""Pre-tokenized SFT data on disk (``train.pt`` / ``val.pt``).

Two accepted forms:
* **packed** (what ``distill_tokenize`` writes): ``{"format": "litgpt_ext.packed_sft/v1", "input_ids": int32[T],
  "labels": int32[T], "offsets": int64[N+1], "ids": [str] * N}`` — sample ``i`` is ``[offsets[i]:offsets[i+1]]``.
  One flat tensor saves and loads in well under a second at a million samples (a list of a million small tensors
  takes minutes and ~1 GB), and samples are views, so memory is the data itself;
* a plain **list** of ``{"input_ids": [...], "labels": [...]}`` (tensors or int lists), convenient by hand.
Both load as a :class:`PackedSamples` sequence; every sample is validated on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from litgpt_ext.errors import UserError

FORMAT = "litgpt_ext.packed_sft/v1"


class PackedSamples(Sequence):
    """Samples as views into flat tensors; ``index`` selects (and orders) the visible samples."""

    def __init__(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        offsets: torch.Tensor,
        ids: list[str] | None = None,
        index: torch.Tensor | None = None,
        max_len: int | None = None,
    ):
        self.input_ids, self.labels, self.offsets, self.ids = input_ids, labels, offsets, ids
        self.index = torch.arange(len(offsets) - 1) if index is None else index
        self.max_len = max_len
        self.routes: list[str | None] | None = None
        """Per packed sample, the value of the data's ``route_field`` (which teacher distils it), if routed."""
        self.route_files: dict[str, Path] | None = None
        """Routed by file (``--data.route_files``): teacher name -> the file its samples came from."""

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        k = int(self.index[i])
        start, end = int(self.offsets[k]), int(self.offsets[k + 1])
        if self.max_len:
            end = min(end, start + self.max_len)
        return {"input_ids": self.input_ids[start:end].long(), "labels": self.labels[start:end].long()}

    def lengths(self) -> torch.Tensor:
        lengths = (self.offsets[1:] - self.offsets[:-1])[self.index]
        return lengths.clamp(max=self.max_len) if self.max_len else lengths

    def route(self, i: int) -> str | None:
        """Sample ``i``'s route (None: the data is not routed, or the record names no teacher)."""
        return None if self.routes is None else self.routes[int(self.index[i])]

    def _view(self, index: torch.Tensor, max_len: int | None) -> PackedSamples:
        view = PackedSamples(self.input_ids, self.labels, self.offsets, self.ids, index, max_len)
        view.routes, view.route_files = self.routes, self.route_files
        return view

    def subset(self, index: torch.Tensor) -> PackedSamples:
        return self._view(self.index[index], self.max_len)

    def truncated(self, max_len: int | None, ignore_index: int = -100) -> PackedSamples:
        """Cut samples to ``max_len``; drop those with no supervised token left."""
        if not max_len:
            return self
        starts = self.offsets[:-1][self.index]
        supervised = (self.labels != ignore_index).to(torch.int64)
        csum = torch.cat([torch.zeros(1, dtype=torch.int64), supervised.cumsum(0)])
        ends = torch.minimum(self.offsets[1:][self.index], starts + max_len)
        keep = (csum[ends] - csum[starts]) > 0
        return self._view(self.index[keep], max_len)


def concatenate(parts: list[tuple[str, PackedSamples]], files: dict[str, Path]) -> PackedSamples:
    """The visible samples of every ``(route, samples)`` part, in order, as one packed sequence; each sample routed
    to its part's name (routing by file). A sample keeps its record's id, else is named by its file and position."""
    samples, ids, routes = [], [], []
    for name, part in parts:
        for i in range(len(part)):
            samples.append(part[i])
            k = int(part.index[i])
            ids.append(part.ids[k] if part.ids and part.ids[k] is not None else f"{Path(files[name]).name} #{k + 1}")
            routes.append(name)
    packed = pack(samples, ids)
    joined = PackedSamples(packed["input_ids"], packed["labels"], packed["offsets"], ids)
    joined.routes, joined.route_files = routes, dict(files)
    return joined


def pack(samples: list[dict], ids: list[str] | None = None) -> dict:
    """The packed on-disk dict for a list of ``{"input_ids", "labels"}`` samples."""
    lengths = torch.tensor([len(s["input_ids"]) for s in samples], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])

    def cat(key: str) -> torch.Tensor:
        if not samples:
            return torch.zeros(0, dtype=torch.int32)
        return torch.cat([torch.as_tensor(s[key], dtype=torch.int32) for s in samples])

    return {"format": FORMAT, "input_ids": cat("input_ids"), "labels": cat("labels"), "offsets": offsets, "ids": ids}


def _validate_packed(path: Path, data: dict, ignore_index: int) -> PackedSamples:
    for key in ("input_ids", "labels", "offsets"):
        if not isinstance(data.get(key), torch.Tensor):
            raise UserError("missing or not a tensor", path=path, line="top level", field=key)
    input_ids, labels, offsets = data["input_ids"], data["labels"], data["offsets"]
    if input_ids.shape != labels.shape or input_ids.ndim != 1:
        raise UserError("labels and input_ids must be 1-D of equal length", path=path, line="top level", field="labels")
    lengths = offsets[1:] - offsets[:-1]
    if offsets[0] != 0 or offsets[-1] != len(input_ids) or bool((lengths <= 0).any()):
        bad = int((lengths <= 0).nonzero()[0]) + 1 if bool((lengths <= 0).any()) else "top level"
        raise UserError(
            "offsets must rise from 0 to len(input_ids), every sample non-empty",
            path=path,
            line=f"record {bad}" if bad != "top level" else bad,
            field="offsets",
        )
    supervised = torch.cat([torch.zeros(1, dtype=torch.int64), (labels != ignore_index).to(torch.int64).cumsum(0)])
    empty = (supervised[offsets[1:]] - supervised[offsets[:-1]]) == 0
    if bool(empty.any()):
        raise UserError(
            "no answer tokens (every label is ignored)",
            path=path,
            line=f"record {int(empty.nonzero()[0]) + 1}",
            field="labels",
        )
    return PackedSamples(input_ids, labels, offsets, data.get("ids"))


def _validate_list(path: Path, rows: list, ignore_index: int) -> PackedSamples:
    samples = []
    for i, row in enumerate(rows, start=1):
        where = f"record {i}"
        if not isinstance(row, dict):
            raise UserError(f"expected a dict, got {type(row).__name__}", path=path, line=where)
        fields = {}
        for key in ("input_ids", "labels"):
            if key not in row:
                raise UserError("missing", path=path, line=where, field=key)
            value = torch.as_tensor(row[key])
            if value.ndim != 1 or value.numel() == 0 or value.is_floating_point():
                raise UserError("expected a non-empty 1-D list of token ids", path=path, line=where, field=key)
            fields[key] = value
        if len(fields["input_ids"]) != len(fields["labels"]):
            raise UserError("length differs from input_ids", path=path, line=where, field="labels")
        if bool((fields["labels"] == ignore_index).all()):
            raise UserError("no answer tokens (every label is ignored)", path=path, line=where, field="labels")
        samples.append(fields)
    packed = pack(samples, [str(r.get("id", i)) for i, r in enumerate(rows, start=1)])
    return PackedSamples(packed["input_ids"], packed["labels"], packed["offsets"], packed["ids"])


def check_tokenizer(path: Path, data: dict | list, samples: PackedSamples, tokenizer, vocab_limit: int | None) -> None:
    """The file was tokenized with ``tokenizer``'s vocabulary: its record says so (``distill_tokenize`` writes one),
    and — for files without one — no id is past the model's embedding (``vocab_limit`` rows)."""
    from litgpt_ext.checkpoint_files import vocabulary_fingerprint

    record = data.get("tokenizer") if isinstance(data, dict) else None
    if (
        isinstance(record, dict)
        and tokenizer is not None
        and record.get("fingerprint") != vocabulary_fingerprint(tokenizer)
    ):
        raise UserError(
            f"tokenized with another tokenizer ({record.get('checkpoint')}, {record.get('vocab_size')} tokens) "
            f"than the model's ({tokenizer.model_name}): run distill_tokenize with this model's --checkpoint_dir",
            path=path,
            field="tokenizer",
        )
    if vocab_limit is not None and len(samples.input_ids):
        top = int(samples.input_ids.max())
        if top >= vocab_limit:
            raise UserError(
                f"token id {top} is past the model's vocabulary ({vocab_limit} ids): the file was tokenized for "
                "another model; run distill_tokenize with this model's --checkpoint_dir",
                path=path,
                field="input_ids",
            )


def load_pretokenized(
    path: Path, ignore_index: int = -100, tokenizer=None, vocab_limit: int | None = None
) -> PackedSamples:
    """The samples of a ``.pt`` file, validated; with ``tokenizer`` / ``vocab_limit`` (the model that will read
    them), checked to be in its vocabulary (:func:`check_tokenizer`)."""
    samples, data = _load(path, ignore_index)
    check_tokenizer(path, data, samples, tokenizer, vocab_limit)
    return samples


def _load(path: Path, ignore_index: int) -> tuple[PackedSamples, dict | list]:
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise UserError("file not found", path=path) from None
    except Exception as err:
        raise UserError(f"not a readable torch file ({type(err).__name__})", path=path) from None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return _validate_packed(path, data, ignore_index), data
    if isinstance(data, list):
        return _validate_list(path, data, ignore_index), data
    raise UserError(
        f"expected a list of records or a {FORMAT} dict, got {type(data).__name__}", path=path, line="top level"
    )
