"""``litgpt-ext distill_pairs``: preference pairs from what the pipeline already has — the teacher and the student.

* ``--mode teacher_vs_student``: chosen = the teacher's answer (``distill_query``'s output, parsed as
  ``distill_convert`` parses it), rejected = a sampled student answer for the same record (``generate_batch
  --num_samples K``, joined by id). A pair whose two texts are equal once case and spacing are ignored carries no
  signal and is dropped; ``--pairs_per_record K`` keeps the K *hardest* pairs of a record — the most similar ones by
  word overlap (Jaccard), where the student came closest to the teacher and the preference is most informative.
* ``--mode judge``: the teacher grades every distinct student sample of a record with a 1-10 rubric
  (``prompts/judge_score.md``, JSON verdict ``{"score", "reason"}``) through ``distill_query``'s machinery — the same
  append-only cache (``<out>.judge.jsonl``), rate limits, retries, Batch API, cost estimate and ``--dry_run``.
  chosen = the best-scored sample, rejected = the worst; both scores and the margin are kept on the pair.

The pair's ``prompt`` (and ``input``) is the student prompt rendered exactly as ``distill_convert`` renders it. Every
record or verdict that yields no pair is written to ``<out>.quarantine.jsonl`` with its reason, and
``<out>.summary.json`` counts them. ``<out>`` is derived data (rewritten atomically); what was paid for lives in the
judge cache, so a rerun after a crash re-sends only the verdicts that were never answered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from distill.convert import StudentPrompt, TeacherResponses, check_parser, normalize, parse_output
from distill.quarantine import Quarantine
from distill.records import Record, read_records
from distill.teacher.requests import ChatRequest, make_body, request_key
from distill.teacher.run import TeacherArgs, query_teacher
from litgpt_ext.errors import EXIT_INCOMPLETE, UserError, require
from litgpt_ext.generate.outputs import read_generations
from litgpt_ext.io import atomic_write_json, atomic_write_jsonl
from litgpt_ext.templates import template_or_text


def sibling(out: Path, suffix: str) -> Path:
    """``pairs.jsonl`` -> ``pairs<suffix>`` (e.g. ``pairs.summary.json``)."""
    return out.with_name(out.stem + suffix)


def word_overlap(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' lower-cased word sets (a cheap 'how close are they')."""
    wa, wb = set(re.findall(r"\w+", a.lower())), set(re.findall(r"\w+", b.lower()))
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def distinct(texts: list[str]) -> Iterator[tuple[int, str]]:
    """``(sample index, stripped text)`` of the non-empty texts, first of each normalized duplicate only."""
    seen = set()
    for k, text in enumerate(texts):
        text = text.strip()
        if text and normalize(text) not in seen:
            seen.add(normalize(text))
            yield k, text


def parse_verdict(content: str | None) -> tuple[float, str]:
    """``(score, reason)`` from a judge answer: a JSON object (possibly fenced) with a numeric score in 1..10."""
    text = (content or "").strip()
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if not match:
        raise ValueError("no JSON object in the verdict")
    data = json.loads(match.group(0))
    score = data.get("score") if isinstance(data, dict) else None
    if isinstance(score, str):
        score = float(score) if re.fullmatch(r"\s*\d+(\.\d+)?\s*", score) else None
    if isinstance(score, bool) or not isinstance(score, int | float) or not 1 <= score <= 10:
        raise ValueError(f"score must be a number from 1 to 10, got {data.get('score')!r}")
    return float(score), str(data.get("reason", ""))


class _Builder:
    """Pairs, and the records or samples that gave none."""

    def __init__(self) -> None:
        self.pairs: list[dict] = []
        self.dropped = Quarantine()

    def drop(self, record_id: str, reason: str, **extra) -> None:
        self.dropped.add(reason, record_id=record_id, **extra)

    def samples_of(self, rec: Record, generations: dict[str, dict]) -> list[str] | None:
        """The student's samples for a record, or None (quarantined: none generated, or an error record)."""
        gen = generations.get(rec.id)
        if gen is None:
            self.drop(rec.id, "no_generations")
        elif "error" in gen:
            self.drop(rec.id, "generation_error", detail=gen["error"])
        else:
            return gen["texts"]
        return None

    def pair(self, rec: Record, n: int, prompt: str, extra_input: str, chosen: str, rejected: str, **extra) -> None:
        row = {"id": f"{rec.id}#{n}", "record_id": rec.id, "prompt": prompt}
        if extra_input:
            row["input"] = extra_input
        self.pairs.append({**row, "chosen": chosen, "rejected": rejected, **extra})


