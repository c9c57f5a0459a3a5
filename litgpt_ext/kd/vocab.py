"""Distillation compares two distributions position by position, so the teacher's token ``i`` must be the student's
token ``i``. Checked at start from the tokenizers themselves: every token of the student's vocabulary must have the
same id in the teacher's (a teacher with more tokens, or a larger padded vocabulary, is fine)."""

from __future__ import annotations

from pathlib import Path

from litgpt_ext.errors import UserError


def vocabulary(checkpoint_dir: Path) -> dict[str, int]:
    """``token text -> id`` of a checkpoint's tokenizer (HF ``tokenizer.json`` or SentencePiece pieces)."""
    from litgpt.tokenizer import Tokenizer

    tok = Tokenizer(Path(checkpoint_dir))
    if tok.backend == "huggingface":
        return dict(tok.processor.get_vocab(with_added_tokens=True))
    if tok.backend == "sentencepiece":
        return {tok.processor.id_to_piece(i): i for i in range(tok.processor.get_piece_size())}
    raise UserError(f"cannot read the vocabulary of a {tok.backend} tokenizer", path=checkpoint_dir)


def check_same_vocabulary(student_dir: Path, teacher_dir: Path, shown: int = 5) -> int:
    """The student's vocabulary size, after checking that the teacher maps every one of its tokens to the same id;
    otherwise one line naming how many differ and the first few."""
    student, teacher = vocabulary(student_dir), vocabulary(teacher_dir)
    differ = sorted((i, t) for t, i in student.items() if teacher.get(t) != i)
    if differ:
        first = ", ".join(
            f"{t!r} is {i} in the student, {teacher[t] if t in teacher else 'absent'} in the teacher"
            for i, t in differ[:shown]
        )
        raise UserError(
            f"the teacher's tokenizer differs from the student's on {len(differ):,} of {len(student):,} tokens "
            f"({first}); pass --cross_tokenizer uld|align to distil across tokenizers, or use SFT on the teacher's text",
            path=teacher_dir,
            field="teacher",
        )
    return len(student)
