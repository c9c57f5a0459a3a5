"""Log-probs for the stand-in server (:mod:`distill.teacher.fake_server`), so the API-teacher paths are tested for
real over HTTP:

* :class:`AnswerLogprobs` (``--tokenizer DIR``): the chat answers' tokens in that tokenizer's vocabulary, each with
  a fixed, non-trivial distribution — the answer token at p = 0.55, then alternatives at 0.15 · 0.6^j chosen
  deterministically from the position and token, the rest of the mass (at least 7.5 %) outside the top-k — in
  OpenAI's ``logprobs.content`` shape (token, bytes, logprob, top_logprobs). No torch;
* :class:`ModelScorer` (``--model_dir DIR``): ``/v1/completions`` with ``echo`` and ``logprobs`` scored by a litgpt
  checkpoint, as a vLLM server scores a prompt (``prompt`` as token ids, ``return_tokens_as_token_ids``): what
  ``finetune_kd --teacher_url`` reads.
"""

from __future__ import annotations

import hashlib
import math
import threading
from pathlib import Path

from litgpt_ext.kd.token_bytes import ByteVocab

ANSWER_P = 0.55
ALTERNATIVE_P = 0.15
ALTERNATIVE_DECAY = 0.6


def _pick(seed: str, count: int, avoid: set[int], pool: list[int]) -> list[int]:
    out, j = [], 0
    while len(out) < count and len(out) + len(avoid) < len(pool):
        digest = hashlib.sha256(f"{seed}|{j}".encode()).digest()
        candidate = pool[int.from_bytes(digest[:8], "big") % len(pool)]
        if candidate not in avoid and candidate not in out:
            out.append(candidate)
        j += 1
    return out


class AnswerLogprobs:
    def __init__(self, tokenizer_dir: Path) -> None:
        self.vocab = ByteVocab(Path(tokenizer_dir))
        self.pool = [i for i, b in enumerate(self.vocab.bytes) if b]

    def _entry(self, token_id: int, logprob: float) -> dict:
        raw = self.vocab.bytes[token_id] or b""
        return {"token": self.vocab.token_text(token_id), "bytes": list(raw), "logprob": logprob}

    def content(self, text: str, k: int) -> list[dict]:
        """``logprobs.content`` for an answer ``text`` with ``k`` alternatives per token (the answer token first)."""
        rows = []
        for position, token_id in enumerate(self.vocab.encode(text)):
            others = _pick(f"{position}|{token_id}", max(k - 1, 0), {token_id}, self.pool)
            top = [self._entry(token_id, math.log(ANSWER_P))] if k else []
            top += [self._entry(o, math.log(ALTERNATIVE_P * ALTERNATIVE_DECAY**j)) for j, o in enumerate(others)]
            rows.append({**self._entry(token_id, math.log(ANSWER_P)), "top_logprobs": top})
        return rows


class ModelScorer:
    """Prompt log-probs of a litgpt checkpoint (fp32, CPU), one request at a time."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from litgpt.config import Config
        from litgpt.model import GPT

        self.torch = torch
        config = Config.from_file(Path(model_dir) / "model_config.yaml")
        self.model = GPT(config)
        self.model.load_state_dict(torch.load(Path(model_dir) / "lit_model.pth", weights_only=True, map_location="cpu"))
        self.model.eval()
        self.vocab = ByteVocab(Path(model_dir))
        self.lock = threading.Lock()

    def prompt_logprobs(self, ids: list[int], k: int, as_ids: bool) -> dict:
        """The legacy completions ``logprobs`` object for ``ids`` echoed: per position its token, its log-prob
        given the tokens before it (None for the first) and the ``k`` most likely tokens there."""
        torch = self.torch
        with self.lock, torch.no_grad():
            logits = self.model(torch.tensor([ids]))[0].float()
            logps = torch.log_softmax(logits, dim=-1)[:, : len(self.vocab)]
            top_v, top_i = logps.topk(min(k, logps.size(-1)), dim=-1)

        def name(i: int) -> str:
            return f"token_id:{i}" if as_ids else self.vocab.token_text(i)

        tokens = [name(i) for i in ids]
        token_logprobs = [None] + [float(logps[t - 1, ids[t]]) for t in range(1, len(ids))]
        top = [None] + [
            {name(int(i)): float(v) for v, i in zip(top_v[t - 1], top_i[t - 1], strict=True)}
            for t in range(1, len(ids))
        ]
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": [0] * len(ids)}
