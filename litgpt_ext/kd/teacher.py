"""Where a distillation teacher's distribution comes from. One interface (:class:`Teacher`), two sources:

* ``LocalTeacher`` — a frozen litgpt model in the same process (``--teacher DIR``): in eval mode, no gradients, in
  the run's precision or ``--teacher_precision``. Per batch its body runs once; its LM head runs only at the answer
  positions and only block by block, inside the student's loss (:mod:`litgpt_ext.training.objectives.kd`), so no
  ``positions × vocab`` teacher tensor exists;
* ``StoredTeacher`` — the top-k written by ``distill_logprobs`` (``--teacher_logprobs DIR``): checked against the
  run's data and tokenizer at start, sliced per sample in the CPU collate.

A teacher's vocabulary may be padded larger than the student's (its extra rows are dropped) or smaller (missing ids
get no mass); the tokens themselves must agree (:func:`litgpt_ext.kd.vocab.check_same_vocabulary`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from litgpt_ext.api.prompt_scores import ServerArgs
from litgpt_ext.checks import check_checkpoint_dir
from litgpt_ext.data.indexed import IndexedSamples
from litgpt_ext.errors import UserError
from litgpt_ext.kd.store import SPLITS
from litgpt_ext.model.heads import on_positions, output_head, unwrap
from litgpt_ext.training.objectives.kd import KDSettings, TeacherBlock


def fit_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """The teacher's logits over the student's ``vocab`` rows: extra padded rows dropped, missing ones at -inf."""
    if logits.size(-1) >= vocab:
        return logits[..., :vocab]
    pad = logits.new_full((*logits.shape[:-1], vocab - logits.size(-1)), float("-inf"))
    return torch.cat([logits, pad], dim=-1)


def topk_blocks(rows: dict[str, torch.Tensor]) -> Callable[[int, int], TeacherBlock]:
    """``block(start, end)`` over top-k rows (``t_ids``, ``t_logps``, ``t_tail``, ``t_target``) at a batch's answer
    positions, as a stored or server teacher gives them."""

    def block(start: int, end: int) -> TeacherBlock:
        return TeacherBlock(
            ids=rows["t_ids"][start:end],
            logps=rows["t_logps"][start:end],
            tail=rows["t_tail"][start:end],
            target_logps=rows["t_target"][start:end],
        )

    return block


@dataclass(frozen=True)
class TeacherChoice:
    """Where the teacher's distribution comes from, as ``finetune_kd`` / ``evaluate_kd`` name it: exactly one of a
    checkpoint (``--teacher``), a store (``--teacher_logprobs``) or a server (``--teacher_url``)."""

    checkpoint: Path | None = None
    store: Path | None = None
    url: str | None = None
    model: str | None = None
    """The model name the server serves (``--teacher_model``)."""
    precision: str | None = None
    """A local teacher's own precision (``--teacher_precision``; default: the run's compute dtype)."""
    server: ServerArgs = field(default_factory=ServerArgs)

    def require_one(self) -> None:
        if sum(x is not None for x in (self.checkpoint, self.store, self.url)) != 1:
            raise UserError(
                "pass one of --teacher DIR (a litgpt checkpoint), --teacher_logprobs DIR (distill_logprobs or "
                "distill_convert --logprobs) or --teacher_url URL (an OpenAI-compatible server)",
                field="teacher",
            )


class Teacher:
    """The teacher's side of every batch (see the module docstring)."""

    store_temperature: float = 1.0
    remote: bool = False
    """Its answers come from another process, which may go away (a server)."""
    max_seq_length: int | None = None
    """The run's length cut, set by the objective that uses the teacher (a store checks that its data was cut the
    same way)."""

    def describe(self) -> dict:
        raise NotImplementedError

    def connect_data(self, data) -> None:
        """The run's DataModule, once set up (a teacher of another tokenizer renders the records again)."""

    def setup(self, fabric, student: nn.Module, datasets: dict) -> None:
        """Once the student exists, before the first step."""

    def wrap_datasets(self, train, val):
        return train, val

    def collate(self, samples: list[dict], batch: dict) -> dict:
        return batch

    def blocks(self, batch: dict, input_ids: torch.Tensor, flat: torch.Tensor) -> Callable[[int, int], TeacherBlock]:
        """``block(start, end)`` -> the teacher's side of answer positions ``start:end`` of this batch."""
        raise NotImplementedError


