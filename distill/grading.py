"""``litgpt-ext distill_grading_pairs``: preference pairs from graded programming labs.

Course staff keep, per lab, the problem statement, a rubric and the graders' sheet. Every (lab, criterion, student)
becomes a multiple-choice prompt — the criterion, the student's code and the rubric's options as ``K. title:
description`` (plus the problem statement with ``--verbose 1``) — whose chosen answer is the option the grader marked,
``{"answer": "K. title"}``, and whose rejected answers are the other options: one pair per wrong option.

Layout of ``--parent_dir`` (one folder per lab)::

    lab_name/
      ps.txt | modified_ps.txt | problemStatement.txt   the problem statement (the first that exists)
      rubrics.json          [{"title", "description", "Ratings": [{"title", "description"}, ...]}, ...]
      rubric_ratings.csv    the graders' sheet (below)
      submissions/<student id>[@...]/...                 the student's code files

``rubric_ratings.csv``: one block of columns per criterion, one column per rating in ``rubrics.json`` order. Row 1
holds each criterion's title in the first column of its block; row 3 the rating titles; rows 2 and 4-6 are
ignored; from row 7 each row is a student: column 1 the student id (the part before ``@``), and ``1`` in the column
of the rating given.

Problems with the *structure* (unreadable or malformed files, a block whose width or rating titles disagree with
``rubrics.json``) are located errors (``file:row: ...``, exit 2). Problems with single entries are quarantined with
their location and reason, and counted in the summary: a missing problem statement (``--verbose 1``), a student in the
sheet without a submission (or with two), no rating or two ratings marked, a criterion missing from
``rubrics.json``, code that is not UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from distill.pairs import sibling
from distill.quarantine import Quarantine
from litgpt_ext.data.records import read_text
from litgpt_ext.errors import UserError, require
from litgpt_ext.io import atomic_write_json, atomic_write_jsonl

STATEMENT_FILES = ("ps.txt", "modified_ps.txt", "problemStatement.txt")
TITLE_ROW, RATINGS_ROW, FIRST_STUDENT_ROW = 1, 3, 7


@dataclass
class Criterion:
    title: str
    description: str
    ratings: list[tuple[str, str]]
    """(title, description) of each option, in rubric order."""


@dataclass
class Block:
    """A criterion's columns in the sheet (0-based, ``start`` inclusive, ``stop`` exclusive)."""

    title: str
    start: int
    stop: int


@dataclass
class Lab:
    name: str
    path: Path
    statement: str | None
    criteria: dict[str, Criterion]
    blocks: list[Block]
    students: list[tuple[int, str, list[str]]]
    """(sheet row, student id, the row's cells)."""
    submissions: dict[str, list[Path]] = field(default_factory=dict)
    """student id -> submission folders (more than one is an irregularity)."""


def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def read_rubrics(path: Path) -> dict[str, Criterion]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"invalid JSON: {err.msg}", path=path, line=err.lineno) from None
    if not isinstance(data, list) or not data:
        raise UserError("expected a non-empty list of criteria", path=path)
    criteria: dict[str, Criterion] = {}
    for i, item in enumerate(data, start=1):
        where = f"criterion {i}"
        if not isinstance(item, dict):
            raise UserError("expected an object", path=path, line=where)
        for key, kind in (("title", str), ("Ratings", list)):
            if not isinstance(item.get(key), kind) or not item.get(key):
                raise UserError(f"missing or not a non-empty {kind.__name__}", path=path, line=where, field=key)
        ratings = []
        for j, rating in enumerate(item["Ratings"], start=1):
            if not isinstance(rating, dict) or not isinstance(rating.get("title"), str) or not rating["title"].strip():
                raise UserError("needs a non-empty title", path=path, line=f"{where}, rating {j}", field="Ratings")
            ratings.append((rating["title"].strip(), str(rating.get("description") or "").strip()))
        title = item["title"].strip()
        if _norm(title) in criteria:
            raise UserError(f"criterion {title!r} appears twice", path=path, line=where, field="title")
        criteria[_norm(title)] = Criterion(title, str(item.get("description") or "").strip(), ratings)
    return criteria


def read_sheet(path: Path) -> tuple[list[list[str]], int]:
    text = read_text(path).lstrip("\ufeff")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if len(rows) < RATINGS_ROW:
        raise UserError(
            f"expected the criterion titles in row {TITLE_ROW} and rating titles in row {RATINGS_ROW}", path
        )
    width = max(len(r) for r in rows)
    return [r + [""] * (width - len(r)) for r in rows], width


def sheet_blocks(path: Path, rows: list[list[str]], width: int) -> list[Block]:
    titles = rows[TITLE_ROW - 1]
    starts = [c for c in range(1, width) if titles[c].strip()]
    if not starts:
        raise UserError("no criterion titles (expected from column 2 on)", path=path, line=TITLE_ROW)
    ends = starts[1:] + [max(c for c in range(width) if rows[RATINGS_ROW - 1][c].strip() or titles[c].strip()) + 1]
    return [Block(titles[s].strip(), s, e) for s, e in zip(starts, ends, strict=True)]


