"""A local teacher with its own tokenizer (``finetune_kd --teacher DIR --cross_tokenizer uld|align``).

The teacher reads the same records as the student, rendered with its own prompt style (its chat template or
``prompt_style.yaml``; the data's default style when it has none) and tokenized with its own tokenizer: a second
``SFTData`` on the same files, so sample ``i`` is the same record on both sides. Every sample's two answers are
aligned once, before the first step (:mod:`litgpt_ext.kd.align`): a record whose texts cannot be aligned stops the
run in one line naming it. Per batch the collate lays the alignment out as flat index tensors, and :meth:`blocks`
runs the teacher's body once, then its head over its answer positions (to get the probabilities of the tokens
inside multi-token groups) and, block by block inside the student's loss, at each group's last position.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from litgpt_ext.checks import within
from litgpt_ext.data.batches import pad_collate
from litgpt_ext.errors import UserError
from litgpt_ext.kd.align import AlignmentError, Group, align
from litgpt_ext.kd.teacher import IndexedSamples, LocalTeacher, Teacher, TeacherChoice, batch_split, check_store_data
from litgpt_ext.kd.token_bytes import ByteVocab, shared_tokens
from litgpt_ext.model.blockwise_head import block_rows
from litgpt_ext.model.heads import output_head, unwrap
from litgpt_ext.training.objectives.cross_tokenizer import CrossSettings, SharedVocab, TeacherGroups, span_scale
from litgpt_ext.training.objectives.divergences import KDSettings


def answer_tokens(sample: dict, max_seq_length: int | None, ignore_index: int = -100) -> list[int]:
    """The supervised tokens of a sample, in order, cut as the collate cuts it."""
    labels = sample["labels"][:max_seq_length] if max_seq_length else sample["labels"]
    kept = labels[1:]
    return kept[kept != ignore_index].tolist()


def sample_name(dataset, i: int) -> str:
    """``sample 3`` or, where the data keeps record ids, ``sample 3 (id "q-17")``."""
    base = getattr(dataset, "dataset", dataset)
    ids, index = getattr(base, "ids", None), getattr(base, "index", None)
    if ids:
        k = int(index[i]) if index is not None else i
        return f"sample {i} (id {ids[k]!r})"
    return f"sample {i}"


class _TeacherSpans:
    """``spans(g0, g1)`` -> the teacher's log-probs ``(G, V_t)`` at groups ``g0:g1``'s last positions (at the
    temperature) and the log of its groups' earlier-token products; ``teacher_ce`` its NLL on its answer tokens."""

    def __init__(self, rows, head, last_index, scale, temperature, teacher_ce) -> None:
        self.rows, self.head, self.last_index, self.scale = rows, head, last_index, scale
        self.temperature, self.teacher_ce = temperature, teacher_ce

    @torch.no_grad()
    def __call__(self, g0: int, g1: int) -> TeacherGroups:
        logits = self.head(self.rows[self.last_index[g0:g1]]).float()
        return TeacherGroups(self.scale[g0:g1], logps=F.log_softmax(logits / self.temperature, dim=-1))


