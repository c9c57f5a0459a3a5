"""Several teachers in one run (``finetune_kd --teachers``): the named list, each entry checked as the single
``--teacher*`` flags are, and the mixture — a weighted average of local teachers' distributions for the records
routed to it. The routing itself is :mod:`litgpt_ext.training.objectives.routed_kd`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.api.prompt_scores import ServerArgs
from litgpt_ext.errors import UserError
from litgpt_ext.kd.cross_teacher import check_cross, cross_teacher
from litgpt_ext.kd.teacher import LocalTeacher, Teacher, TeacherChoice, make_teacher
from litgpt_ext.training.objectives.cross_tokenizer import CrossSettings
from litgpt_ext.training.objectives.kd import TeacherBlock


@dataclass
class NamedTeacher:
    """One of ``finetune_kd --teachers``: the name records are routed to, and one source."""

    name: str
    teacher: Path | None = None
    teacher_logprobs: Path | None = None
    teacher_url: str | None = None
    teacher_model: str | None = None
    teacher_precision: str | None = None
    cross_tokenizer: Literal["uld", "align"] | None = None
    """A teacher of another tokenizer (a local checkpoint, or a ``distill_logprobs --cross_tokenizer`` store), as
    finetune_kd's --cross_tokenizer takes it."""
    cross_shared_weight: float | None = None
    mixture: dict[str, float] | None = None
    """Instead of a source: other entries' names (local checkpoints) and their weights; records routed here learn
    the weighted average of those teachers' distributions."""


def routed_teachers(student: Path, named: list[NamedTeacher], kd, server: ServerArgs) -> dict[str, Teacher]:
    """name -> :class:`Teacher` of ``--teachers``, each checked as a single ``--teacher*`` is (one source, the
    student's tokenizer, a store made for this data and loss); names unique and non-empty."""
    if not named:
        raise UserError("lists no teacher", field="teachers")
    teachers: dict[str, Teacher] = {}
    for entry in named:
        if entry.mixture is not None:
            continue  # after the teachers it mixes
        if not isinstance(entry.name, str) or not entry.name.strip():
            raise UserError(f"a teacher needs a non-empty name, got {entry.name!r}", field="teachers")
        if entry.name in teachers:
            raise UserError(f"two teachers are named {entry.name!r}", field="teachers")
        choice = TeacherChoice(entry.teacher, entry.teacher_logprobs, entry.teacher_url, entry.teacher_model,
                               entry.teacher_precision, server)  # fmt: skip
        try:
            if entry.cross_tokenizer is not None:
                cross = CrossSettings(entry.cross_tokenizer, entry.cross_shared_weight)
                check_cross(cross, kd, choice)
                teachers[entry.name] = cross_teacher(student, choice, kd, cross)
            else:
                teachers[entry.name] = make_teacher(student, choice, kd)
        except UserError as err:  # the same line, naming which teacher
            where = f"teachers[{entry.name}]" + (f".{err.field}" if err.field else "")
            raise UserError(err.reason, path=err.path, line=err.line, field=where) from None
    for entry in named:
        if entry.mixture is not None:
            teachers[entry.name] = _mixture(entry, teachers, kd)
    return teachers


def _mixture(entry: NamedTeacher, teachers: dict[str, Teacher], kd) -> MixtureTeacher:
    where = f"teachers[{entry.name}].mixture"
    if entry.teacher or entry.teacher_logprobs or entry.teacher_url:
        raise UserError("is a mixture of other teachers: give it no source of its own", field=where)
    if len(entry.mixture) < 2:
        raise UserError(f"mixes at least two teachers, got {sorted(entry.mixture)}", field=where)
    members = {}
    for name, weight in entry.mixture.items():
        member = teachers.get(name)
        if member is None:
            raise UserError(f"{name!r} is not one of the listed teachers ({', '.join(sorted(teachers))})", field=where)
        if hasattr(member, "cross"):
            raise UserError(f"averages distributions over one vocabulary: {name!r} has another tokenizer than the "
                            "student's", field=where)  # fmt: skip
        if not isinstance(member, LocalTeacher):
            raise UserError(f"averages whole distributions: {name!r} must be a local checkpoint (a store or a server "
                            "knows only its top-k)", field=where)  # fmt: skip
        if not weight > 0:
            raise UserError(f"weights must be > 0, got {weight} for {name!r}", field=where)
        members[name] = member
    total = sum(entry.mixture.values())
    return MixtureTeacher(members, {name: w / total for name, w in entry.mixture.items()}, kd.temperature)


class MixtureTeacher(Teacher):
    """``Σ_i w_i · softmax(logits_i / τ)`` of local teachers (weights normalised to 1), given to the loss as the
    logits ``τ · log`` of it, so that the loss's ``log_softmax(logits / τ)`` is the mixture itself. Its members are
    the same objects as their own routes' teachers: each loads once and runs its body once per batch part."""

    def __init__(self, members: dict[str, LocalTeacher], weights: dict[str, float], temperature: float) -> None:
        self.members, self.weights, self.temperature = members, weights, temperature

    def describe(self) -> dict:
        return {"kind": "mixture", "weights": self.weights,
                "members": {name: m.describe() for name, m in self.members.items()}}  # fmt: skip

    def setup(self, fabric, student: nn.Module, datasets: dict) -> None:
        for member in self.members.values():
            member.max_seq_length = member.max_seq_length or self.max_seq_length
            member.setup(fabric, student, datasets)

    def blocks(self, batch, input_ids, flat):
        members = {name: m.blocks(batch, input_ids, flat) for name, m in self.members.items()}
        tau = self.temperature

        @torch.no_grad()
        def block(start: int, end: int) -> TeacherBlock:
            parts = [F.log_softmax(members[name](start, end).logits / tau, dim=-1) + math.log(self.weights[name])
                     for name in members]  # fmt: skip
            return TeacherBlock(logits=tau * torch.logsumexp(torch.stack(parts), dim=0))

        return block


def objective_parts(teachers: dict[str, Teacher], kd, max_seq_length: int | None) -> dict:
    """name -> the single-teacher objective each route trains with (another tokenizer's: its own)."""
    from litgpt_ext.training.objectives.cross_tokenizer import CrossTokenizerKD
    from litgpt_ext.training.objectives.kd import KDObjective

    return {
        name: CrossTokenizerKD(t, kd, t.cross, 0, max_seq_length)
        if hasattr(t, "cross")
        else KDObjective(t, kd, 0, max_seq_length)
        for name, t in teachers.items()
    }