def check_block(path: Path, rows: list[list[str]], block: Block, criterion: Criterion) -> None:
    """The sheet's block must have one column per rubric rating, titled as the rubric titles them."""
    if block.stop - block.start != len(criterion.ratings):
        raise UserError(
            f"criterion {block.title!r} spans {block.stop - block.start} column(s) from column {block.start + 1}, "
            f"but rubrics.json lists {len(criterion.ratings)} rating(s)",
            path=path,
            line=TITLE_ROW,
        )
    for offset, (rating, _) in enumerate(criterion.ratings):
        cell = rows[RATINGS_ROW - 1][block.start + offset]
        if _norm(cell) != _norm(rating):
            raise UserError(
                f"column {block.start + offset + 1}: rating title {cell.strip()!r} does not match rubrics.json's "
                f"{rating!r} (criterion {block.title!r})",
                path=path,
                line=RATINGS_ROW,
            )


def read_lab(path: Path) -> Lab:
    statement = next((path / f for f in STATEMENT_FILES if (path / f).is_file()), None)
    for required in ("rubrics.json", "rubric_ratings.csv"):
        if not (path / required).is_file():
            raise UserError("missing", path=path / required)
    criteria = read_rubrics(path / "rubrics.json")
    sheet = path / "rubric_ratings.csv"
    rows, width = read_sheet(sheet)
    blocks = sheet_blocks(sheet, rows, width)
    for block in blocks:
        if _norm(block.title) in criteria:
            check_block(sheet, rows, block, criteria[_norm(block.title)])
    students = []
    for n, row in enumerate(rows[FIRST_STUDENT_ROW - 1 :], start=FIRST_STUDENT_ROW):
        if any(cell.strip() for cell in row):
            students.append((n, row[0].strip().split("@")[0].strip(), row))
    lab = Lab(path.name, path, read_text(statement).strip() if statement else None, criteria, blocks, students)
    if (path / "submissions").is_dir():
        for folder in sorted(p for p in (path / "submissions").iterdir() if p.is_dir()):
            lab.submissions.setdefault(folder.name.split("@")[0].strip(), []).append(folder)
    return lab


def read_code(folder: Path) -> str:
    """Every file of a submission, sorted by path, each under a ``### relative/path`` header."""
    parts = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise UnicodeDecodeError(err.encoding, err.object, err.start, err.end, rel) from None
        parts.append(f"### {rel}\n```\n{text.rstrip()}\n```")
    return "\n\n".join(parts)


def option_label(k: int, title: str) -> str:
    return f"{k}. {title}"


def build_prompt(statement: str | None, criterion: Criterion, code: str) -> str:
    options = "\n".join(
        f"{option_label(k, t)}: {d}" if d else f"{option_label(k, t)}" for k, (t, d) in enumerate(criterion.ratings, 1)
    )
    head = f"Problem statement:\n{statement}\n\n" if statement is not None else ""
    about = f"\n{criterion.description}" if criterion.description else ""
    return (
        f"{head}Grading criterion: {criterion.title}{about}\n\nStudent code:\n{code or '(no files)'}\n\n"
        f"Options:\n{options}\n\n"
        'Which option applies to this code? Answer with JSON: {"answer": "<number>. <option title>"}'
    )


def answer(k: int, title: str) -> str:
    return json.dumps({"answer": option_label(k, title)}, ensure_ascii=False)