def teacher_rendering(data, teacher_dir: Path) -> tuple:
    """The (train, val) datasets of ``data``'s records rendered for the teacher: its own prompt style (chat template
    or ``prompt_style.yaml``; else the data's default) and its tokenizer, the same files, split and cut."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.modules import datasets_of, ready_data
    from litgpt_ext.data.sft import SFTData

    parts = list(data.routed_parts().values()) if isinstance(data, SFTData) and data.route_files else [data]
    if not all(isinstance(part, SFTData) and part.source_kind() != "pretokenized" for part in parts):
        raise UserError(
            "--cross_tokenizer renders each record for both tokenizers: pass text data (litgpt JSON, Q/A or chat "
            "rows; --data PATH or --data SFTData), not pre-tokenized .pt files or another DataModule",
            field="data",
        )
    own = dataclasses.replace(data, prompt_style=None)  # the teacher's own template, from its checkpoint
    ready_data(own, Tokenizer(teacher_dir), teacher_dir, data.batch_size, data.max_seq_length)
    return datasets_of(own)


class Alignment:
    """Both vocabularies as bytes, the tokens they share, and every sample's groups (made at start: a record that
    cannot be aligned stops the run in one line naming it)."""

    def __init__(self, student_dir: Path, teacher_tokenizer_dir: Path, mode: str) -> None:
        self.student_bytes, self.teacher_bytes = ByteVocab(student_dir), ByteVocab(teacher_tokenizer_dir)
        self.pairs = shared_tokens(self.student_bytes, self.teacher_bytes)
        if mode == "align" and not self.pairs:
            raise UserError("the two vocabularies share no token: use --cross_tokenizer uld", field="cross_tokenizer")
        self.groups: dict[str, list[list[Group]]] = {}
        self.stats: dict[str, int] = {}

    def align_split(self, split: str, student, teacher_tokens, max_seq_length, path: Path) -> None:
        """Groups of every sample of ``student`` against ``teacher_tokens(i)``, the teacher's answer tokens."""
        self.groups[split] = []
        for i in range(len(student)):
            s_ids = answer_tokens(student[i], max_seq_length)
            try:
                found = align(_pieces(self.student_bytes, s_ids), _pieces(self.teacher_bytes, teacher_tokens(i)))
            except AlignmentError as error:
                raise UserError(f"{split} {sample_name(student, i)}: the two tokenizers' answers cannot be aligned: "
                                f"{error}", path=path, field="cross_tokenizer") from None  # fmt: skip
            self.groups[split].append(found)
            self.stats["groups"] = self.stats.get("groups", 0) + len(found)
            self.stats["exact_groups"] = self.stats.get("exact_groups", 0) + sum(g.exact for g in found)

    def report(self) -> None:
        total, exact = self.stats.get("groups", 0), self.stats.get("exact_groups", 0)
        print(f"Cross-tokenizer alignment: {total:,} spans, {exact / max(total, 1):.1%} one token on each side; "
              f"{len(self.pairs):,} tokens shared")  # fmt: skip

    def tensors(self, split: str, samples: list[dict], s_counts: list[int], t_counts: list[int]) -> dict:
        return alignment_tensors([self.groups[split][s["kd_index"]] for s in samples], s_counts, t_counts)


