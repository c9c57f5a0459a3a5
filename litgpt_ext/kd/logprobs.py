"""``litgpt-ext distill_logprobs``: run a teacher once over SFT data and store its top-k log-probs at every answer
position, for ``finetune_kd --teacher_logprobs`` (offline distillation: the teacher need not fit beside the student,
and one teacher pass serves many student runs).

The data is read and tokenized exactly as ``finetune_kd`` reads it (the student's tokenizer, the data's prompt
style, ``--max_seq_length`` as ``--train.max_seq_length``), and the store's manifest holds the fingerprints that
``finetune_kd`` checks. Work is done in windows of samples, sorted by length inside a window so batches pad little;
each finished window is written atomically under ``OUT/parts/``, so a run killed with ``kill -9`` resumes at the
first missing window, and ``--shard I/N`` (or a SLURM array) takes every N-th window. The run that finds every
window present packs them into ``train.topk.pt`` / ``val.topk.pt`` and writes ``manifest.json`` last.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from litgpt.data import DataModule
from tqdm import tqdm

from litgpt_ext.checks import at_least, check_checkpoint_dir, fit_to_context
from litgpt_ext.data.sft import SFTData  # noqa: F401 (so that --data SFTData resolves by name)
from litgpt_ext.errors import UserError, require
from litgpt_ext.io import atomic_path, atomic_write_json
from litgpt_ext.kd.sampled import FLAT, Draw, check_sampling, pack_window, sample_rows, window_seed
from litgpt_ext.kd.store import (
    FORMAT,
    SPLITS,
    dataset_fingerprint,
    save_split,
    scheme_of,
    split_file,
    teacher_identity,
    tokenizer_fingerprint,
    write_manifest,
)
from litgpt_ext.model.heads import output_head

STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def topk_rows(logits: torch.Tensor, targets: torch.Tensor, k: int, temperature: float) -> dict[str, torch.Tensor]:
    """The stored rows of ``(n, V)`` float32 logits: top-k ids and log-probs at ``temperature``, the log of the mass
    outside them (a log-sum-exp over the rest: exact also when it is tiny), and the label's log-prob at 1."""
    logps = F.log_softmax(logits / temperature, dim=-1)
    top, ids = logps.topk(k, dim=-1)
    rest = logps.scatter(1, ids, float("-inf"))
    tail = torch.logsumexp(rest, dim=-1)
    plain = logps if temperature == 1 else F.log_softmax(logits, dim=-1)
    target = plain.gather(1, targets.unsqueeze(1)).squeeze(1)
    return {"ids": ids.to(torch.int32), "logps": top, "tail": tail, "target": target}


class _Windows:
    """The windows of one split, what each holds, and where its part file goes."""

    def __init__(self, out: Path, split: str, n: int, window: int) -> None:
        self.out, self.split, self.n, self.window = out, split, n, window
        self.count = math.ceil(n / window) if n else 0

    def path(self, w: int) -> Path:
        return self.out / "parts" / f"{self.split}-{w:06d}.pt"

    def indices(self, w: int) -> range:
        return range(w * self.window, min(self.n, (w + 1) * self.window))


def _settings(teacher, student, k, temperature, dtype, max_seq_length, window, fingerprints) -> dict:
    return {
        "format": FORMAT,
        "teacher": teacher_identity(teacher),
        "k": k,
        "temperature": temperature,
        "dtype": dtype,
        "tokenizer": tokenizer_fingerprint(student),
        "student": str(Path(student)),
        "window": window,
        "data": fingerprints,
    }


