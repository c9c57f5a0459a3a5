"""``litgpt-ext evaluate_generations``: score generate_batch output against references.

References come from a field of each generation row (a training file's answer, kept by generate_batch) or from a
separate file joined by id (e.g. a teacher's answers for the same records). Every row is accounted for: error
records and empty generations are scored as empty answers, references without a generation as ``missing`` (also
scored as empty), generations without a reference as ``no_reference`` (not scorable, counted).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from litgpt_ext.data.chat import chat_turns, prompt_and_reply
from litgpt_ext.data.records import iter_jsonl, iter_rows
from litgpt_ext.errors import UserError, require
from litgpt_ext.evaluate import metrics as m
from litgpt_ext.io import atomic_path, atomic_write_json

DEFINITIONS = {
    "bleu": "corpus BLEU 0-100, SacreBLEU-compatible: tokenize=13a, case-sensitive, 4-grams, no smoothing",
    "rouge": "ROUGE-1/2/L F1 per row (torchmetrics: lower-cased, no stemming, best of several references), mean",
    "exact_match": "share of rows equal to a reference after SQuAD normalisation (case, punctuation, articles)",
    "items": "lines parser items, normalised, set precision/recall/F1 per row (mean) and over all rows (micro)",
}


def evaluate_generations(
    input: Path | None = None,
    reference_field: str = "Answer",
    reference: Path | None = None,
    items: Literal["none", "lines"] = "none",
    sample: int = 0,
    output_dir: Path | None = None,
) -> dict:
    """Score generations against references: corpus BLEU, ROUGE-1/2/L F1, exact match, item P/R/F1, lengths.

    Writes ``rows.csv`` (per-row scores), ``metrics.json`` (the summary) and ``rougeL.png`` (histogram of per-row
    ROUGE-L) to the output directory and prints the summary as a table.

    Args:
        input: generate_batch output (JSONL with ``id`` and ``generations``).
        reference_field: The field holding the reference text (a string or a list of acceptable strings): in each
            input row (``Answer`` for a Q/A split, ``output`` for litgpt JSON), or in the ``--reference`` file. A chat
            row (OpenAI ``messages``, ShareGPT ``conversations``) without that field is scored against its final
            assistant turn.
        reference: A file of references joined by ``id`` (JSON list, JSONL or CSV; several rows with one id are
            several references), e.g. a teacher's answers converted by distill_convert (``--reference_field output``).
        items: ``lines`` also scores list-shaped answers as sets of items (precision/recall/F1); ``none`` does not.
        sample: Which generation of a row to score when generate_batch made several (``--num_samples``).
        output_dir: Where the files go (default: ``<input stem>.eval`` next to the input).
    """
    input = Path(require(input, "input"))
    if not input.is_file():
        raise UserError("file not found", path=input, field="input")
    if items not in ("none", "lines"):
        raise UserError(f"use none or lines, got {items!r}", field="items")
    if sample < 0:
        raise UserError(f"must be >= 0, got {sample}", field="sample")
    output_dir = Path(output_dir) if output_dir is not None else input.parent / f"{input.stem}.eval"
    refs = _read_references(Path(reference), reference_field) if reference is not None else None

    rows, seen = [], set()
    for n, obj in iter_jsonl(input, where=lambda n: f"line {n}"):
        if not isinstance(obj, dict) or obj.get("id") is None:
            raise UserError("expected a JSON object with an id", path=input, line=f"line {n}", field="id")
        rid = str(obj["id"])
        seen.add(rid)
        if refs is not None:
            references = refs.get(rid)
        elif "error" in obj and reference_field not in obj:
            references = None  # an error record carries no fields; counted below
        elif reference_field not in obj and (reply := chat_reply(obj, input, f"line {n}")) is not None:
            references = [reply]  # a chat row: its final assistant turn
        else:
            if reference_field not in obj:
                fields = ", ".join(k for k in obj if k not in ("generations", "finish_reasons", "_line"))
                raise UserError(
                    f"missing (the row has: {fields}); pass --reference_field or --reference FILE",
                    path=input,
                    line=f"line {n}",
                    field=reference_field,
                )
            references = _reference_list(obj[reference_field], input, f"line {n}", reference_field)
        rows.append(_row(rid, obj, references, sample))
    if refs is not None:
        rows += [_row(rid, None, refs[rid], sample) for rid in refs if rid not in seen]

    summary = _score(rows, items == "lines")
    summary.update(input=str(input), reference=str(reference) if reference else None)
    summary["reference_field"] = reference_field
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(output_dir / "rows.csv", rows, items == "lines")
    atomic_write_json(output_dir / "metrics.json", summary)
    _plot(output_dir / "rougeL.png", [r["rougeL"] for r in rows if r["status"] != "no_reference"])
    print(format_table(summary, f"{input.name} vs {reference.name if reference else reference_field}"))
    print(f"per-row scores: {output_dir / 'rows.csv'} | summary: {output_dir / 'metrics.json'}")
    return summary


def chat_reply(obj: dict, path: Path | None = None, where: str = "") -> str | None:
    """The reference of a chat row (OpenAI ``messages`` / ShareGPT ``conversations``): its final assistant turn."""
    turns = chat_turns(obj, path, where)
    return None if turns is None else prompt_and_reply(turns)[1]


def _reference_list(value, path: Path, where: str, field: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) for v in values):
        raise UserError("expected a string or a list of strings", path=path, line=where, field=field)
    return values


def _read_references(path: Path, field: str) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for where, obj in iter_rows(path):
        if obj.get("id") in (None, ""):
            raise UserError("missing", path=path, line=where, field="id")
        if field not in obj and (reply := chat_reply(obj, path, where)) is not None:
            refs.setdefault(str(obj["id"]), []).append(reply)
            continue
        if field not in obj:
            raise UserError("missing; pass --reference_field", path=path, line=where, field=field)
        refs.setdefault(str(obj["id"]), []).extend(_reference_list(obj[field], path, where, field))
    if not refs:
        raise UserError("no references", path=path, field="reference")
    return refs


def _row(rid: str, obj: dict | None, references: list[str] | None, sample: int) -> dict:
    """One row before scoring: its status, prediction and references."""
    status, text, tokens, finish = "ok", "", None, None
    if obj is None:
        status = "missing"
    elif "error" in obj:
        status = "error"
    else:
        texts = obj.get("generations") or []
        text = texts[sample] if sample < len(texts) and isinstance(texts[sample], str) else ""
        if sample < len(obj.get("generated_tokens") or []):
            tokens = obj["generated_tokens"][sample]
        if sample < len(obj.get("finish_reasons") or []):
            finish = obj["finish_reasons"][sample]
        status = "ok" if text.strip() else "empty"
    if references is None:
        status = "no_reference" if status != "error" else "error"
    return {
        "id": rid,
        "status": status,
        "generation": text.strip(),
        "references": references,
        "generated_tokens": tokens,
        "finish_reason": finish,
    }


def _score(rows: list[dict], with_items: bool) -> dict:
    scored = [r for r in rows if r["references"] is not None]
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "exact": 0}
    totals_items = [0, 0, 0]  # predicted, reference, matched: summed over rows for the micro scores
    item_sums = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    for r in tqdm(rows, desc="score", unit="row", disable=len(rows) < 2000):
        r.update(rouge1=0.0, rouge2=0.0, rougeL=0.0, exact=0, bleu=0.0)
        if r["references"] is None:
            continue
        text, references = r["generation"], r["references"]
        if text:
            r.update(m.rouge(text, references), exact=int(m.exact_match(text, references)))
            r["bleu"] = m.sentence_bleu(text, references)
        if with_items:
            c = m.item_counts(text, references)
            r.update(item_precision=c.precision, item_recall=c.recall, item_f1=c.f1)
            totals_items = [t + x for t, x in zip(totals_items, (c.predicted, c.reference, c.matched))]
            for key in item_sums:
                item_sums[key] += r[f"item_{key}"]
        for key in ("rouge1", "rouge2", "rougeL", "exact"):
            totals[key] += r[key]
    n = max(len(scored), 1)
    status = {k: sum(r["status"] == k for r in rows) for k in ("ok", "empty", "error", "missing", "no_reference")}
    summary = {
        "rows": len(rows),
        "scored": len(scored),
        **status,
        "bleu": round(m.corpus_bleu([r["generation"] for r in scored], [r["references"] for r in scored]), 2),
        "rouge1": round(totals["rouge1"] / n, 4),
        "rouge2": round(totals["rouge2"] / n, 4),
        "rougeL": round(totals["rougeL"] / n, 4),
        "exact_match": round(totals["exact"] / n, 4),
    }
    if with_items:
        counts = m.ItemCounts(*totals_items)
        summary["items"] = {
            **{key: round(value / n, 4) for key, value in item_sums.items()},
            "micro_precision": round(counts.precision, 4),
            "micro_recall": round(counts.recall, 4),
            "micro_f1": round(counts.f1, 4),
        }
    tokens = [r["generated_tokens"] for r in scored if r["generated_tokens"] is not None]
    summary["lengths"] = {
        "generated_words": m.length_stats([len(r["generation"].split()) for r in scored]),
        "reference_words": m.length_stats([len(r["references"][0].split()) for r in scored]),
        **({"generated_tokens": m.length_stats(tokens)} if tokens else {}),
    }
    summary["ended_by_length"] = sum(r["finish_reason"] == "length" for r in scored)
    summary["definitions"] = {k: v for k, v in DEFINITIONS.items() if with_items or k != "items"}
    return summary


def format_table(summary: dict, title: str) -> str:
    """The summary as a one-screen table."""
    counts = ", ".join(f"{summary[k]} {k}" for k in ("empty", "error", "missing", "no_reference") if summary[k])
    lines = [
        f"== {title}: {summary['scored']} rows scored" + (f" ({counts})" if counts else "") + " ==",
        f"  {'BLEU (corpus, SacreBLEU 13a)':<32} {summary['bleu']:>7.2f}",
        f"  {'ROUGE-1 / ROUGE-2 / ROUGE-L F1':<32} {summary['rouge1']:>7.3f} / {summary['rouge2']:.3f} / "
        f"{summary['rougeL']:.3f}",
        f"  {'exact match (normalised)':<32} {summary['exact_match']:>7.3f}",
    ]
    if "items" in summary:
        i = summary["items"]
        lines.append(
            f"  {'items P / R / F1 (mean per row)':<32} {i['precision']:>7.3f} / {i['recall']:.3f} / {i['f1']:.3f}"
        )
    g, r = summary["lengths"]["generated_words"], summary["lengths"]["reference_words"]
    lines.append(
        f"  {'words: generated / reference':<32} {g['mean']:>7.1f} / {r['mean']:.1f} (mean; p90 {g['p90']} / {r['p90']})"
    )
    if summary.get("ended_by_length"):
        lines.append(f"  {'ended at max_new_tokens':<32} {summary['ended_by_length']:>7}")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict], with_items: bool) -> None:
    fields = ["id", "status", "exact", "bleu", "rouge1", "rouge2", "rougeL"]
    fields += ["item_precision", "item_recall", "item_f1"] if with_items else []
    fields += ["generated_words", "reference_words", "generation", "reference"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            refs = r["references"] or []
            writer.writerow(
                {
                    **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()},
                    "generated_words": len(r["generation"].split()),
                    "reference_words": len(refs[0].split()) if refs else "",
                    "reference": refs[0] if len(refs) == 1 else json.dumps(refs, ensure_ascii=False),
                }
            )


def _plot(path: Path, values: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=20, range=(0.0, 1.0), color="#4c72b0", edgecolor="white")
    ax.set_xlabel("ROUGE-L F1 per row")
    ax.set_ylabel("rows")
    ax.set_title(f"ROUGE-L of {len(values)} rows (mean {sum(values) / max(len(values), 1):.3f})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