class CrossTokenizerTeacher(LocalTeacher):
    def __init__(
        self, student_dir: Path, checkpoint_dir: Path, precision: str | None, kd: KDSettings, cross: CrossSettings
    ) -> None:
        super().__init__(checkpoint_dir, precision)
        self.kd, self.cross = kd, cross
        self.alignment = Alignment(student_dir, checkpoint_dir, cross.mode)
        self.data = None
        self.datasets: dict[str, object] = {}
        self.shared: SharedVocab | None = None

    def describe(self) -> dict:
        return {**super().describe(), "kind": "local, another tokenizer", "cross_tokenizer": self.cross.mode,
                "shared_weight": self.cross.shared_weight, "shared_tokens": len(self.alignment.pairs),
                **self.alignment.stats}  # fmt: skip

    def connect_data(self, data) -> None:
        self.data = data

    def wrap_datasets(self, train, val):
        """The teacher's own rendering of the same records, and every sample's alignment (checked here)."""
        teacher_train, teacher_val = teacher_rendering(self.data, self.checkpoint_dir)
        self.max_seq_length = self.data.max_seq_length
        for split, student, teacher in (("train", train, teacher_train), ("val", val, teacher_val)):
            if len(student) != len(teacher):
                raise UserError(
                    f"the teacher's rendering of the {split} records keeps {len(teacher):,} samples, the student's "
                    f"{len(student):,} (a record fits one context and not the other: lower --train.max_seq_length "
                    "or shorten it)",
                    path=self.data.path,
                    field="data",
                )
            self.datasets[split] = teacher
            tokens = lambda i, teacher=teacher: answer_tokens(teacher[i], self.max_seq_length)  # noqa: E731
            self.alignment.align_split(split, student, tokens, self.max_seq_length, self.data.path)
        self.alignment.report()
        return IndexedSamples(train, "train"), IndexedSamples(val, "val")

    def setup(self, fabric, student, datasets) -> None:
        super().setup(fabric, student, datasets)
        teacher_vocab = self.model.config.padded_vocab_size
        vocab = unwrap(student).config.padded_vocab_size
        self.shared = SharedVocab(self.alignment.pairs, teacher_vocab, vocab).to(fabric.device)

    def collate(self, samples: list[dict], batch: dict) -> dict:
        """The teacher's batch (``x_input_ids``, ``x_labels``, ``x_answer_index``) and the alignment as flat index
        tensors over both sides' answer positions (row-major, as ``answer_index`` orders them)."""
        split = batch_split(samples)
        teacher = pad_collate([self.datasets[split][s["kd_index"]] for s in samples], 0, -100, self.max_seq_length)
        s_counts = (batch["labels"][:, 1:] != -100).sum(1).tolist()
        t_counts = (teacher["labels"][:, 1:] != -100).sum(1).tolist()
        return {**batch, "x_input_ids": teacher["input_ids"], "x_labels": teacher["labels"],
                "x_answer_index": teacher["answer_index"],
                **self.alignment.tensors(split, samples, s_counts, t_counts)}  # fmt: skip

    @torch.no_grad()
    def blocks(self, batch, input_ids, flat):
        t_flat = batch["x_answer_index"]
        targets = batch["x_labels"][:, 1:].reshape(-1).index_select(0, t_flat)
        rows = self.hidden_rows(batch["x_input_ids"][:, :-1], t_flat)
        vocab = self.model.config.padded_vocab_size
        return teacher_spans(rows, output_head(self.model), targets, batch, self.kd.temperature, vocab)


def alignment_tensors(groups: list[list[Group]], s_counts: list[int], t_counts: list[int]) -> dict[str, torch.Tensor]:
    """A batch's groups (per sample) as flat tensors over both sides' answer positions, row-major as
    ``answer_index`` orders them: each position's group (``x_s_group``, ``x_t_group``; -1: none), whether it closes
    it (``x_s_last``, ``x_t_last``), each group's last teacher position (``x_t_last_index``), the count."""
    s_group = torch.full((sum(s_counts),), -1, dtype=torch.long)
    t_group = torch.full((sum(t_counts),), -1, dtype=torch.long)
    s_last = torch.zeros(sum(s_counts), dtype=torch.bool)
    t_last = torch.zeros(sum(t_counts), dtype=torch.bool)
    t_last_index: list[int] = []
    gid = s_off = t_off = 0
    for sample_groups, s_n, t_n in zip(groups, s_counts, t_counts, strict=True):
        for group in sample_groups:
            s_group[[s_off + p for p in group.student]] = gid
            t_group[[t_off + p for p in group.teacher]] = gid
            s_last[s_off + group.student[-1]] = True
            t_last[t_off + group.teacher[-1]] = True
            t_last_index.append(t_off + group.teacher[-1])
            gid += 1
        s_off, t_off = s_off + s_n, t_off + t_n
    return {"x_s_group": s_group, "x_s_last": s_last, "x_t_group": t_group, "x_t_last": t_last,
            "x_t_last_index": torch.tensor(t_last_index, dtype=torch.long), "x_groups": torch.tensor(gid)}  # fmt: skip