def distill_logprobs(
    teacher: Path,
    data: DataModule | Path | None = None,
    out: Path | None = None,
    student: Path | None = None,
    top_k: int = 20,
    temperature: float = 1.0,
    max_seq_length: int | None = None,
    precision: str | None = None,
    batch_size: int = 8,
    window: int = 512,
    dtype: Literal["float16", "float32"] = "float16",
    shard: str | None = None,
    cross_tokenizer: bool = False,
    sampling: Literal["topk", "sample"] = "topk",
    samples: int = 50,
    proposal_temperature: float = 1.0,
    seed: int = 1337,
) -> None:
    """Store a teacher's top-k log-probs (or tokens drawn from it) at every answer position of SFT data (for
    finetune_kd --teacher_logprobs).

    Args:
        teacher: The teacher's litgpt checkpoint.
        data: What finetune_sft / finetune_kd take (a path or a DataModule); both its train and val splits are stored.
        out: The store directory (manifest.json, train.topk.pt, val.topk.pt; parts/ while it is being written).
        student: The student checkpoint whose tokenizer and context finetune_kd will use (default: the teacher's; the
            two must share a vocabulary, checked).
        top_k: Tokens kept per position (1 to the vocabulary size).
        temperature: The temperature of the stored log-probs (finetune_kd's --temperature must match it when it
            keeps the tail bucket).
        max_seq_length: As finetune_kd's --train.max_seq_length (the same cut gives the same answer positions).
        precision: The teacher's precision (default: as generate_batch picks it).
        batch_size: Samples per teacher forward.
        window: Samples per unit of work (a part file); a resumed or sharded run continues at window granularity.
        dtype: Storage of the top-k log-probs (float16 halves the file; float32 for exact comparisons).
        shard: ``I/N`` to do every N-th window starting at window I (default: the SLURM array variables, if set).
        cross_tokenizer: The teacher has another tokenizer than --student (for ``finetune_kd --teacher_logprobs
            --cross_tokenizer uld``): each record is rendered for the teacher (its own prompt style and tokens), the
            top-k is stored in the teacher's vocabulary at its answer positions with its answer tokens, and the
            teacher's tokenizer files are kept in the store, to align with the student's answers at load.
            Temperature 1 only (the merges of multi-token spans need the tokens' own probabilities).
        sampling: ``topk`` keeps the teacher's --top_k most likely tokens and the tail's mass; ``sample`` keeps
            --samples tokens drawn from the teacher at temperature 1 with replacement, as counts — an unbiased
            estimate of the whole distribution, so finetune_kd's forward-KL gradient is the full one in expectation
            (Random Sampling KD, arXiv 2503.16870). Only the distinct tokens drawn are stored.
        samples: Draws per position with --sampling sample (1 to 2048 in float16, where counts stay exact).
        proposal_temperature: Draw from the teacher's distribution raised to this power (renormalised) and store
            importance-weighted counts (p/q per draw; still unbiased); 1 draws from the teacher itself (plain
            counts). Below 1 reaches further into the tail.
        seed: Seeds the draws (each window its own stream: a resumed or sharded store draws the same tokens).
    """
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.modules import datasets_of, ready_data, resolve_data
    from litgpt_ext.generate.inputs import parse_shard
    from litgpt_ext.kd.vocab import check_same_vocabulary
    from litgpt_ext.precision import default_precision

    teacher, out = Path(teacher), Path(require(out, "out"))
    student = Path(student) if student is not None else teacher
    at_least("top_k", top_k, 1)
    at_least("batch_size", batch_size, 1)
    at_least("window", window, 1)
    at_least("max_seq_length", max_seq_length, 2)
    if not temperature > 0:
        raise UserError(f"must be > 0, got {temperature}", field="temperature")
    check_checkpoint_dir(teacher)
    check_checkpoint_dir(student)
    check_sampling(sampling, samples, proposal_temperature, temperature, dtype, cross_tokenizer)
    if cross_tokenizer:
        if student == teacher:
            raise UserError("needs --student, the checkpoint whose tokenizer differs", field="cross_tokenizer")
        if temperature != 1:
            raise UserError(f"stores temperature 1 only, got --temperature {temperature:g}", field="cross_tokenizer")
        vocab = _padded_vocab(teacher)
    else:
        vocab = check_same_vocabulary(student, teacher)
    if top_k > vocab:
        raise UserError(f"must be <= the vocabulary size ({vocab}), got {top_k}", field="top_k")
    the_shard = parse_shard(shard)
    max_seq_length = fit_to_context("max_seq_length", max_seq_length, student)
    tokenizer = Tokenizer(student)
    module = ready_data(resolve_data(data), tokenizer, student, batch_size, max_seq_length)
    datasets = dict(zip(SPLITS, datasets_of(module), strict=True))
    fingerprints = {
        split: {
            "fingerprint": dataset_fingerprint(d, max_seq_length),
            "samples": len(d),
            "max_seq_length": max_seq_length,
        }
        for split, d in datasets.items()
    }
    settings = _settings(teacher, student, top_k, temperature, dtype, max_seq_length, window, fingerprints)
    if sampling == "sample":
        settings = {key: value for key, value in settings.items() if key != "k"}
        settings |= {"sampling": "sample", "samples": samples, "proposal_temperature": proposal_temperature,
                     "seed": seed}  # fmt: skip
    if cross_tokenizer:
        datasets = _teacher_datasets(module, teacher, datasets)
        settings |= {
            "cross_tokenizer": True,
            "teacher_vocab": vocab,
            "teacher_tokenizer": tokenizer_fingerprint(teacher),
        }
    _claim(out, settings)
    if cross_tokenizer:
        _keep_tokenizer(teacher, out)

    import lightning as L

    precision = precision or default_precision(teacher, training=False)
    fabric = L.Fabric(devices=1, precision=precision)
    from litgpt_ext.training.reference import load_frozen_model

    model = load_frozen_model(fabric, teacher)
    student_vocab = vocab if cross_tokenizer else _padded_vocab(student)
    windows = {split: _Windows(out, split, len(d), window) for split, d in datasets.items()}
    todo = [
        (split, w)
        for split, ws in windows.items()
        for w in range(ws.count)
        if w % the_shard.count == the_shard.index and not ws.path(w).is_file()
    ]
    total_positions = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="teacher log-probs", unit="window", dynamic_ncols=True)
    for split, w in todo:
        draw = None
        if sampling == "sample":
            draw = Draw(samples, proposal_temperature, torch.Generator(fabric.device))
            draw.generator.manual_seed(window_seed(seed, split, w))
        rows = _run_window(fabric, model, datasets[split], windows[split].indices(w), top_k, temperature,
                           batch_size, max_seq_length, student_vocab, STORE_DTYPES[dtype], cross_tokenizer,
                           draw)  # fmt: skip
        with atomic_path(windows[split].path(w)) as tmp:
            torch.save(rows, tmp)
        total_positions += int(rows["counts"].sum())
        bar.update(1)
        bar.set_postfix(positions_s=f"{total_positions / max(time.perf_counter() - t0, 1e-9):,.0f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - t0
    print(
        f"{len(todo):,} windows, {total_positions:,} answer positions in {seconds:.1f}s "
        f"({total_positions / max(seconds, 1e-9):,.0f} positions/s)"
    )
    missing = sum(not ws.path(w).is_file() for ws in windows.values() for w in range(ws.count))
    if missing:
        print(f"{missing} window(s) of other shards still missing: run those shards; the last to finish packs {out}")
        return
    _pack(out, windows, settings)


def _teacher_datasets(module, teacher: Path, student: dict) -> dict:
    """The records rendered for a teacher of another tokenizer, sample for sample the student's."""
    from litgpt_ext.kd.cross_teacher import teacher_rendering

    rendered = dict(zip(SPLITS, teacher_rendering(module, teacher), strict=True))
    for split in SPLITS:
        if len(rendered[split]) != len(student[split]):
            raise UserError(f"the teacher's rendering keeps {len(rendered[split]):,} {split} samples, the student's "
                            f"{len(student[split]):,} (lower --max_seq_length)", field="data")  # fmt: skip
    return rendered


def _keep_tokenizer(teacher: Path, out: Path) -> None:
    """The teacher's tokenizer files, copied into the store (the alignment at load reads them)."""
    import shutil

    from litgpt_ext.kd.cross_teacher import TEACHER_TOKENIZER

    kept = out / TEACHER_TOKENIZER
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json",
                 "special_tokens_map.json"):  # fmt: skip
        if (teacher / name).is_file():
            shutil.copyfile(teacher / name, kept / name)