def lab_pairs(lab: Lab, verbose: int, system: str | None, out: Quarantine) -> dict[str, list[list[dict]]]:
    """Pairs of one lab, grouped per criterion title and per student (sorted by student id) for the split."""
    sheet = f"{lab.name}/rubric_ratings.csv"
    if verbose and lab.statement is None:
        out.add("missing_statement", where=f"{lab.name}/", expected=list(STATEMENT_FILES))
        return {}
    code_of: dict[str, str | None] = {}
    for row_no, student, _ in lab.students:
        where = f"{sheet}:{row_no}"
        folders = lab.submissions.get(student, [])
        if not student:
            out.add("no_student_id", where=where)
        elif not folders:
            out.add("no_submission", where=where, student=student)
        elif len(folders) > 1:
            out.add("two_submissions", where=where, student=student, folders=[f.name for f in folders])
        else:
            try:
                code_of[student] = read_code(folders[0])
            except UnicodeDecodeError as err:
                out.add("code_not_utf8", where=where, student=student, file=f"{folders[0].name}/{err.reason}")
    groups: dict[str, list[list[dict]]] = {}
    for block in lab.blocks:
        criterion = lab.criteria.get(_norm(block.title))
        if criterion is None:
            out.add("criterion_not_in_rubrics", where=f"{sheet}:{TITLE_ROW}", criterion=block.title)
            continue
        per_student = []
        for row_no, student, row in sorted(lab.students, key=lambda s: s[1]):
            if student not in code_of:
                continue
            marked = [k for k in range(len(criterion.ratings)) if row[block.start + k].strip() in ("1", "1.0")]
            where = f"{sheet}:{row_no}"
            if len(marked) != 1:
                reason = "no_rating_marked" if not marked else "several_ratings_marked"
                out.add(reason, where=where, student=student, criterion=criterion.title)
                continue
            given = marked[0] + 1
            prompt = build_prompt(lab.statement if verbose else None, criterion, code_of[student])
            pairs = []
            for wrong, (title, _) in enumerate(criterion.ratings, start=1):
                if wrong == given:
                    continue
                row_out = {"id": f"{lab.name}/{criterion.title}/{student}/{wrong}"}
                if system is not None:
                    row_out["system"] = system
                row_out.update(
                    prompt=prompt,
                    chosen=answer(given, criterion.ratings[given - 1][0]),
                    rejected=answer(wrong, title),
                    lab=lab.name,
                    criterion=criterion.title,
                    student_id=student,
                    chosen_option=given,
                    rejected_option=wrong,
                )
                pairs.append(row_out)
            if pairs:
                per_student.append(pairs)
        groups[criterion.title] = per_student
    return groups


def distill_grading_pairs(
    parent_dir: Path | None = None,
    train_dataset_path: Path = Path("grading_pairs/train.jsonl"),
    test_dataset_path: Path = Path("grading_pairs/test.jsonl"),
    eval_lab_names: list[str] | None = None,
    train_split: float = 0.7,
    verbose: int = 1,
    system_prompt_path: Path | None = None,
) -> None:
    """Build chosen/rejected pairs from graded labs (see the module docstring for the folder layout).

    Args:
        parent_dir: Folder with one sub-folder per lab (problem statement, rubrics.json, rubric_ratings.csv,
            submissions/).
        train_dataset_path: Output JSONL of training pairs (summary.json and quarantine.jsonl are written beside it,
            as ``<name>.summary.json`` / ``<name>.quarantine.jsonl``).
        test_dataset_path: Output JSONL of test pairs.
        eval_lab_names: Labs that go wholly to the test file (held-out labs).
        train_split: For the other labs, the fraction of students (sorted by id, per lab and criterion) whose pairs
            go to the training file; the rest go to the test file.
        verbose: 1 shows the problem statement in the prompt (a lab without one is quarantined), 0 leaves it out.
        system_prompt_path: A text file whose content becomes each pair's ``system`` prompt.
    """
    parent = Path(require(parent_dir, "parent_dir"))
    if not parent.is_dir():
        raise UserError("not a directory", path=parent, field="parent_dir")
    if not 0.0 <= train_split <= 1.0:
        raise UserError(f"must be between 0 and 1, got {train_split}", field="train_split")
    if verbose not in (0, 1):
        raise UserError(f"must be 0 or 1, got {verbose}", field="verbose")
    system = read_text(Path(system_prompt_path)).strip() if system_prompt_path is not None else None
    lab_dirs = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not lab_dirs:
        raise UserError("no lab folders", path=parent, field="parent_dir")
    held_out = set(eval_lab_names or [])
    unknown = held_out - {p.name for p in lab_dirs}
    if unknown:
        raise UserError(f"no such lab(s): {', '.join(sorted(unknown))}", path=parent, field="eval_lab_names")

    labs = [read_lab(p) for p in lab_dirs]  # every structural error surfaces before anything is written
    out = Quarantine()
    train, test = [], []
    for lab in labs:
        for students in lab_pairs(lab, verbose, system, out).values():
            cut = math.floor(len(students) * train_split) if lab.name not in held_out else 0
            for pairs in students[:cut]:
                train.extend(pairs)
            for pairs in students[cut:]:
                test.extend(pairs)

    train_path, test_path = Path(train_dataset_path), Path(test_dataset_path)
    for path, rows in ((train_path, train), (test_path, test)):
        atomic_write_jsonl(path, rows)
    quarantine = sibling(train_path, ".quarantine.jsonl")
    out.write(quarantine)
    summary = {
        "labs": len(labs),
        "held_out_labs": sorted(held_out),
        "train_pairs": len(train),
        "test_pairs": len(test),
        "train_split": train_split,
        "verbose": verbose,
        "quarantined": out.counts(),
    }
    atomic_write_json(sibling(train_path, ".summary.json"), summary)
    print(f"{len(labs)} lab(s) -> {len(train):,} train / {len(test):,} test pairs ({train_path}, {test_path})")
    out.report(quarantine, "quarantined")
