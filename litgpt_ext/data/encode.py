"""Turn (prompt, response) text into ``input_ids`` + ``labels`` exactly as training expects them.

Used both by training-time data modules and by ``distill_tokenize`` so pre-tokenized data is byte-for-byte what
training would have produced. Rules:

* labels are ``ignore_index`` on prompt tokens (when ``mask_prompt``), so the loss is on the answer only;
* the response ends with EOS (the student must learn to stop);
* when prompt + response exceed ``max_seq_length`` the **prompt** is truncated first: its leading BOS is kept and
  tokens are dropped from the front of the rest, so the template's tail (``Answer:``, ``### Response:``) that cues
  the answer survives. Only if the response alone does not fit (with ``min_prompt_tokens`` of prompt) is the
  response cut from the end — then it has no EOS, and the sample is reported as truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Encoded:
    input_ids: torch.Tensor
    labels: torch.Tensor
    prompt_truncated: bool = False
    response_truncated: bool = False


def encode_prompt_response(
    prompt_ids: list[int],
    response_ids: list[int],
    eos_id: int | None,
    bos_id: int | None = None,
    max_seq_length: int | None = None,
    mask_prompt: bool = True,
    ignore_index: int = -100,
    min_prompt_tokens: int = 8,
) -> Encoded:
    """Join already-tokenized prompt and response (see module docstring for the truncation rule)."""
    response = list(response_ids)
    if eos_id is not None and (not response or response[-1] != eos_id):
        response.append(eos_id)
    prompt = list(prompt_ids)
    prompt_truncated = response_truncated = False
    if max_seq_length and len(prompt) + len(response) > max_seq_length:
        keep_prompt = max(min(len(prompt), min_prompt_tokens), max_seq_length - len(response))
        keep_prompt = min(keep_prompt, len(prompt), max_seq_length - 1)
        if keep_prompt < len(prompt):
            prompt, prompt_truncated = keep_end(prompt, keep_prompt, bos_id), True
        if len(prompt) + len(response) > max_seq_length:
            response, response_truncated = response[: max_seq_length - len(prompt)], True
    input_ids = torch.tensor(prompt + response, dtype=torch.long)
    labels = input_ids.clone()
    if mask_prompt:
        labels[: len(prompt)] = ignore_index
    return Encoded(input_ids, labels, prompt_truncated, response_truncated)


def keep_end(ids: list[int], limit: int, bos_id: int | None) -> list[int]:
    """At most ``limit`` tokens: a leading BOS and the *end* of ``ids`` (the part that cues the answer, or that a
    reward head reads), the middle dropped."""
    if len(ids) <= limit:
        return ids
    head = ids[:1] if bos_id is not None and ids[:1] == [bos_id] else []
    return head + ids[len(ids) - (limit - len(head)) :] if limit > len(head) else head


def _litgpt_specials(tokens: list[int], bos: bool | None, use_bos: bool, bos_id, eos_id) -> list[int]:
    """litgpt ``Tokenizer.encode``'s BOS/EOS rules (eos=False), applied to an already-encoded id list."""
    if bos or (bos is None and use_bos):
        if bos_id is None:
            raise NotImplementedError("This tokenizer does not have a defined bos token.")
        if not tokens or tokens[0] != bos_id:
            tokens = [bos_id] + tokens
    elif tokens and tokens[0] == bos_id:
        tokens = tokens[1:]
    if tokens and tokens[-1] == eos_id:
        tokens = tokens[:-1]
    return tokens


def batch_encode(tokenizer, texts: list[str], bos: bool | None) -> list[list[int]]:
    """Encode many strings at once with the backend's parallel batch API (Rust threads for HF ``tokenizers``,
    C++ threads for sentencepiece); ids equal ``tokenizer.encode(text, bos=bos).tolist()`` for each text."""
    if tokenizer.backend == "huggingface":
        raw = [e.ids for e in tokenizer.processor.encode_batch(texts)]
    elif tokenizer.backend == "sentencepiece":
        raw = tokenizer.processor.encode(texts, num_threads=-1)
    else:
        raw = [tokenizer.encode(t, bos=False).tolist() for t in texts]
    return [_litgpt_specials(list(ids), bos, tokenizer.use_bos, tokenizer.bos_id, tokenizer.eos_id) for ids in raw]
