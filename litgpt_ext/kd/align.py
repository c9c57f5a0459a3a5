"""Which positions of two tokenizations of the same text compare: cross-tokenizer distillation's alignment.

The student and the teacher each tokenize the same answer text. Every token stands for some bytes of it
(:class:`~litgpt_ext.kd.token_bytes.ByteVocab`; byte-level BPE and SentencePiece with byte fallback alike), so each
token ends at a byte offset. Walking both sequences, a **group** closes wherever the two sides end a token at the
same offset: where the tokenizers split alike a group is one token on each side (its distributions compare
directly); where one side's token covers several of the other's, the group holds them all (its probability is the
product along it, see :mod:`litgpt_ext.training.objectives.cross_tokenizer`). Byte offsets refine character offsets:
a character that one side spells in byte-fallback pieces ends a group only where both sides end it.

Special tokens (EOS, ChatML's ``<|im_end|>``) stand for no text: each is a group of its own, paired in order with
the other side's special token, so an answer's end-of-text on one side aligns with the other's by role.

Two texts differ legitimately in two ways only: a SentencePiece tokenizer's dummy prefix (a leading space on one
side) and a cut (``--train.max_seq_length`` truncated one side's answer: the common prefix aligns, the rest
carries no distillation term). Anything else (a normalizer that drops or changes characters) is
:class:`AlignmentError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class AlignmentError(ValueError):
    """The two sides' answers are not the same text (the message says where they part)."""


@dataclass(frozen=True)
class Group:
    """One aligned span: the student's and the teacher's token positions (indices into each side's answer)."""

    student: tuple[int, ...]
    teacher: tuple[int, ...]

    @property
    def exact(self) -> bool:
        """One token on each side: the tokenizers split this span alike."""
        return len(self.student) == 1 and len(self.teacher) == 1


def _segments(pieces: Sequence[bytes | None]) -> list[tuple[list[int], int | None]]:
    """``(text token positions, the special token after them or None)`` runs of one side's answer."""
    runs, current = [], []
    for i, piece in enumerate(pieces):
        if piece is None:
            runs.append((current, i))
            current = []
        else:
            current.append(i)
    runs.append((current, None))
    return runs


def _ends(pieces: Sequence[bytes], positions: list[int], skip: int) -> list[int]:
    """Each token's end offset in its run's text, the first ``skip`` bytes (a dummy-prefix space) not counted."""
    ends, total = [], -skip
    for i in positions:
        total += len(pieces[i])
        ends.append(max(total, 0))
    return ends


def _where_they_part(a: bytes, b: bytes) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    show = lambda s: s[max(0, at - 12) : at + 12].decode("utf-8", errors="replace")  # noqa: E731
    return f"at byte {at}: student {show(a)!r}, teacher {show(b)!r}"


def _align_text(
    s_pieces: Sequence[bytes], s_pos: list[int], t_pieces: Sequence[bytes], t_pos: list[int], last: bool
) -> tuple[list[Group], str | None]:
    """Groups of one run of text tokens on each side, and which side was cut short (only the last run may be)."""
    s_text = b"".join(s_pieces[i] for i in s_pos)
    t_text = b"".join(t_pieces[i] for i in t_pos)
    # a SentencePiece dummy prefix (a leading space on one side only) is the only extra text allowed
    s_skip = int(s_text[:1] == b" " and t_text[:1] != b" " and bool(t_text))
    t_skip = int(t_text[:1] == b" " and s_text[:1] != b" " and bool(s_text))
    s_body, t_body = s_text[s_skip:], t_text[t_skip:]
    shorter = min(len(s_body), len(t_body))
    if s_body[:shorter] != t_body[:shorter] or (not last and len(s_body) != len(t_body)):
        raise AlignmentError("the answers are not the same text " + _where_they_part(s_body, t_body))
    s_ends, t_ends = _ends(s_pieces, s_pos, s_skip), _ends(t_pieces, t_pos, t_skip)
    groups, s, t, s_start, t_start = [], 0, 0, 0, 0
    while s < len(s_ends) and t < len(t_ends):
        if s_ends[s] < t_ends[t]:
            s += 1
        elif s_ends[s] > t_ends[t]:
            t += 1
        else:
            s, t = s + 1, t + 1
            groups.append(Group(tuple(s_pos[s_start:s]), tuple(t_pos[t_start:t])))
            s_start, t_start = s, t
    cut = None if len(s_body) == len(t_body) else "student" if len(s_body) < len(t_body) else "teacher"
    return groups, cut


def align(student: Sequence[bytes | None], teacher: Sequence[bytes | None]) -> list[Group]:
    """The groups of two tokenizations of one answer, each token given as its bytes (None: a special token).

    Raises :class:`AlignmentError` when the texts differ beyond a dummy-prefix space and a cut end, or when the
    special tokens do not pair up (another number of them before the cut)."""
    s_runs, t_runs = _segments(student), _segments(teacher)
    groups: list[Group] = []
    for n, ((s_pos, s_special), (t_pos, t_special)) in enumerate(zip(s_runs, t_runs)):
        last = n == min(len(s_runs), len(t_runs)) - 1
        found, cut = _align_text(student, s_pos, teacher, t_pos, last)
        groups += found
        if cut is not None:
            if (s_special if cut == "student" else t_special) is not None:  # text missing before a special token
                raise AlignmentError(f"the {cut}'s answer lacks text the other has before a special token")
            return groups
        if s_special is None or t_special is None:
            if (s_special is None) != (t_special is None) and not last:
                raise AlignmentError("the answers have different numbers of special tokens")
            return groups
        groups.append(Group((s_special,), (t_special,)))
    return groups