def _padded_vocab(checkpoint_dir: Path) -> int:
    from litgpt.config import Config

    return Config.from_file(Path(checkpoint_dir) / "model_config.yaml").padded_vocab_size


def _claim(out: Path, settings: dict) -> None:
    """Parts in ``out`` must come from these settings: a resumed run continues its own work, never another's."""
    path = out / "parts" / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != settings:
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            raise UserError(
                f"holds parts of another distill_logprobs run (different {', '.join(changed)}); use another --out "
                "or delete it",
                path=out,
                field="out",
            )
    else:
        atomic_write_json(path, settings)


@torch.no_grad()
def _run_window(
    fabric,
    model,
    dataset,
    indices,
    k,
    temperature,
    batch_size,
    max_seq_length,
    vocab,
    store_dtype,
    tokens=False,
    draw: Draw | None = None,
):
    """Rows of the window's samples in index order, with per-sample counts (length-sorted batches inside); with
    ``tokens``, each row's answer token too; with ``draw``, sampled rows instead of top-k."""
    from litgpt_ext.data.batches import pad_collate
    from litgpt_ext.kd.teacher import fit_vocab
    from litgpt_ext.model.blockwise_head import block_rows
    from litgpt_ext.model.heads import on_positions

    order = sorted(indices, key=lambda i: -len(dataset[i]["input_ids"]))
    results: dict[int, dict] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        samples = [dataset[i] for i in chunk]
        batch = fabric.to_device(pad_collate(samples, 0, -100, max_seq_length))
        index = batch["answer_index"]
        targets = batch["labels"][:, 1:].reshape(-1).index_select(0, index)
        input_ids = batch["input_ids"][:, :-1]
        if input_ids.size(1) > model.config.block_size:
            raise UserError(f"samples of {input_ids.size(1)} tokens exceed the teacher's context "
                            f"({model.config.block_size}); pass --max_seq_length", field="max_seq_length")  # fmt: skip
        with fabric.autocast():
            hidden = on_positions(model, input_ids, index, lambda rows: rows)
        step, head = block_rows(vocab, hidden.device), output_head(model)
        parts = []
        for b in range(0, hidden.size(0), step):
            logits = fit_vocab(head(hidden[b : b + step]).float(), vocab)
            if draw is None:
                parts.append(topk_rows(logits, targets[b : b + step], k, temperature))
            else:
                parts.append(sample_rows(logits, targets[b : b + step], draw.samples, draw.proposal_temperature,
                                         draw.generator))  # fmt: skip
        rows = {key: torch.cat([p[key] for p in parts]).cpu() for key in parts[0]} if parts else {}
        if tokens:
            rows["tokens"] = targets.to(torch.int32).cpu()
        counts = [int((s["labels"][:max_seq_length][1:] != -100).sum()) for s in samples]
        offset = entry = 0
        flat = FLAT if draw is not None else ()
        for i, n in zip(chunk, counts, strict=True):
            results[i] = {key: value[offset : offset + n] for key, value in rows.items() if key not in flat}
            if draw is not None:
                m = int(rows["width"][offset : offset + n].long().sum())
                results[i] |= {key: rows[key][entry : entry + m] for key in FLAT}
                entry += m
            offset += n
    ordered = [results[i] for i in indices]
    if draw is not None:
        return pack_window(ordered, store_dtype)
    extra = {"tokens": torch.cat([r["tokens"] for r in ordered])} if tokens else {}
    return {
        **extra,
        "ids": torch.cat([r["ids"] for r in ordered]),
        "logps": torch.cat([r["logps"] for r in ordered]).to(store_dtype),
        "tail": torch.cat([r["tail"] for r in ordered]).float(),
        "target": torch.cat([r["target"] for r in ordered]).float(),
        "counts": torch.tensor([len(r["ids"]) for r in ordered], dtype=torch.int64),
    }


