"""``SFTData``: one litgpt DataModule for every supervised format this toolchain meets.

``--data SFTData --data.path P`` (or just ``--data P``) where P is
* a litgpt JSON/JSONL file, or a directory with ``train.json`` + ``val.json`` (any litgpt prompt style);
* a Q/A file ``{"train": [{"Question", "Answer"}], "val"?, "test"?}`` (prompt ``Question: {q}\\nAnswer:``);
* a directory with pre-tokenized ``train.pt`` / ``val.pt`` (lists of ``{"input_ids", "labels"}``), as written by
  ``distill_tokenize``.
All records are validated when the data is set up, before any training step, and every sample's labels ignore the
prompt (unless ``mask_prompt=false``) and padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from litgpt.data import DataModule
from litgpt.prompts import PromptStyle, has_prompt_style, load_prompt_style
from torch.utils.data import DataLoader

from litgpt_ext.data.encode import encode_text
from litgpt_ext.data.records import Example, is_qa_file, load_examples, load_json
from litgpt_ext.errors import UserError
from litgpt_ext.prompts import QA

Sample = dict[str, torch.Tensor]


def split_off(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split of ``items`` into (train, val) with at least one val item."""
    n_val = max(1, round(len(items) * fraction))
    if len(items) < 2:
        raise UserError(f"need at least 2 records to split off validation data, got {len(items)}")
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def load_pretokenized(path: Path, ignore_index: int = -100) -> list[Sample]:
    """Load and validate a ``.pt`` list of ``{"input_ids", "labels"}`` records."""
    try:
        rows = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise UserError("file not found", path=path) from None
    except Exception as err:
        raise UserError(f"not a readable torch file ({type(err).__name__})", path=path) from None
    if not isinstance(rows, list):
        raise UserError(f"expected a list of records, got {type(rows).__name__}", path=path, line="top level")
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
            fields[key] = value.long()
        if len(fields["input_ids"]) != len(fields["labels"]):
            raise UserError("length differs from input_ids", path=path, line=where, field="labels")
        if bool((fields["labels"] == ignore_index).all()):
            raise UserError("no answer tokens (every label is ignored)", path=path, line=where, field="labels")
        samples.append(fields)
    return samples


def truncate_sample(sample: Sample, max_seq_length: int | None, ignore_index: int = -100) -> Sample | None:
    """Cut a pre-tokenized sample to ``max_seq_length``; None if no answer token is left."""
    if not max_seq_length or len(sample["input_ids"]) <= max_seq_length:
        return sample
    cut = {k: v[:max_seq_length] for k, v in sample.items()}
    return None if bool((cut["labels"] == ignore_index).all()) else cut


