"""``litgpt-ext distill_convert``: teacher responses -> litgpt JSON training data for the student.

Each record's cached response (found by record id) is parsed into one or more outputs, paired with the *student*
prompt (short, rendered from the record), deduplicated and split into train/val by record id (all examples of a
record land in the same split, so validation never sees a training document). Every row that is dropped goes to
``quarantine.jsonl`` with its reason; nothing disappears silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from distill.quarantine import Quarantine
from distill.records import read_records
from distill.teacher.cache import ResponseCache
from litgpt_ext.checks import at_least, within
from litgpt_ext.data.split import in_val
from litgpt_ext.errors import UserError, require
from litgpt_ext.evaluate.metrics import split_items
from litgpt_ext.io import atomic_write_json, atomic_write_jsonl
from litgpt_ext.templates import template_or_text


def parse_output(content: str, parser: str) -> list[str]:
    """``raw``: the whole answer; ``lines``: one output per non-empty line (bullets / numbering removed);
    ``json:FIELD``: that field of a JSON answer (a list gives one output per item)."""
    if parser == "raw":
        return [content.strip()]
    if parser == "lines":
        return split_items(content)
    if parser.startswith("json:"):
        data = json.loads(content)
        value = data.get(parser[5:]) if isinstance(data, dict) else None
        if value is None:
            raise ValueError(f"field {parser[5:]!r} not in the JSON answer")
        values = value if isinstance(value, list) else [value]
        return [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values]
    raise UserError(f"unknown parser {parser!r}: use raw, lines or json:FIELD", field="parser")


def normalize(text: str) -> str:
    """Case- and spacing-insensitive form of a text, for duplicate and equality checks."""
    return " ".join(text.casefold().split())


class StudentPrompt:
    """The student's prompt for a record: litgpt's ``instruction`` (+ optional ``input``) rendered from templates.

    Every command that writes student training data renders it here, so the prompt of an SFT example and of a
    preference pair is exactly what the student sees."""

    def __init__(self, instruction: str, input: str | None = None) -> None:
        self.instruction = template_or_text(instruction, "instruction")
        self.input = template_or_text(input, "input")

    def render(self, record, records_path: Path) -> tuple[str, str]:
        where = (Path(records_path), record.line)
        return self.instruction.render(record.fields, where), (
            self.input.render(record.fields, where) if self.input else ""
        )


class TeacherResponses:
    """The teacher's cached answers (a ``distill_query`` output), looked up by record id."""

    def __init__(self, path: Path) -> None:
        if not Path(path).is_file():
            raise UserError("file not found", path=path, field="responses")
        cache = ResponseCache(Path(path))
        self.results = cache.results
        self.model = next((r.get("model") for r in cache.results.values() if r.get("model")), None)
        self.key_of = cache.key_of

    def get(self, record_id: str) -> dict | None:
        return self.results.get(self.key_of.get(record_id, ""))


def as_messages(row: dict, system: str | None, with_answer: bool = True) -> dict:
    """A litgpt row (``instruction``, ``input``, ``output``) as an OpenAI chat row."""
    user = row.get("instruction") or row.get("prompt") or ""
    if row.get("input"):
        user = f"{user}\n\n{row['input']}"
    turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if with_answer:
        turns.append({"role": "assistant", "content": row["output"]})
    return {"id": row["id"], "messages": turns}


def write_splits(out_dir: Path, train: list, val: list, prompts: list, format: str, system: str | None) -> None:
    """train/val (+ prompts.jsonl) in ``format``; the other format's split files are removed so no reader (SFTData,
    distill_tokenize) meets two versions of the data."""
    if format == "messages":
        for split, rows in (("train", train), ("val", val)):
            atomic_write_jsonl(out_dir / f"{split}.jsonl", [as_messages(r, system) for r in rows])
            (out_dir / f"{split}.json").unlink(missing_ok=True)
        atomic_write_jsonl(out_dir / "prompts.jsonl", [as_messages(p, system, with_answer=False) for p in prompts])
        return
    atomic_write_json(out_dir / "train.json", train)
    atomic_write_json(out_dir / "val.json", val)
    for split in ("train", "val"):
        (out_dir / f"{split}.jsonl").unlink(missing_ok=True)
    atomic_write_jsonl(out_dir / "prompts.jsonl", prompts)


