"""``litgpt-ext evaluate_kd``: how close a student's distribution is to its teacher's on data it did not train on.

Teacher-forced on the data's answers (typically the teacher's own answers to held-out prompts), at every answer
position: forward KL(teacher || student), reverse KL(student || teacher), top-1 agreement (the two argmaxes agree),
and both models' cross-entropy on the answer tokens — token-weighted means over the whole data. It reuses
``finetune_kd``'s teacher sources and blockwise head, so it runs on any size of vocabulary and data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from litgpt.data import DataModule

from litgpt_ext.checks import at_least, check_checkpoint_dir, fit_to_context
from litgpt_ext.data.indexed import IndexedSamples
from litgpt_ext.data.sft import SFTData  # noqa: F401 (so that --data SFTData resolves by name)
from litgpt_ext.errors import UserError
from litgpt_ext.io import atomic_write_json
from litgpt_ext.kd.teachers import NamedTeacher
from litgpt_ext.model.heads import output_head
from litgpt_ext.training.objectives.divergences import generalized_jsd

METRICS = ("forward_kl", "reverse_kl", "top1_agreement", "teacher_ce", "student_ce")


def evaluate_kd(
    student: Path,
    teacher: Path | None = None,
    teacher_logprobs: Path | None = None,
    data: DataModule | Path | None = None,
    split: Literal["all", "train", "val"] = "all",
    temperature: float = 1.0,
    max_seq_length: int | None = None,
    precision: str | None = None,
    batch_size: int = 8,
    output: Path | None = None,
    teachers: list[NamedTeacher] | None = None,
) -> dict:
    """Measure a student against its teacher, teacher-forced on the answers of SFT-shaped data.

    Args:
        student: The student's litgpt checkpoint.
        teacher: The teacher's litgpt checkpoint (same vocabulary).
        teacher_logprobs: Instead of --teacher: a distill_logprobs store of this data (KLs then over its top-k + tail).
        data: A path or DataModule, as finetune_sft takes (e.g. held-out prompts with the teacher's answers).
        split: Which of the data's splits to score: ``all`` (train and val together: a held-out file is all
            evaluation), ``train`` or ``val``.
        temperature: The temperature of both distributions.
        max_seq_length: Cut samples as in training (default: the student's context).
        precision: Both models' precision (default: as generate_batch picks it).
        batch_size: Samples per forward.
        output: Where the metrics JSON goes (optional).
        teachers: Instead of --teacher: finetune_kd's ``--teachers`` list; each record is scored against the teacher
            its ``--data.route_field`` names (records of none are skipped), and the metrics are given per teacher
            (``per_teacher``) beside the totals.
    """
    import lightning as L
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.modules import datasets_of, ready_data, resolve_data
    from litgpt_ext.kd.teacher import TeacherChoice, make_teacher
    from litgpt_ext.precision import default_precision
    from litgpt_ext.training.objectives.kd import KDSettings
    from litgpt_ext.training.reference import load_frozen_model

    student = Path(student)
    check_checkpoint_dir(student)
    at_least("batch_size", batch_size, 1)
    if not temperature > 0:
        raise UserError(f"must be > 0, got {temperature}", field="temperature")
    settings = KDSettings(beta=0.0, temperature=temperature, kd_ratio=1.0, topk_tail=True)
    if teachers is not None:
        from litgpt_ext.api.prompt_scores import ServerArgs
        from litgpt_ext.kd.teachers import routed_teachers

        if teacher is not None or teacher_logprobs is not None:
            raise UserError("names every teacher itself: drop --teacher / --teacher_logprobs", field="teachers")
        sources = routed_teachers(student, teachers, settings, ServerArgs())
    else:
        sources = {None: make_teacher(student, TeacherChoice(teacher, teacher_logprobs), settings)}
    for name, source in sources.items():
        if getattr(source, "scheme", "topk") == "sample":
            raise UserError("holds tokens drawn from the teacher: they estimate forward KL's training signal, not "
                            "the reverse KL and top-1 this reports; evaluate against the teacher itself",
                            field="teacher_logprobs" if name is None else f"teachers[{name}]")  # fmt: skip
    max_seq_length = fit_to_context("max_seq_length", max_seq_length, student)
    module = ready_data(resolve_data(data), Tokenizer(student), student, batch_size, max_seq_length)
    splits = datasets_of(module)
    for source in sources.values():
        source.max_seq_length = max_seq_length
        source.wrap_datasets(*splits)  # the checks (a store: its fingerprints)
    if teachers is not None:
        from litgpt_ext.training.objectives.routed_kd import check_routes

        for name, dataset in zip(("train", "val"), splits, strict=True):
            check_routes(dataset, name, sorted(sources), refuse_unrouted=False)
    train, val = (IndexedSamples(d, name) for d, name in zip(splits, ("train", "val"), strict=True))
    chosen = {"all": [train, val], "train": [train], "val": [val]}[split]

    precision = precision or default_precision(student, training=False)
    fabric = L.Fabric(devices=1, precision=precision)
    model = load_frozen_model(fabric, student)
    for source in sources.values():
        source.setup(fabric, model, {})
    per = {name: {"sums": dict.fromkeys(METRICS, 0.0), "positions": 0, "samples": 0} for name in sources}
    for dataset in chosen:
        routes = {None: list(range(len(dataset)))}  # one teacher: every record; several: each to the one it names
        if teachers is not None:
            routes = {}
            for i in range(len(dataset)):
                if dataset.route(i) in sources:
                    routes.setdefault(dataset.route(i), []).append(i)
        for name, indices in routes.items():
            kept = per[name]
            for start in range(0, len(indices), batch_size):
                items = [dataset[i] for i in indices[start : start + batch_size]]
                batch = _collate(sources[name], items, max_seq_length)
                batch_sums, n = _score(fabric, model, sources[name], fabric.to_device(batch), settings)
                for key, value in batch_sums.items():
                    kept["sums"][key] += value
                kept["positions"] += n
                kept["samples"] += len(items)
    positions = sum(kept["positions"] for kept in per.values())
    samples = sum(kept["samples"] for kept in per.values())
    if not positions:
        raise UserError("no answer positions to score", field="data")
    result = {key: sum(kept["sums"][key] for kept in per.values()) / positions for key in METRICS}
    result |= {"samples": samples, "positions": positions, "temperature": temperature}
    if teachers is None:
        result["teacher"] = sources[None].describe()
    else:
        result["per_teacher"] = {
            name: {**{k: v / max(kept["positions"], 1) for k, v in kept["sums"].items()},
                   "samples": kept["samples"], "positions": kept["positions"], "teacher": sources[name].describe()}
            for name, kept in per.items()
        }  # fmt: skip
    shown = ", ".join(f"{k} {result[k]:.4f}" for k in METRICS)
    print(f"{samples:,} samples, {positions:,} answer positions: {shown}")
    for name, row in result.get("per_teacher", {}).items():
        print(f"  {name}: {row['samples']:,} samples, " + ", ".join(f"{k} {row[k]:.4f}" for k in METRICS))
    if output is not None:
        atomic_write_json(Path(output), result)
    return result


def _collate(source, items: list[dict], max_seq_length: int | None) -> dict:
    from litgpt_ext.data.batches import pad_collate

    return source.collate(items, pad_collate(items, 0, -100, max_seq_length))


@torch.no_grad()
def _score(fabric, model, source, batch: dict, kd) -> tuple[dict[str, float], int]:
    from litgpt_ext.model.blockwise_head import block_rows
    from litgpt_ext.model.heads import on_positions
    from litgpt_ext.training.objectives.divergences import topk_buckets

    index = batch["answer_index"]
    targets = batch["labels"][:, 1:].reshape(-1).index_select(0, index)
    input_ids = batch["input_ids"][:, :-1]
    teacher_block = source.blocks(batch, input_ids, index)
    with fabric.autocast():
        rows = on_positions(model, input_ids, index, lambda r: r)
    vocab = model.config.padded_vocab_size
    step, head = block_rows(vocab, rows.device), output_head(model)
    sums = dict.fromkeys(METRICS, 0.0)
    for start in range(0, rows.size(0), step):
        end = min(rows.size(0), start + step)
        logits = head(rows[start:end]).float()
        t_side = teacher_block(start, end)
        log_probs = F.log_softmax(logits, dim=-1)
        s = log_probs if kd.temperature == 1 else F.log_softmax(logits / kd.temperature, dim=-1)
        if t_side.logits is not None:
            t = F.log_softmax(t_side.logits / kd.temperature, dim=-1)
            teacher_top = t_side.logits.argmax(-1)
            teacher_ce = -F.log_softmax(t_side.logits, dim=-1).gather(1, targets[start:end, None]).squeeze(1)
        else:
            t = torch.cat([t_side.logps.float(), t_side.tail.float().unsqueeze(1)], dim=1)
            s = topk_buckets(s, t_side.ids)
            teacher_top, teacher_ce = t_side.ids[:, 0], -t_side.target_logps.float()
        sums["forward_kl"] += float(generalized_jsd(s, t, 0.0).sum())
        sums["reverse_kl"] += float(generalized_jsd(s, t, 1.0).sum())
        sums["top1_agreement"] += float((logits.argmax(-1) == teacher_top).sum())
        sums["teacher_ce"] += float(teacher_ce.sum())
        sums["student_ce"] += float(-log_probs.gather(1, targets[start:end, None]).sum())
    return sums, int(rows.size(0))


evaluate_kd.default_data = "SFTData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