@torch.no_grad()
def teacher_spans(
    rows: torch.Tensor, head, targets: torch.Tensor, batch: dict, temperature: float, vocab: int
) -> _TeacherSpans:
    """The teacher's side of a batch from its final hidden ``rows`` at its answer positions: its head runs over
    them in blocks for the probabilities of its actual tokens (the merges' products, and its NLL); the full
    distributions at the groups' last positions are left to :class:`_TeacherSpans`, block by block."""
    step = block_rows(vocab, rows.device)
    label_logps, nll = [], []
    for start in range(0, rows.size(0), step):
        logits = head(rows[start : start + step]).float()
        picked = targets[start : start + step].unsqueeze(1)
        at_one = F.log_softmax(logits, dim=-1).gather(1, picked).squeeze(1)
        nll.append(-at_one)
        at_tau = at_one if temperature == 1 else F.log_softmax(logits / temperature, dim=-1).gather(1, picked)
        label_logps.append(at_tau.reshape(-1))
    label_logps = torch.cat(label_logps) if label_logps else rows.new_zeros(0)
    scale = span_scale(label_logps, batch["x_t_group"], batch["x_t_last"], int(batch["x_groups"]))
    teacher_ce = torch.cat(nll).mean() if nll else rows.new_zeros(())
    return _TeacherSpans(rows, head, batch["x_t_last_index"], scale, temperature, teacher_ce)


def _pieces(vocab: ByteVocab, ids: list[int]) -> list[bytes | None]:
    """Each token's bytes (None: a special token, or an id past the tokenizer's vocabulary)."""
    table = vocab.bytes
    return [table[i] if i < len(table) else None for i in ids]


TEACHER_TOKENIZER = "teacher_tokenizer"
"""Where a cross-tokenizer store keeps the teacher's tokenizer files: its stored answer tokens are aligned with the
student's at load, so the store needs no teacher checkpoint."""


class StoredCrossTeacher(Teacher):
    """A ``distill_logprobs --cross_tokenizer`` store (``--teacher_logprobs DIR --cross_tokenizer uld``): the
    teacher's top-k in its own vocabulary and its answer tokens at each of its answer positions, aligned with the
    student's answers at start; ULD compares each group's top-k (and tail) with the student's sorted distribution."""

    def __init__(self, student_dir: Path, directory: Path, manifest: dict, cross: CrossSettings):
        from litgpt_ext.kd.store import TopK, split_file

        self.directory, self.manifest, self.cross = Path(directory), manifest, cross
        self.stores = {split: TopK(split_file(directory, split)) for split in ("train", "val")}
        self.alignment = Alignment(student_dir, self.directory / TEACHER_TOKENIZER, cross.mode)
        self.shared: SharedVocab | None = None

    def describe(self) -> dict:
        keep = ("teacher", "k", "temperature", "dtype", "data")
        return {"kind": "stored, another tokenizer", "directory": str(self.directory), "cross_tokenizer": self.cross.mode,
                **{k: self.manifest.get(k) for k in keep}, **self.alignment.stats}  # fmt: skip

    def wrap_datasets(self, train, val):
        check_store_data(self.manifest, self.directory, self.max_seq_length, train, val)
        for split, student in (("train", train), ("val", val)):
            store = self.stores[split]
            tokens = lambda i, store=store: store.tokens[store.rows(i)].tolist()  # noqa: E731
            self.alignment.align_split(split, student, tokens, self.max_seq_length, self.directory)
        self.alignment.report()
        return IndexedSamples(train, "train"), IndexedSamples(val, "val")

    def setup(self, fabric, student, datasets) -> None:
        vocab = unwrap(student).config.padded_vocab_size
        self.shared = SharedVocab(self.alignment.pairs, int(self.manifest["teacher_vocab"]), vocab).to(fabric.device)

    def collate(self, samples: list[dict], batch: dict) -> dict:
        split = batch_split(samples)
        store = self.stores[split]
        indices = [s["kd_index"] for s in samples]
        rows = store.gather(indices)
        s_counts = (batch["labels"][:, 1:] != -100).sum(1).tolist()
        t_counts = [store.rows(i).stop - store.rows(i).start for i in indices]
        return {**batch, **rows, **self.alignment.tensors(split, samples, s_counts, t_counts)}

    def blocks(self, batch, input_ids, flat):
        last = batch["x_t_last_index"]
        scale = span_scale(batch["t_target"].float(), batch["x_t_group"], batch["x_t_last"], int(batch["x_groups"]))
        ids, top, tail = batch["t_ids"][last], batch["t_logps"][last], batch["t_tail"][last]

        def block(g0: int, g1: int) -> TeacherGroups:
            return TeacherGroups(scale[g0:g1], ids=ids[g0:g1], top=top[g0:g1], tail=tail[g0:g1])

        block.teacher_ce = -batch["t_target"].float().mean()
        return block