def check_parser(parser: str) -> None:
    if not (parser in ("raw", "lines") or parser.startswith("json:")):
        raise UserError(f"unknown parser {parser!r}: use raw, lines or json:FIELD", field="parser")


def distill_convert(
    records: Path | None = None,
    responses: Path | None = None,
    out_dir: Path | None = None,
    instruction: str = "prompts/student_search_queries.md",
    input: str | None = None,
    parser: str = "raw",
    dedupe: bool = True,
    min_chars: int = 1,
    val_fraction: float = 0.05,
    seed: int = 42,
    logprobs: bool = False,
    tokenizer: Path | None = None,
    prompt_style: str | None = None,
    min_mapped: float = 0.99,
    format: Literal["alpaca", "messages"] = "alpaca",
) -> None:
    """Turn teacher responses into litgpt JSON (``instruction``, ``input``, ``output``) train/val files, or chat
    files in OpenAI's ``messages`` form.

    Args:
        records: The records JSONL that was queried (ids link records to responses).
        responses: The responses JSONL written by distill_query.
        out_dir: Where train.json, val.json, prompts.jsonl (every record's student prompt, for sampling the student
            with generate_batch), quarantine.jsonl and summary.json are written.
        instruction: Student prompt template (file or text) rendered from each record into ``instruction``.
        input: Optional template (file or text) for litgpt's ``input`` field.
        parser: ``raw`` (whole answer), ``lines`` (one example per line) or ``json:FIELD``.
        dedupe: Drop repeated (instruction, input, output) triples (case and spacing ignored).
        min_chars: Outputs shorter than this are dropped (quarantined as too_short).
        val_fraction: Fraction of records (not examples) that go to val.json.
        seed: Seed of the train/val assignment.
        logprobs: Also write, from answers queried with ``distill_query --logprobs K``, the student's pre-tokenized
            ``train.pt`` / ``val.pt`` (the answer as the teacher's own tokens) and their top-k store in
            ``OUT/teacher_logprobs`` for ``finetune_kd --data OUT --teacher_logprobs OUT/teacher_logprobs``.
            Needs ``--parser raw`` and ``--tokenizer``.
        tokenizer: The student checkpoint (with --logprobs): its vocabulary, mapped to the teacher's tokens by
            their bytes, and its prompt style.
        prompt_style: With --logprobs: the prompt style of train.pt (default: the student's, else alpaca).
        min_mapped: With --logprobs: examples whose share of answer tokens and alternatives found in the student's
            vocabulary is lower are quarantined (``low_mapped``) with their share.
        format: ``alpaca`` writes litgpt JSON (train.json / val.json); ``messages`` writes train.jsonl / val.jsonl
            rows ``{"id", "messages": [system?, user, assistant]}`` (the student prompt, with its input after a
            blank line, is the user turn, the teacher's answer the assistant turn, the instruction template's
            ``system:`` front matter the system turn), the form TRL, axolotl and OpenAI fine-tuning read, and
            prompts.jsonl in the same form without the answer. Files of the other format in out_dir are removed.
    """
    records, responses, out_dir = (
        require(records, "records"),
        require(responses, "responses"),
        require(out_dir, "out_dir"),
    )
    check_parser(parser)
    if format not in ("alpaca", "messages"):
        raise UserError(f"use alpaca or messages, got {format!r}", field="format")
    within("val_fraction", val_fraction, 0.0, 1.0)
    within("min_mapped", min_mapped, 0.0, 1.0)
    kd_data = None
    if logprobs:
        if parser != "raw":
            raise UserError(
                "--logprobs true needs --parser raw (the log-probs belong to the whole answer)", field="parser"
            )
        from distill.convert_logprobs import ApiLogprobData

        kd_data = ApiLogprobData(Path(require(tokenizer, "tokenizer")), prompt_style, min_mapped)
    at_least("min_chars", min_chars, 0)
    records_list = read_records(Path(records))
    teacher = TeacherResponses(Path(responses))
    student = StudentPrompt(instruction, input)

    train, val, seen, prompts = [], [], {}, []
    dropped = Quarantine()

    def drop(rid: str, reason: str, **extra) -> None:
        dropped.add(reason, id=rid, **extra)

    for rec in records_list:
        prompt, extra_input = student.render(rec, Path(records))
        prompts.append({"id": rec.id, "prompt": prompt, **({"input": extra_input} if extra_input else {})})
        result = teacher.get(rec.id)
        if result is None:
            drop(rec.id, "no_response")
            continue
        if result["status"] != "ok":
            drop(rec.id, f"teacher_{result.get('reason')}", detail=result.get("detail"))
            continue
        split = val if in_val(rec.id, seed, val_fraction) else train
        for c_index, choice in enumerate(result["choices"]):
            try:
                outputs = parse_output(choice.get("content") or "", parser)
            except (ValueError, AttributeError) as err:
                drop(rec.id, "parse_error", choice=c_index, detail=str(err), content=choice.get("content"))
                continue
            for output in outputs:
                if len(output) < min_chars:
                    drop(rec.id, "too_short", choice=c_index, output=output)
                    continue
                triple = (normalize(prompt), normalize(extra_input), normalize(output))
                if dedupe and triple in seen:
                    drop(rec.id, "duplicate", choice=c_index, output=output, duplicate_of=seen[triple])
                    continue
                if kd_data is not None:
                    name = "val" if split is val else "train"
                    problem = kd_data.add(name, rec.id, prompt, extra_input, choice.get("logprobs"))
                    if problem is not None:
                        drop(rec.id, problem[0], choice=c_index, **problem[1])
                        continue
                seen[triple] = rec.id
                split.append({"id": rec.id, "instruction": prompt, "input": extra_input, "output": output})

    if kd_data is not None:
        kd_data.check_family(Path(responses))
    if not train and not val:
        counts = ", ".join(f"{reason} {count}" for reason, count in dropped.counts().items()) or "no records"
        raise UserError(f"no examples: every record was dropped ({counts})", path=responses, field="responses")
    out_dir = Path(out_dir)
    manifest = kd_data.write(out_dir, out_dir / "teacher_logprobs", teacher.model, Path(responses)) if kd_data else None
    write_splits(out_dir, train, val, prompts, format, student.instruction.system)
    dropped.write(out_dir / "quarantine.jsonl")
    summary = {
        "records": len(records_list),
        "train_examples": len(train),
        "val_examples": len(val),
        "dropped": dropped.counts(),
        "parser": parser,
        "format": format,
    }
    if manifest is not None:
        summary["logprobs"] = {
            "store": str(out_dir / "teacher_logprobs"),
            "k": manifest["k"],
            "mapped_share": manifest["mapped_share"],
            "positions": manifest["positions"],
        }
    atomic_write_json(out_dir / "summary.json", summary)
    print(
        f"{len(records_list):,} records -> {len(train):,} train / {len(val):,} val examples in {out_dir}"
        + (" (OpenAI messages: train.jsonl / val.jsonl)" if format == "messages" else "")
    )
    if manifest is not None:
        print(
            f"teacher log-probs: {kd_data.share():.2%} of answer tokens and alternatives map to the student's "
            f"vocabulary; top-{manifest['k']} of {manifest['positions']['train']:,} train / "
            f"{manifest['positions']['val']:,} val answer positions -> {out_dir / 'teacher_logprobs'} "
            f"(finetune_kd --data {out_dir} --teacher_logprobs {out_dir / 'teacher_logprobs'})"
        )
    dropped.report(out_dir / "quarantine.jsonl")
