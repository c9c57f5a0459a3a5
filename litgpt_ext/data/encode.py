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


def with_bos(ids: list[int], bos: bool | None, tokenizer) -> list[int]:
    """litgpt's BOS rule on ids of text encoded without added special tokens: a BOS in front when ``bos`` (or,
    for ``None``, the tokenizer's ``use_bos``) asks for one and the text does not already begin with it.

    Unlike litgpt's ``Tokenizer.encode``, nothing the text itself holds is removed or doubled: a ChatML prompt whose
    ``<|im_start|>`` is also the BOS token keeps it with ``bos=False``, and a tokenizer whose post-processor adds BOS
    (Llama 3's) does not give a prompt that starts with ``<|begin_of_text|>`` a second one. The ids are those of
    transformers' ``tokenizer(text, add_special_tokens=False)`` (and ``apply_chat_template``), plus that BOS."""
    if bos or (bos is None and tokenizer.use_bos):
        if tokenizer.bos_id is None:
            raise NotImplementedError("This tokenizer does not have a defined bos token.")
        if ids[:1] != [tokenizer.bos_id]:
            return [tokenizer.bos_id, *ids]
    return ids


def raw_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of many strings without added special tokens (special-token strings in the text are still parsed),
    encoded by the backend's threads (Rust for HF ``tokenizers``, C++ for sentencepiece)."""
    if tokenizer.backend == "huggingface":
        return [e.ids for e in tokenizer.processor.encode_batch_fast(texts, add_special_tokens=False)]
    if tokenizer.backend == "sentencepiece":
        return [list(ids) for ids in tokenizer.processor.encode(texts, num_threads=-1)]
    raise NotImplementedError(f"tokenizer backend {tokenizer.backend!r}")


def batch_encode(tokenizer, texts: list[str], bos: bool | None) -> list[list[int]]:
    """:func:`encode_text` of many strings at once."""
    return [with_bos(ids, bos, tokenizer) for ids in raw_ids(tokenizer, texts)]


def encode_text(tokenizer, text: str, bos: bool | None = None) -> list[int]:
    """The ids every command feeds the model for ``text``: see :func:`with_bos`."""
    return batch_encode(tokenizer, [text], bos)[0]


def with_eos(ids: list[int], eos_id: int | None) -> list[int]:
    """An answer's ids ending in EOS (once), so the student learns to stop."""
    return ids if eos_id is None or ids[-1:] == [eos_id] else [*ids, eos_id]