def teacher_vs_student(
    records: list[Record],
    records_path: Path,
    student: StudentPrompt,
    teacher: TeacherResponses,
    generations: dict[str, dict],
    parser: str,
    pairs_per_record: int | None,
) -> _Builder:
    out = _Builder()
    for rec in records:
        prompt, extra_input = student.render(rec, records_path)
        result = teacher.get(rec.id)
        if result is None:
            out.drop(rec.id, "no_response")
            continue
        if result["status"] != "ok":
            out.drop(rec.id, f"teacher_{result.get('reason')}", detail=result.get("detail"))
            continue
        texts = out.samples_of(rec, generations)
        if texts is None:
            continue
        chosen_texts: list[str] = []
        for c_index, choice in enumerate(result["choices"]):
            try:
                chosen_texts += [t for t in parse_output(choice.get("content") or "", parser) if t.strip()]
            except (ValueError, AttributeError) as err:
                out.drop(rec.id, "parse_error", choice=c_index, detail=str(err))
        chosen_texts = [t for _, t in distinct(chosen_texts)]
        samples = list(distinct(texts))
        if not samples:
            out.drop(rec.id, "no_student_text")
            continue
        candidates = []
        for chosen in chosen_texts:
            for k, rejected in samples:
                if normalize(chosen) == normalize(rejected):
                    out.drop(rec.id, "equal", sample=k, text=rejected)
                    continue
                candidates.append((word_overlap(chosen, rejected), chosen, k, rejected))
        if pairs_per_record is not None:
            candidates.sort(key=lambda c: -c[0])  # stable: equally hard pairs keep their order
            for overlap, _, k, _ in candidates[pairs_per_record:]:
                out.drop(rec.id, "not_among_hardest", sample=k, overlap=round(overlap, 4))
            candidates = candidates[:pairs_per_record]
        for n, (overlap, chosen, k, rejected) in enumerate(candidates):
            out.pair(
                rec,
                n,
                prompt,
                extra_input,
                chosen,
                rejected,
                source="teacher_vs_student",
                sample=k,
                overlap=round(overlap, 4),
            )
    return out


def judge_requests(
    records: list[Record],
    records_path: Path,
    student: StudentPrompt,
    generations: dict[str, dict],
    judge_prompt: str,
    teacher: TeacherArgs,
    out: _Builder,
) -> tuple[list[ChatRequest], dict[str, list[tuple[int, str, str]]], dict[str, tuple[str, str]]]:
    """One request per distinct student sample (rendered before anything is sent); per record its
    ``(sample, text, request key)`` list and its ``(prompt, input)``."""
    template = template_or_text(judge_prompt, "judge_prompt")
    params = teacher.params()
    by_key: dict[str, ChatRequest] = {}
    graded: dict[str, list[tuple[int, str, str]]] = {}
    prompts: dict[str, tuple[str, str]] = {}
    for rec in records:
        prompt, extra_input = student.render(rec, records_path)
        texts = out.samples_of(rec, generations)
        if texts is None:
            continue
        prompts[rec.id] = (prompt, extra_input)
        graded[rec.id] = []
        shown = prompt + (f"\n\n{extra_input}" if extra_input else "")
        for k, text in distinct(texts):
            fields = {**rec.fields, "student_prompt": shown, "student_answer": text}
            messages = [{"role": "system", "content": template.system}] if template.system else []
            messages.append({"role": "user", "content": template.render(fields, (records_path, rec.line))})
            body = make_body(teacher.model, messages, params)
            key = request_key(body)
            by_key.setdefault(key, ChatRequest(key, body)).ids.append(f"{rec.id}#{k}")
            graded[rec.id].append((k, text, key))
    return list(by_key.values()), graded, prompts


def judge_pairs(
    records: list[Record],
    graded: dict[str, list[tuple[int, str, str]]],
    prompts: dict[str, tuple[str, str]],
    results: dict[str, dict],
    judge_model: str,
    min_margin: float,
    out: _Builder,
) -> int:
    """chosen = best-scored sample, rejected = worst; returns how many records still wait for verdicts."""
    pending = 0
    for rec in records:
        if rec.id not in graded:
            continue
        scored, waiting = [], False
        for k, text, key in graded[rec.id]:
            result = results.get(key)
            if result is None:
                waiting = True
                continue
            if result["status"] != "ok":
                out.drop(rec.id, "judge_failed", sample=k, detail=result.get("reason"))
                continue
            try:
                score, reason = parse_verdict(result["choices"][0].get("content"))
            except (ValueError, IndexError, AttributeError) as err:
                out.drop(rec.id, "judge_unparseable", sample=k, detail=str(err))
                continue
            scored.append((score, k, text, reason))
        if waiting:
            pending += 1
            out.drop(rec.id, "judge_pending")
            continue
        if len(scored) < 2:
            out.drop(rec.id, "too_few_scored", scored=len(scored))
            continue
        best = max(scored, key=lambda s: s[0])  # first of equal scores: max/min keep the earliest sample
        worst = min(scored, key=lambda s: s[0])
        margin = best[0] - worst[0]
        if margin == 0:
            out.drop(rec.id, "tie", score=best[0])
            continue
        if margin < min_margin:
            out.drop(rec.id, "below_min_margin", margin=margin)
            continue
        prompt, extra_input = prompts[rec.id]
        out.pair(
            rec,
            0,
            prompt,
            extra_input,
            best[2],
            worst[2],
            source="judge",
            judge_model=judge_model,
            chosen_sample=best[1],
            rejected_sample=worst[1],
            chosen_score=best[0],
            rejected_score=worst[0],
            margin=margin,
            chosen_reason=best[3],
            rejected_reason=worst[3],
        )
    return pending