def check_cross(cross: CrossSettings, kd: KDSettings, choice: TeacherChoice, policy=None) -> None:
    """``--cross_tokenizer``'s flags: a local teacher or a cross-tokenizer store, off-policy, and a divergence only
    where ``align`` uses one."""
    from litgpt_ext.checks import check_checkpoint_dir

    if choice.url is not None or (choice.checkpoint is None) == (choice.store is None):
        raise UserError(
            "needs a local --teacher DIR or a --teacher_logprobs DIR made by distill_logprobs --cross_tokenizer (a "
            "server's log-probs come without the text offsets to align them)",
            field="cross_tokenizer",
        )
    if choice.checkpoint is not None:
        check_checkpoint_dir(Path(choice.checkpoint))
    elif cross.mode != "uld":
        raise UserError("a top-k store knows k of the teacher's shared-token probabilities, not all: use "
                        "--cross_tokenizer uld with --teacher_logprobs, or align with a local --teacher",
                        field="cross_tokenizer")  # fmt: skip
    if policy is not None and policy.active:
        raise UserError("trains on the data's answers only: drop --lmbda / --seq_kd", field="cross_tokenizer")
    if not kd.topk_tail:
        raise UserError("applies to a top-k teacher of the student's tokenizer; --cross_tokenizer compares whole "
                        "distributions (a store's tail is always kept): drop --topk_tail false",
                        field="topk_tail")  # fmt: skip
    if cross.mode == "uld" and (kd.divergence != "gjsd" or kd.beta != 0):
        raise UserError("compares sorted probabilities: --divergence and --beta apply to --cross_tokenizer align",
                        field="cross_tokenizer")  # fmt: skip
    if cross.shared_weight is not None:
        if cross.mode != "align":
            raise UserError("weighs --cross_tokenizer align's shared tokens only", field="cross_shared_weight")
        within("cross_shared_weight", cross.shared_weight, 0.0, 1.0)


def cross_teacher(student_dir: Path, choice: TeacherChoice, kd: KDSettings, cross: CrossSettings) -> Teacher:
    """The teacher of another tokenizer: a local checkpoint, or a ``distill_logprobs --cross_tokenizer`` store made
    for this student's tokenizer."""
    from litgpt_ext.kd.store import load_store, tokenizer_fingerprint

    if choice.checkpoint is not None:
        return CrossTokenizerTeacher(student_dir, Path(choice.checkpoint), choice.precision, kd, cross)
    directory = Path(choice.store)
    manifest = load_store(directory)
    if not manifest.get("cross_tokenizer"):
        raise UserError("holds the log-probs of a teacher of the student's own tokenizer: drop --cross_tokenizer",
                        path=directory / "manifest.json", field="teacher_logprobs")  # fmt: skip
    if manifest["tokenizer"] != tokenizer_fingerprint(student_dir):
        raise UserError("was made for another student's tokenizer (rerun distill_logprobs --student for this one)",
                        path=directory / "manifest.json", field="teacher_logprobs")  # fmt: skip
    if kd.temperature != 1:
        raise UserError("a cross-tokenizer store is at temperature 1: pass --temperature 1", field="temperature")
    return StoredCrossTeacher(student_dir, directory, manifest, cross)
