"""Tokenizing a whole dataset fast, with results identical to per-record tokenization.

Two ideas, both exact:

1. **Template factoring.** A prompt style wraps each record's fields in constant text (Alpaca's ~100-character
   header is most of every prompt). Where a constant meets a field at a newline, the field's edges are not blank,
   and the tokenizer is a byte-level BPE with GPT-2's pre-tokenization regex and no normalizer, no token can span
   that boundary (the regex always splits between a newline and a following/preceding non-space character, and BPE
   merges never cross pre-tokens). So ``tokens(c0 + f + c1) == tokens(c0) + tokens(f) + tokens(c1)``: constants are
   tokenized once, only fields per record. Records or tokenizers that do not meet the conditions take the plain
   path, and the first records of every run are cross-checked against plain tokenization.
2. **A pre-token cache.** Byte-level BPE tokenizes every pre-token (a regex match) on its own, so for ASCII text
   without added-token strings, ``ids(text) = concat(ids(p) for p in regex.findall(text))`` with GPT-2's regex.
   Pre-token ids are cached (bounded); a miss asks the tokenizer itself and checks that it sees a single
   pre-token. Other text is batch-encoded by the backend's threads.
3. **No per-sample tensors.** Ids go straight into the flat arrays of the packed format
   (:mod:`litgpt_ext.data.pretokenized`); label masks are built vectorized.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from array import array
from dataclasses import dataclass

import numpy as np
import torch

from litgpt_ext.data.encode import encode_prompt_response, encode_text, raw_ids, with_bos, with_eos
from litgpt_ext.prompts import apply_style

_SENTINELS = {"instruction": "\ue000INSTRUCTION\ue000", "input": "\ue000INPUT\ue000"}
CHECK_RECORDS = 256
CHUNK = 65_536
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class _NotSinglePretoken(Exception):
    pass


class PretokenCache:
    """ids(text) from cached ids of its pre-tokens (see the module docstring for when this is exact)."""

    def __init__(self, tokenizer, max_entries: int = 2_000_000) -> None:
        import regex

        self.processor = tokenizer.processor
        self.pattern = regex.compile(GPT2_PATTERN)
        added = [t.content for t in self.processor.get_added_tokens_decoder().values() if t.content]
        self.added = re.compile("|".join(map(re.escape, added))) if added else None
        self.cache: dict[str, list[int]] = {}
        self.max_entries = max_entries

    def usable(self, text: str) -> bool:
        return text.isascii() and (self.added is None or self.added.search(text) is None)

    def _miss(self, piece: str) -> list[int]:
        if len(self.processor.pre_tokenizer.pre_tokenize_str(piece)) != 1:
            raise _NotSinglePretoken(piece)
        if len(self.cache) >= self.max_entries:
            self.cache.clear()
        ids = self.cache[piece] = self.processor.encode(piece, add_special_tokens=False).ids
        return ids

    def encode(self, text: str) -> list[int]:
        cache, out = self.cache, []
        for piece in self.pattern.findall(text):
            ids = cache.get(piece)
            out += ids if ids is not None else self._miss(piece)
        return out


def factoring_supported(tokenizer) -> bool:
    if tokenizer.backend != "huggingface":
        return False
    spec = json.loads(tokenizer.processor.to_str())
    pre = spec.get("pre_tokenizer") or {}
    return (
        spec.get("normalizer") is None
        and spec.get("model", {}).get("type") == "BPE"
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space")
    )


class RawEncoder:
    """Ids without special tokens (litgpt's BOS/EOS rules are applied afterwards), as fast as exactness allows."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache = PretokenCache(tokenizer) if factoring_supported(tokenizer) else None

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.tokenizer.backend != "huggingface":
            return raw_ids(self.tokenizer, texts)
        out: list[list[int] | None] = [None] * len(texts)
        rest = []
        for i, text in enumerate(texts):
            if self.cache is not None and self.cache.usable(text):
                try:
                    out[i] = self.cache.encode(text)
                    continue
                except _NotSinglePretoken:
                    pass
            rest.append(i)
        if rest:
            encoded = self.tokenizer.processor.encode_batch_fast([texts[i] for i in rest], add_special_tokens=False)
            for i, e in zip(rest, encoded):
                out[i] = e.ids
        return out


@dataclass
class TemplatePlan:
    """Constant pieces of a rendered prompt and the fields between them: c0 f0 c1 f1 ... cN."""

    constants: list[str]
    fields: list[str]
    constant_ids: list[list[int]]

    def fits(self, values: dict[str, str]) -> bool:
        for i, name in enumerate(self.fields):
            v = values[name]
            if not v or v[0].isspace() or v[-1].isspace():
                return False
            left, right = self.constants[i], self.constants[i + 1]
            if (left and not left.endswith("\n")) or (right and not right.startswith("\n")):
                return False
        return True


def make_plan(encode: RawEncoder, style, with_input: bool) -> TemplatePlan | None:
    text = apply_style(style, _SENTINELS["instruction"], _SENTINELS["input"] if with_input else "")
    positions = sorted((text.find(s), name) for name, s in _SENTINELS.items() if s in text)
    if not positions or text.count("\ue000") != 2 * len(positions) or positions[0][1] != "instruction":
        return None
    constants, fields, cursor = [], [], 0
    for pos, name in positions:
        constants.append(text[cursor:pos])
        fields.append(name)
        cursor = pos + len(_SENTINELS[name])
    constants.append(text[cursor:])
    return TemplatePlan(constants, fields, encode(constants))


class PromptEncoder:
    """Raw (no special tokens) prompt ids for many records, factored where exact."""

    def __init__(self, encode: RawEncoder, style) -> None:
        self.encode_raw, self.style = encode, style
        self.plans = {}
        if factoring_supported(encode.tokenizer):
            self.plans = {flag: make_plan(encode, style, flag) for flag in (False, True)}

    def encode(self, instructions: list[str], inputs: list[str]) -> list[list[int]]:
        out: list[list[int] | None] = [None] * len(instructions)
        plain: list[int] = []
        by_plan: dict[bool, list[int]] = {False: [], True: []}
        for i, (ins, inp) in enumerate(zip(instructions, inputs)):
            plan = self.plans.get(bool(inp))
            if plan is not None and plan.fits({"instruction": ins, "input": inp}):
                by_plan[bool(inp)].append(i)
            else:
                plain.append(i)
        for flag, rows in by_plan.items():
            if not rows:
                continue
            plan = self.plans[flag]
            field_ids = {
                name: self.encode_raw([(instructions if name == "instruction" else inputs)[i] for i in rows])
                for name in plan.fields
            }
            for k, i in enumerate(rows):
                ids = list(plan.constant_ids[0])
                for j, name in enumerate(plan.fields):
                    ids += field_ids[name][k]
                    ids += plan.constant_ids[j + 1]
                out[i] = ids
        if plain:
            texts = [apply_style(self.style, instructions[i], inputs[i]) for i in plain]
            for i, ids in zip(plain, self.encode_raw(texts)):
                out[i] = ids
        return out


@dataclass
class _Job:
    tokenizer: object
    style: object
    instructions: list[str]
    inputs: list[str]
    outputs: list[str]
    max_seq_length: int | None
    ignore_index: int


_job: _Job | None = None  # set before forking workers: they read the inputs copy-on-write
_encoders: tuple | None = None


def _encode_chunk(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Ids, prompt lengths and sequence lengths for records [start, start + CHUNK)."""
    global _encoders
    job = _job
    if _encoders is None:  # per process: its own pre-token cache
        raw = RawEncoder(job.tokenizer)
        _encoders = (raw, PromptEncoder(raw, job.style))
    encode_raw, prompt_encoder = _encoders
    tok, stop = job.tokenizer, start + CHUNK
    bos_id, eos_id = tok.bos_id, tok.eos_id
    prompts = prompt_encoder.encode(job.instructions[start:stop], job.inputs[start:stop])
    responses = encode_raw(job.outputs[start:stop])
    flat: list[int] = []
    prompt_lens, seq_lens = array("q"), array("q")
    prompt_cut = response_cut = 0
    for n, (p_raw, r_raw) in enumerate(zip(prompts, responses), start=start):
        p = with_bos(p_raw, None, tok)
        r = with_eos(r_raw, eos_id)
        if n < CHECK_RECORDS:  # cross-check the fast path against plain tokenization of the rendered prompt
            full = apply_style(job.style, job.instructions[n], job.inputs[n])
            if p != encode_text(tok, full) or r != with_eos(encode_text(tok, job.outputs[n], bos=False), eos_id):
                raise RuntimeError(
                    f"fast tokenization differs from plain tokenization on record {n + 1}: please report it"
                )
        if job.max_seq_length and len(p) + len(r) > job.max_seq_length:
            enc = encode_prompt_response(
                p,
                r,
                eos_id=eos_id,
                bos_id=bos_id,
                max_seq_length=job.max_seq_length,
                mask_prompt=True,
                ignore_index=job.ignore_index,
            )
            prompt_cut += enc.prompt_truncated
            response_cut += enc.response_truncated
            seq = enc.input_ids.tolist()
            prompt_lens.append(int((enc.labels == job.ignore_index).sum()))
        else:
            seq = p + r
            prompt_lens.append(len(p))
        flat += seq
        seq_lens.append(len(seq))
    return (
        np.array(flat, dtype=np.int32),
        np.frombuffer(prompt_lens, dtype=np.int64).copy(),
        np.frombuffer(seq_lens, dtype=np.int64).copy(),
        prompt_cut,
        response_cut,
    )


def encode_packed(
    tokenizer,
    style,
    instructions: list[str],
    inputs: list[str],
    outputs: list[str],
    max_seq_length: int | None = None,
    mask_prompt: bool = True,
    ignore_index: int = -100,
    ids: list[str] | None = None,
    num_workers: int | None = None,
    source=None,
) -> tuple[dict, dict]:
    """The packed dataset (see :func:`litgpt_ext.data.pretokenized.pack`) and truncation stats.

    Large inputs are split into chunks over ``num_workers`` forked processes (default: one per CPU core). Under a
    chat template each record is the one-exchange conversation it stands for (:func:`encode_as_conversations`)."""
    global _job, _encoders
    from litgpt_ext.chat_template import ChatTemplateStyle
    from litgpt_ext.data.pretokenized import FORMAT

    if isinstance(style, ChatTemplateStyle):
        return encode_as_conversations(
            tokenizer, style, instructions, inputs, outputs, max_seq_length, mask_prompt, ignore_index, ids, source
        )

    _job = _Job(tokenizer, style, instructions, inputs, outputs, max_seq_length, ignore_index)
    starts = list(range(0, len(outputs), CHUNK))
    workers = min(num_workers or os.cpu_count() or 1, len(starts))
    try:
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = pool.map(_encode_chunk, starts, chunksize=1)
        else:
            parts = [_encode_chunk(s) for s in starts]
    finally:
        _job, _encoders = None, None
    empty = np.zeros(0, dtype=np.int64)
    input_ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int32)
    p_lens = np.concatenate([p[1] for p in parts]) if parts else empty
    lengths = np.concatenate([p[2] for p in parts]) if parts else empty
    labels = input_ids.copy()
    if mask_prompt and len(lengths):
        in_prompt = np.repeat(
            np.tile(np.array([True, False]), len(lengths)), np.stack([p_lens, lengths - p_lens], axis=1).reshape(-1)
        )
        labels[in_prompt] = ignore_index
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)])
    packed = {
        "format": FORMAT,
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "offsets": torch.from_numpy(offsets),
        "ids": ids,
    }
    return packed, {"prompt_truncated": sum(p[3] for p in parts), "response_truncated": sum(p[4] for p in parts)}


def encode_as_conversations(
    tokenizer, style, instructions, inputs, outputs, max_seq_length, mask_prompt, ignore_index, ids, source
) -> tuple[dict, dict]:
    """litgpt JSON records under a chat template: ``[user: instruction (+ input), assistant: output]`` rendered by
    the template, so the answer ends with the template's end of turn and the ids are transformers'
    ``apply_chat_template`` ids of that conversation (chat data's truncation rules apply)."""
    from litgpt_ext.data.chat import Conversation
    from litgpt_ext.data.chat_encode import encode_conversations, renderer_for

    conversations = [
        Conversation(
            [
                {"role": "user", "content": f"{ins}\n\n{inp}" if inp else ins},
                {"role": "assistant", "content": out},
            ],
            where=f"record {n + 1}",
            id=ids[n] if ids else None,
        )
        for n, (ins, inp, out) in enumerate(zip(instructions, inputs, outputs))
    ]
    packed, counts = encode_conversations(
        renderer_for(style, tokenizer), conversations, source, max_seq_length, "all_assistant", ignore_index
    )
    if not mask_prompt:
        packed["labels"] = packed["input_ids"].clone()
    return packed, {
        "prompt_truncated": 0,
        "response_truncated": counts["reply_truncated"],
        "dropped": counts["dropped"],
    }