def _pack(out: Path, windows: dict, settings: dict) -> None:
    positions, entries = {}, {}
    for split, ws in windows.items():
        parts = [torch.load(ws.path(w), weights_only=True, map_location="cpu") for w in range(ws.count)]
        counts = torch.cat([p["counts"] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])

        def cat(key, parts=parts):
            return torch.cat([p[key] for p in parts]) if parts else torch.zeros(0)

        if settings.get("sampling") == "sample":
            kept = {key: cat(key) for key in ("ids", "weights", "width", "entropy", "top", "target")}
            save_split(out, split, {**kept, "offsets": offsets}, "sample")
            entries[split] = len(kept["ids"])
        else:
            extra = {"tokens": cat("tokens")} if settings.get("cross_tokenizer") else {}
            save_split(out, split, {"ids": cat("ids"), "logps": cat("logps"), "tail": cat("tail"),
                                    "target": cat("target"), "offsets": offsets, **extra})  # fmt: skip
        positions[split] = int(offsets[-1])
    files = {split: split_file(out, split, scheme_of(settings)).stat().st_size for split in positions}
    stats = {"positions": positions, "bytes": files}
    what = f"top-{settings.get('k')} log-probs"
    if entries:
        stats["entries"] = entries
        what = (f"{settings['samples']} draws ({entries['train'] / max(positions['train'], 1):.1f} distinct tokens "
                "per position)")  # fmt: skip
    write_manifest(out, {**settings, **stats})
    per = sum(files.values()) / max(sum(positions.values()), 1)
    print(f"stored {what} of {positions['train']:,} train / {positions['val']:,} val answer positions -> {out} "
          f"({per:.1f} bytes per position)")  # fmt: skip


distill_logprobs.default_data = "SFTData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