@dataclass
class SFTData(DataModule):
    """Supervised finetuning data in litgpt JSON/JSONL, Q/A or pre-tokenized form (see the module docstring)."""

    path: Path = Path("data")
    """A .json/.jsonl file, a Q/A .json file, or a directory with train.json+val.json or train.pt+val.pt."""
    prompt_style: str | PromptStyle | None = None
    """litgpt prompt style name; default: 'QA' for Q/A files, 'alpaca' for litgpt JSON, stored style for .pt dirs."""
    mask_prompt: bool = True
    """Ignore prompt tokens in the loss (answer-only labels)."""
    val_split_fraction: float = 0.1
    """Fraction of train records split off (seeded) when the data has no validation split."""
    seed: int = 42
    """Seed of that split."""
    ignore_index: int = -100
    """Label value that the loss ignores (prompt and padding)."""

    tokenizer: object = field(default=None, init=False, repr=False)
    batch_size: int = field(default=1, init=False, repr=False)
    max_seq_length: int | None = field(default=None, init=False, repr=False)
    train_dataset: list[Sample] = field(default_factory=list, init=False, repr=False)
    val_dataset: list[Sample] = field(default_factory=list, init=False, repr=False)
    stats: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()
        self.path = Path(self.path)

    def connect(self, tokenizer=None, batch_size: int = 1, max_seq_length: int | None = None, **kwargs) -> None:
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.max_seq_length = None if max_seq_length in (None, -1) else max_seq_length

    # -- format detection -------------------------------------------------------------------------------------
    def _format(self) -> Literal["pretokenized", "dir", "file"]:
        if self.path.is_dir():
            if (self.path / "train.pt").is_file():
                return "pretokenized"
            if (self.path / "train.json").is_file():
                return "dir"
            raise UserError("directory has neither train.pt nor train.json", path=self.path)
        if not self.path.is_file():
            raise UserError("no such file or directory", path=self.path, field="data.path")
        return "file"

    def setup(self, stage: str = "") -> None:
        kind = self._format()
        if kind == "pretokenized":
            self._setup_pretokenized()
        else:
            self._setup_text(kind)
        self.stats.update(train=len(self.train_dataset), val=len(self.val_dataset))
        if not self.train_dataset:
            raise UserError("no training samples", path=self.path)

    def _setup_pretokenized(self) -> None:
        train = load_pretokenized(self.path / "train.pt", self.ignore_index)
        if (self.path / "val.pt").is_file():
            val = load_pretokenized(self.path / "val.pt", self.ignore_index)
        else:
            train, val = split_off(train, self.val_split_fraction, self.seed)
        kept = {}
        for name, rows in (("train", train), ("val", val)):
            cut = [truncate_sample(s, self.max_seq_length, self.ignore_index) for s in rows]
            kept[name] = [s for s in cut if s is not None]
            self.stats[f"{name}_dropped"] = len(rows) - len(kept[name])
        self.train_dataset, self.val_dataset = kept["train"], kept["val"]
        if self.prompt_style is None and has_prompt_style(self.path):
            self.prompt_style = load_prompt_style(self.path)

    def _setup_text(self, kind: str) -> None:
        if self.tokenizer is None:
            raise RuntimeError("SFTData.connect(tokenizer=...) must be called before setup()")
        if kind == "dir":
            splits = {"train": load_examples(self.path / "train.json")["train"]}
            if (self.path / "val.json").is_file():
                splits["val"] = load_examples(self.path / "val.json")["train"]
            qa = False
        else:
            splits = load_examples(self.path)
            qa = self.path.suffix == ".json" and is_qa_file(load_json(self.path))
        if self.prompt_style is None:
            self.prompt_style = QA() if qa else "alpaca"
        if isinstance(self.prompt_style, str):
            self.prompt_style = PromptStyle.from_name(self.prompt_style)
        if "val" not in splits:
            splits["train"], splits["val"] = split_off(splits["train"], self.val_split_fraction, self.seed)
        self.train_dataset = self._encode(splits["train"], "train")
        self.val_dataset = self._encode(splits["val"], "val")

    def _encode(self, examples: list[Example], split: str) -> list[Sample]:
        samples, prompt_cut, response_cut = [], 0, 0
        for ex in examples:
            prompt = self.prompt_style.apply(prompt=ex.instruction, input=ex.input)
            enc = encode_text(
                self.tokenizer,
                prompt,
                ex.output,
                max_seq_length=self.max_seq_length,
                mask_prompt=self.mask_prompt,
                ignore_index=self.ignore_index,
            )
            prompt_cut += enc.prompt_truncated
            response_cut += enc.response_truncated
            samples.append({"input_ids": enc.input_ids, "labels": enc.labels})
        self.stats[f"{split}_prompt_truncated"] = prompt_cut
        self.stats[f"{split}_response_truncated"] = response_cut
        return samples

    # -- litgpt compatibility: plain dataloaders (the training loop builds its own, resumable ones) ------------
    def _loader(self, dataset: list[Sample], shuffle: bool) -> DataLoader:
        from litgpt_ext.training.objectives.sft import pad_collate

        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, collate_fn=pad_collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)