def distill_pairs(
    mode: Literal["teacher_vs_student", "judge"] = "teacher_vs_student",
    records: Path | None = None,
    responses: Path | None = None,
    generations: Path | None = None,
    out: Path = Path("pairs.jsonl"),
    instruction: str = "prompts/student_search_queries.md",
    input: str | None = None,
    parser: str = "raw",
    pairs_per_record: int | None = None,
    judge_prompt: str = "prompts/judge_score.md",
    judge_cache: Path | None = None,
    min_margin: float = 0.0,
    teacher: TeacherArgs = TeacherArgs(temperature=0.0, max_tokens=200, response_format="json_object"),
) -> None:
    """Build preference pairs (``{"id", "prompt", "chosen", "rejected"}`` + provenance) for finetune_dpo / finetune_orpo.

    Args:
        mode: ``teacher_vs_student`` (teacher answer chosen, a student sample rejected) or ``judge`` (the teacher
            scores the student's samples; best chosen, worst rejected).
        records: The records JSONL the teacher was queried with (ids join everything).
        responses: The teacher's responses (distill_query's output); teacher_vs_student only.
        generations: The student's samples: generate_batch output (``--num_samples K``) whose ids are record ids.
        out: Output pairs JSONL; ``<out>.summary.json`` and ``<out>.quarantine.jsonl`` are written beside it.
        instruction: Student prompt template (file or text), as distill_convert's ``--instruction``.
        input: Optional template for litgpt's ``input`` field, as distill_convert's ``--input``.
        parser: How the teacher's answer is split into outputs: ``raw``, ``lines`` or ``json:FIELD`` (as distill_convert).
        pairs_per_record: Keep the K hardest pairs (most word overlap) per record; default: every pair.
        judge_prompt: Judge template (file or text) with ``{student_prompt}``, ``{student_answer}`` and any record
            field; it must ask for a JSON verdict ``{"score": 1-10, "reason": ...}``.
        judge_cache: Append-only cache of verdicts (default ``<out>.judge.jsonl``); a rerun re-sends only what is missing.
        min_margin: Judge mode: drop pairs whose score margin (chosen - rejected) is below this.
        teacher: The judge: endpoint, sampling and rate-limit settings, exactly distill_query's
            (``--teacher.model``, ``--teacher.base_url``, ``--teacher.rpm``, ``--teacher.mode batch``,
            ``--teacher.dry_run true``, ``--teacher.max_cost_usd``, ...).
    """
    records_path = Path(require(records, "records"))
    out = Path(out)
    if pairs_per_record is not None and pairs_per_record < 1:
        raise UserError(f"must be at least 1, got {pairs_per_record}", field="pairs_per_record")
    if min_margin < 0:
        raise UserError(f"must be >= 0, got {min_margin}", field="min_margin")
    check_parser(parser)
    if mode == "judge":
        teacher.validate("teacher.")
    record_list = read_records(records_path)
    student = StudentPrompt(instruction, input)
    samples = read_generations(Path(require(generations, "generations")))
    pending = 0
    if mode == "teacher_vs_student":
        built = teacher_vs_student(
            record_list,
            records_path,
            student,
            TeacherResponses(Path(require(responses, "responses"))),
            samples,
            parser,
            pairs_per_record,
        )
    elif mode == "judge":
        built = _Builder()
        requests, graded, prompts = judge_requests(
            record_list, records_path, student, samples, judge_prompt, teacher, built
        )
        cache = query_teacher(requests, Path(judge_cache or sibling(out, ".judge.jsonl")), teacher)
        if cache is None:  # --teacher.dry_run: priced, nothing sent, nothing to pair yet
            return
        pending = judge_pairs(record_list, graded, prompts, cache.results, teacher.model, min_margin, built)
    else:
        raise UserError(f"unknown mode {mode!r}: use teacher_vs_student or judge", field="mode")

    atomic_write_jsonl(out, built.pairs)
    quarantine = sibling(out, ".quarantine.jsonl")
    built.dropped.write(quarantine)
    summary = {
        "mode": mode,
        "records": len(record_list),
        "pairs": len(built.pairs),
        "records_with_pairs": len({p["record_id"] for p in built.pairs}),
        "dropped": built.dropped.counts(),
        "pending_records": pending,
    }
    if mode == "judge":
        scores = [p["margin"] for p in built.pairs]
        summary["judge_model"] = teacher.model
        summary["mean_margin"] = round(sum(scores) / len(scores), 4) if scores else None
    atomic_write_json(sibling(out, ".summary.json"), summary)
    print(f"{len(record_list):,} records -> {len(built.pairs):,} pairs in {out}")
    built.dropped.report(quarantine)
    if pending:
        print(f"{pending:,} record(s) still wait for verdicts: rerun the same command to finish")
        raise SystemExit(EXIT_INCOMPLETE)