class LocalTeacher(Teacher):
    def __init__(self, checkpoint_dir: Path, precision: str | None = None) -> None:
        self.checkpoint_dir, self.precision = Path(checkpoint_dir), precision
        self.model: nn.Module | None = None
        self.fabric = None
        self.vocab = 0

    def describe(self) -> dict:
        return {"kind": "local", "checkpoint": str(self.checkpoint_dir), "precision": self.precision}

    def setup(self, fabric, student: nn.Module, datasets: dict) -> None:
        from litgpt_ext.training.reference import load_frozen_model

        if self.model is not None:  # one teacher serving several routes (a mixture's member) loads once
            return
        self.fabric = fabric
        from litgpt_ext.precision import compute_dtype

        dtype = compute_dtype(self.precision) if self.precision is not None else None
        self.model = load_frozen_model(fabric, self.checkpoint_dir, dtype)
        gpt = unwrap(student)
        self.vocab = gpt.config.padded_vocab_size
        # the rope cache for the run's length (grown in hidden_rows if on-policy samples run longer)
        self.model.max_seq_length = min(self.model.config.block_size, self.max_seq_length or gpt.config.block_size)
        n = sum(p.numel() for p in self.model.parameters())
        fabric.print(f"Teacher: {self.checkpoint_dir} ({n / 1e6:.1f}M parameters, frozen, eval mode)")

    def autocast(self):
        """The teacher's compute context: the run's autocast, or none when it has its own precision."""
        device = next(self.model.parameters()).device.type
        return self.fabric.autocast() if self.precision is None else torch.autocast(device, enabled=False)

    @torch.no_grad()
    def hidden_rows(self, input_ids: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """The teacher's final hidden states at the answer positions (its LM head does not run here)."""
        if input_ids.size(1) > self.model.max_seq_length:
            self.model.max_seq_length = input_ids.size(1)
        with self.autocast():
            return on_positions(self.model, input_ids, flat, lambda rows: rows)

    def blocks(self, batch, input_ids, flat):
        rows = self.hidden_rows(input_ids, flat)
        head = output_head(self.model)

        @torch.no_grad()
        def block(start: int, end: int) -> TeacherBlock:
            return TeacherBlock(logits=fit_vocab(head(rows[start:end]).float(), self.vocab))

        return block


def batch_split(samples: list[dict]) -> str:
    """The split (``train`` / ``val``) every sample of a batch comes from."""
    splits = {s["kd_split"] for s in samples}
    if len(splits) != 1:
        raise RuntimeError("a batch mixes splits")
    return splits.pop()


def check_store_data(manifest: dict, directory: Path, max_seq_length: int | None, train, val) -> None:
    """The run's datasets are the ones a store was made from (their tokens, cut as training cuts them)."""
    from litgpt_ext.kd.store import dataset_fingerprint

    for split, dataset in (("train", train), ("val", val)):
        expected = manifest["data"][split]
        if dataset_fingerprint(dataset, max_seq_length) != expected["fingerprint"]:
            raise UserError(
                f"was made from other {split} data ({expected['samples']:,} samples, another tokenization or "
                f"--max_seq_length {expected['max_seq_length']}); this run has {len(dataset):,} {split} samples "
                f"at --train.max_seq_length {max_seq_length}",
                path=directory / "manifest.json",
                field="teacher_logprobs",
            )


def sampled_blocks(rows: dict[str, torch.Tensor]) -> Callable[[int, int], TeacherBlock]:
    """``block(start, end)`` over a sampled store's rows (``t_ids``, ``t_p``, ``t_entropy``, ``t_top``,
    ``t_target``) at a batch's answer positions."""

    def block(start: int, end: int) -> TeacherBlock:
        return TeacherBlock(ids=rows["t_ids"][start:end], p_hat=rows["t_p"][start:end],
                            entropy=rows["t_entropy"][start:end], top=rows["t_top"][start:end],
                            target_logps=rows["t_target"][start:end])  # fmt: skip

    return block


class StoredTeacher(Teacher):
    def __init__(self, directory: Path, manifest: dict) -> None:
        from litgpt_ext.kd.sampled import Sampled
        from litgpt_ext.kd.store import TopK, scheme_of, split_file

        self.directory, self.manifest = Path(directory), manifest
        self.store_temperature = float(manifest["temperature"])  # checked against --temperature by make_teacher
        self.scheme = scheme_of(manifest)
        if self.scheme == "sample":
            samples = int(manifest["samples"])
            self.stores = {split: Sampled(split_file(directory, split, "sample"), samples) for split in SPLITS}
        else:
            self.stores = {split: TopK(split_file(directory, split)) for split in SPLITS}

    def describe(self) -> dict:
        keep = ("teacher", "k", "sampling", "samples", "proposal_temperature", "temperature", "dtype", "data")
        return {"kind": "stored", "directory": str(self.directory), **{k: self.manifest.get(k) for k in keep}}

    def wrap_datasets(self, train, val):
        check_store_data(self.manifest, self.directory, self.max_seq_length, train, val)
        return IndexedSamples(train, "train"), IndexedSamples(val, "val")

    def collate(self, samples: list[dict], batch: dict) -> dict:
        store = self.stores[batch_split(samples)]
        rows = store.gather([s["kd_index"] for s in samples])
        if len(rows["t_ids"]) != len(batch["answer_index"]):
            raise UserError(
                "the stored log-probs do not line up with this data's answer positions (another --max_seq_length?)",
                path=store.path,
                field="teacher_logprobs",
            )
        return {**batch, **rows}

    def blocks(self, batch, input_ids, flat):
        return sampled_blocks(batch) if self.scheme == "sample" else topk_blocks(batch)


SERVER_TAIL_FLOOR = 1e-6
"""Least mass left outside a server teacher's top-k (its log-probs are rounded and can sum to 1): keeps the
reverse KL finite. A top-k that covers the whole vocabulary has no tail at all."""


class ServerTeacher(Teacher):
    """A teacher behind an OpenAI-compatible server (``--teacher_url``): each batch's sequences are scored there
    (:class:`litgpt_ext.api.prompt_scores.PromptScorer`) and its top-k enters the loss as stored top-k does."""

    remote = True

    def __init__(self, url: str, model: str, args) -> None:
        self.url, self.model_name, self.args = url, model, args
        self.scorer = None
        self.vocab = 0

    def describe(self) -> dict:
        return {"kind": "server", "url": self.url, "model": self.model_name, "top_k": self.args.top_k}

    def setup(self, fabric, student: nn.Module, datasets: dict) -> None:
        from litgpt_ext.api.prompt_scores import PromptScorer

        self.vocab = unwrap(student).config.padded_vocab_size
        self.scorer = PromptScorer(self.url, self.model_name, self.args)
        fabric.print(f"Teacher: {self.model_name} at {self.url} (top-{self.args.top_k} per position)")

    def scores(self, batch: dict) -> dict[str, torch.Tensor]:
        """``t_ids`` / ``t_logps`` / ``t_tail`` / ``t_target`` at the batch's answer positions, in their order."""
        ids, lengths = batch["input_ids"].cpu(), batch["lengths"].cpu()
        sequences = [ids[b, : lengths[b]].tolist() for b in range(ids.size(0))]
        scored = self.scorer.score(sequences)
        k = max((len(r) for s in scored for r in s.ids), default=1)
        width = ids.size(1) - 1
        t_ids = torch.full((ids.size(0), width, k), -1, dtype=torch.long)
        t_logps = torch.full((ids.size(0), width, k), float("-inf"))
        t_target = torch.zeros((ids.size(0), width))
        for b, s in enumerate(scored):
            if s.ids:
                n = len(s.ids)
                t_ids[b, :n] = torch.tensor([r + [-1] * (k - len(r)) for r in s.ids])
                t_logps[b, :n] = torch.tensor([r + [float("-inf")] * (k - len(r)) for r in s.logps])
                t_target[b, :n] = torch.tensor(s.target)
        if int(t_ids.max()) >= self.vocab:
            raise UserError(
                f"the teacher server returned token id {int(t_ids.max())}, outside the student's vocabulary "
                f"({self.vocab}): it must serve a model of the student's tokenizer family",
                field="teacher_url",
            )
        flat = batch["answer_index"].cpu()
        t_ids, t_logps, t_target = (x.reshape(-1, *x.shape[2:])[flat] for x in (t_ids, t_logps, t_target))
        kept = t_logps.exp().sum(-1)
        tail = torch.log((1 - kept).clamp(min=SERVER_TAIL_FLOOR))
        device = batch["input_ids"].device
        return {"t_ids": t_ids.to(device), "t_logps": t_logps.to(device), "t_tail": tail.to(device),
                "t_target": t_target.to(device)}  # fmt: skip

    def blocks(self, batch, input_ids, flat):
        return topk_blocks(self.scores(batch))


def check_sampled_options(kd: KDSettings, manifest: Path) -> None:
    """A sampled store estimates forward KL at temperature 1 and nothing else: the options that need the
    teacher's probability at tokens never drawn, or at another temperature, are refused."""
    if not kd.topk_tail:
        raise UserError("renormalises over a top-k; this store holds tokens drawn from the teacher (its estimate "
                        "already covers the whole distribution): drop --topk_tail false", path=manifest,
                        field="topk_tail")  # fmt: skip
    if not kd.is_forward_kl:
        raise UserError(f"a sampled store estimates forward KL only (--divergence gjsd --beta 0); got --divergence "
                        f"{kd.divergence} --beta {kd.beta:g}: use a top-k store or a --teacher for it",
                        path=manifest, field="divergence")  # fmt: skip
    if kd.temperature != 1:
        raise UserError(f"a sampled store's draws are at temperature 1: pass --temperature 1, got "
                        f"{kd.temperature:g}", path=manifest, field="temperature")  # fmt: skip


def make_teacher(checkpoint_dir: Path, choice: TeacherChoice, kd: KDSettings | None = None) -> Teacher:
    """The :class:`Teacher` of the flags, checked before any data is read: exactly one source; a teacher checkpoint
    whose tokenizer agrees with the student's; a store made with this tokenizer, at the loss's temperature."""
    from litgpt_ext.kd.store import load_store, scheme_of, tokenizer_fingerprint
    from litgpt_ext.kd.vocab import check_same_vocabulary

    choice.require_one()
    if choice.url is not None:
        if choice.model is None:
            raise UserError("--teacher_url needs --teacher_model (the name the server serves)", field="teacher_model")
        if kd is not None and kd.topk_tail and kd.temperature != 1:
            raise UserError(
                "a server teacher's log-probs are at temperature 1: pass --temperature 1, or --topk_tail false to "
                "renormalise over its top-k",
                field="temperature",
            )
        return ServerTeacher(choice.url, choice.model, choice.server)
    if choice.checkpoint is not None:
        check_checkpoint_dir(Path(choice.checkpoint))
        check_same_vocabulary(checkpoint_dir, Path(choice.checkpoint))
        return LocalTeacher(Path(choice.checkpoint), choice.precision)
    directory = Path(choice.store)
    manifest = load_store(directory)
    if manifest.get("cross_tokenizer"):
        raise UserError("holds a teacher's log-probs in another tokenizer (distill_logprobs --cross_tokenizer): pass "
                        "--cross_tokenizer uld", path=directory / "manifest.json", field="teacher_logprobs")  # fmt: skip
    if scheme_of(manifest) == "sample" and kd is not None:
        check_sampled_options(kd, directory / "manifest.json")
    stored = float(manifest["temperature"])
    if kd is not None and kd.topk_tail and abs(stored - kd.temperature) > 1e-9:
        raise UserError(
            f"stores log-probs at temperature {stored:g}, but --temperature is {kd.temperature:g}: the tail mass "
            f"cannot be rescaled (rerun distill_logprobs --temperature {kd.temperature:g}, or pass --topk_tail false "
            "to renormalise over the top-k)",
            path=directory / "manifest.json",
            field="teacher_logprobs",
        )
    if manifest["tokenizer"] != tokenizer_fingerprint(checkpoint_dir):
        raise UserError(
            "was made with another tokenizer than the student's (rerun distill_logprobs for this student)",
            path=directory / "manifest.json",
            field="teacher_logprobs",
        )
    return StoredTeacher(directory, manifest)
