"""``SFTData``: one litgpt DataModule for every supervised format this toolchain meets.

``--data SFTData --data.path P`` (or just ``--data P``) where P is
* a litgpt JSON/JSONL file, or a directory with ``train.json`` + ``val.json`` (any litgpt prompt style);
* a Q/A file ``{"train": [{"Question", "Answer"}], "val"?, "test"?}`` (prompt ``Question: {q}\\nAnswer:``);
* a chat file — OpenAI ``messages`` or ShareGPT ``conversations`` rows (:mod:`litgpt_ext.data.chat`), JSON or
  JSONL, or a directory with ``train.jsonl`` + ``val.jsonl`` — rendered with the student's chat template
  (``prompt_style: chat_template``, the default when the checkpoint has one) or a litgpt style, the loss on
  assistant turns only (:mod:`litgpt_ext.data.chat_encode`);
* a directory with pre-tokenized ``train.pt`` / ``val.pt`` (see :mod:`litgpt_ext.data.pretokenized`), as written by
  ``distill_tokenize``.
All records are validated when the data is set up, before any training step, and every sample's labels ignore the
prompt (unless ``mask_prompt=false``) and padding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from litgpt.prompts import PromptStyle, has_prompt_style, load_prompt_style

from litgpt_ext.data.batches import RowData, pad_collate
from litgpt_ext.data.chat import CHAT_FORMATS, data_format, load_conversations
from litgpt_ext.data.chat_encode import encode_conversations, renderer_for
from litgpt_ext.data.fast_encode import encode_packed
from litgpt_ext.data.pretokenized import PackedSamples, concatenate, load_pretokenized
from litgpt_ext.data.records import Example, columns_of, is_qa_file, load_examples, load_json, read_routes
from litgpt_ext.data.split import split_off, split_order
from litgpt_ext.errors import UserError
from litgpt_ext.prompts import data_style, resolve_prompt_style, style_from_name

Sample = dict[str, torch.Tensor]


@dataclass
class SFTData(RowData):
    """Supervised finetuning data in litgpt JSON/JSONL, Q/A or pre-tokenized form (see the module docstring)."""

    collate = staticmethod(pad_collate)

    path: Path = Path("data")
    """A .json/.jsonl file (litgpt, Q/A or chat), or a directory with train.json(l)+val.json(l) or train.pt+val.pt."""
    prompt_style: str | PromptStyle | None = None
    """litgpt prompt style name or ``chat_template`` (the checkpoint's own Jinja template); default: 'QA' for Q/A
    files, 'alpaca' for litgpt JSON, the checkpoint's chat template (else alpaca) for chat data, the stored style
    for .pt dirs."""
    format: Literal["auto", "alpaca", "qa", "messages", "sharegpt"] = "auto"
    """Data format: ``auto`` (by each file's shape), ``alpaca`` (litgpt JSON), ``qa``, ``messages`` (OpenAI),
    ``sharegpt``."""
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    """Chat data: which assistant turns carry the loss (system, user and tool turns never do)."""
    mask_prompt: bool = True
    """Ignore prompt tokens in the loss (answer-only labels)."""
    val_split_fraction: float = 0.1
    """Fraction of train records split off (seeded) when the data has no validation split."""
    seed: int = 42
    """Seed of that split."""
    route_field: str | None = None
    """A record field naming the teacher that distils the record (``finetune_kd --teachers``); litgpt JSON/JSONL and
    chat rows. A record without it is unrouted."""
    route_files: dict[str, Path] | None = None
    """Routing by file instead (``finetune_kd --teachers``), in place of ``path``: teacher name -> a file or directory
    as ``path`` takes it (any format, pre-tokenized too); every record of it is distilled by that teacher. Each is
    split into train/val on its own (its val file, else ``val_split_fraction``)."""
    ignore_index: int = -100
    """Label value that the loss ignores (prompt and padding)."""

    student_dir: Path | None = field(default=None, init=False, repr=False)
    """The student checkpoint (set by the finetune command): where a ``chat_template`` comes from."""
    max_seq_length: int | None = field(default=None, init=False, repr=False)

    def connect(self, tokenizer=None, batch_size: int = 1, max_seq_length: int | None = None, **kwargs) -> None:
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.max_seq_length = None if max_seq_length in (None, -1) else max_seq_length

    # -- format detection -------------------------------------------------------------------------------------
    def source_kind(self) -> Literal["pretokenized", "dir", "file", "files"]:
        """What ``--data`` points at: packed ``train.pt`` (pre-tokenized), a directory of litgpt JSON, one file, or
        one per teacher (``route_files``)."""
        if self.route_files is not None:
            return "files"
        if self.path.is_dir():
            if (self.path / "train.pt").is_file():
                return "pretokenized"
            if (self.path / "train.json").is_file() or (self.path / "train.jsonl").is_file():
                return "dir"
            raise UserError("directory has neither train.pt nor train.json(l)", path=self.path)
        if not self.path.is_file():
            raise UserError("no such file or directory", path=self.path, field="data.path")
        return "file"

    def setup(self, stage: str = "") -> None:
        kind = self.source_kind()
        if kind == "files":
            self._setup_files()
        elif kind == "pretokenized":
            self._setup_pretokenized()
        else:
            self._setup_text(kind)
        self.stats.update(train=len(self.train_dataset), val=len(self.val_dataset))
        if not self.train_dataset:
            raise UserError("no training samples", path=None if kind == "files" else self.path)

    def test_input(self) -> tuple[Path, str] | None:
        """(file, split) of the test split, for ``--eval.test``: a Q/A file's ``test`` list or a directory's
        test.json (litgpt JSON); None when the data has none."""
        if self.route_files is not None:
            return None
        if self.path.is_dir():
            return (self.path / "test.json", "test") if (self.path / "test.json").is_file() else None
        if self.path.suffix == ".json" and self.path.is_file():
            data = load_json(self.path)
            if is_qa_file(data) and "test" in data:
                return self.path, "test"
        return None

    def routed_parts(self) -> dict[str, SFTData]:
        """``route_files`` as one module per file (this one's settings, that file as ``path``), not yet set up."""
        if self.route_field is not None:
            raise UserError("routes by a record field or by file, not both: drop one", field="data.route_files")
        if not self.route_files:
            raise UserError("names no file: give {teacher name: file}", field="data.route_files")
        parts = {}
        for name, path in self.route_files.items():
            if not isinstance(name, str) or not name.strip():
                raise UserError(f"a teacher's name must be a non-empty string, got {name!r}", field="data.route_files")
            part = dataclasses.replace(self, path=Path(path), route_files=None)
            part.student_dir = self.student_dir
            part.connect(self.tokenizer, self.batch_size, self.max_seq_length)
            parts[name] = part
        return parts

    def _setup_files(self) -> None:
        """Every file's samples, train and val apart, in the order the files are given; each sample routed to its
        file's teacher. One prompt style for all (the one a finetuned checkpoint keeps)."""
        splits: dict[str, list] = {"train": [], "val": []}
        styles = {}
        for name, part in self.routed_parts().items():
            part.setup()
            self.stats.update({f"{name}_{k}": v for k, v in part.stats.items()})
            splits["train"].append((name, part.train_dataset))
            splits["val"].append((name, part.val_dataset))
            if part.prompt_style is not None:
                styles[name] = part.prompt_style
        kinds = {type(style).__name__ for style in styles.values()}
        if len(kinds) > 1:
            found = ", ".join(f"{name}: {type(style).__name__}" for name, style in styles.items())
            raise UserError(f"the files render with different prompt styles ({found}): pass --data.prompt_style",
                            field="data.route_files")  # fmt: skip
        self.prompt_style = next(iter(styles.values()), None)
        self.train_dataset = concatenate(splits["train"], self.route_files)
        self.val_dataset = concatenate(splits["val"], self.route_files)

    def _setup_pretokenized(self) -> None:
        if self.route_field is not None:
            raise UserError("pre-tokenized data carries no record fields: route the JSON it was made from",
                            path=self.path, field="route_field")  # fmt: skip
        limit = None
        if self.student_dir is not None:
            from litgpt_ext.checks import config_value

            limit = config_value(self.student_dir, "padded_vocab_size")
        check = {"tokenizer": self.tokenizer, "vocab_limit": limit}
        train = load_pretokenized(self.path / "train.pt", self.ignore_index, **check)
        if (self.path / "val.pt").is_file():
            val = load_pretokenized(self.path / "val.pt", self.ignore_index, **check)
        else:
            train_idx, val_idx = split_order(len(train), self.val_split_fraction, self.seed)
            train, val = train.subset(train_idx), train.subset(val_idx)
        for name, samples in (("train", train), ("val", val)):
            kept = samples.truncated(self.max_seq_length, self.ignore_index)
            self.stats[f"{name}_dropped"] = len(samples) - len(kept)
            setattr(self, f"{name}_dataset", kept)
        if self.prompt_style is None and has_prompt_style(self.path):
            self.prompt_style = load_prompt_style(self.path)

    def _split_files(self) -> tuple[Path, Path | None]:
        """(train, val) files of a directory: train.json or train.jsonl, and the val file beside it."""
        train = self.path / "train.json"
        train = train if train.is_file() else self.path / "train.jsonl"
        val = [self.path / f"val{suffix}" for suffix in (".json", ".jsonl") if (self.path / f"val{suffix}").is_file()]
        return train, (val[0] if val else None)

    def _style(self, kind: str) -> PromptStyle:
        """The style to render with: the one given (a litgpt name, ``chat_template``, or a style object, which is
        bound to the student's template when it is a chat template), else the student's own
        (:func:`litgpt_ext.prompts.choose_prompt_style`), else the data format's default (:func:`data_style`)."""
        style = self.prompt_style
        if self.student_dir is not None:
            return resolve_prompt_style(style, self.student_dir, fallback=lambda: data_style(kind))
        if style is None:
            return data_style(kind)
        if isinstance(style, str):
            if style == "chat_template":
                raise UserError(
                    "chat_template needs the student checkpoint (set by finetune commands)", field="prompt_style"
                )
            return style_from_name(style)
        return style

    def _setup_text(self, kind: str) -> None:
        if self.tokenizer is None:
            raise RuntimeError("SFTData.connect(tokenizer=...) must be called before setup()")
        train_file, val_file = self._split_files() if kind == "dir" else (self.path, None)
        file_format = data_format(train_file, self.format)
        if file_format in CHAT_FORMATS:
            return self._setup_chat(train_file, val_file, file_format)
        if kind == "dir":
            splits = {"train": load_examples(train_file)["train"]}
            if val_file is not None:
                splits["val"] = load_examples(val_file)["train"]
            qa = False
        else:
            splits = load_examples(self.path)
            qa = self.path.suffix == ".json" and is_qa_file(load_json(self.path))
        self.prompt_style = self._style("qa" if qa else "litgpt")
        files = {"train": train_file, "val": val_file or train_file}
        if "val" not in splits:
            splits["train"], splits["val"] = split_off(splits["train"], self.val_split_fraction, self.seed)
        self.train_dataset = self._encode(splits["train"], "train")
        self.val_dataset = self._encode(splits["val"], "val")
        if self.route_field is not None:
            if qa:
                raise UserError("a Q/A file's rows carry no other fields: route litgpt JSON or chat rows",
                                path=self.path, field="route_field")  # fmt: skip
            for split in ("train", "val"):
                found = read_routes(files[split], self.route_field)
                getattr(self, f"{split}_dataset").routes = [found[e.where] for e in splits[split]]

    def _setup_chat(self, train_file: Path, val_file: Path | None, kind: str) -> None:
        self.prompt_style = self._style("litgpt")
        renderer = renderer_for(self.prompt_style, self.tokenizer)
        splits = {"train": (train_file, load_conversations(train_file, kind))}
        if val_file is not None:
            splits["val"] = (val_file, load_conversations(val_file, data_format(val_file, self.format)))
        else:
            train, val = split_off(splits["train"][1], self.val_split_fraction, self.seed)
            splits = {"train": (train_file, train), "val": (train_file, val)}
        for split, (path, conversations) in splits.items():
            packed, counts = encode_conversations(
                renderer, conversations, path, self.max_seq_length, self.train_on, self.ignore_index
            )
            self.stats.update({f"{split}_{k}": v for k, v in counts.items()})
            samples = PackedSamples(packed["input_ids"], packed["labels"], packed["offsets"], packed["ids"])
            if self.route_field is not None:  # the kept conversations, by the key encode_conversations gives them
                found = read_routes(path, self.route_field)
                by_key = {c.id or c.where: found[c.where] for c in conversations}
                if len(by_key) != len(conversations):
                    raise UserError("two conversations share an id: routing needs each row's own",
                                    path=path, field="route_field")  # fmt: skip
                samples.routes = [by_key[key] for key in packed["ids"]]
            setattr(self, f"{split}_dataset", samples)

    def _encode(self, examples: list[Example], split: str) -> PackedSamples:
        cols = columns_of(examples)
        packed, stats = encode_packed(
            self.tokenizer,
            self.prompt_style,
            cols.instruction,
            cols.input,
            cols.output,
            max_seq_length=self.max_seq_length,
            mask_prompt=self.mask_prompt,
            ignore_index=self.ignore_index,
            ids=cols.id,
            source=self.path,
        )
        self.stats[f"{split}_prompt_truncated"] = stats["prompt_truncated"]
        self.stats[f"{split}_response_truncated"] = stats["response_truncated"]
        return PackedSamples(packed["input_ids"], packed["labels"], packed["offsets"], packed["ids"])

    # -- litgpt compatibility: plain dataloaders (the training loop builds its own, resumable ones) ------------
