"""On-policy distillation (GKD's λ, Agarwal et al. 2024): with probability λ per micro-batch the batch's answers are
replaced by answers the *current* student samples for the same prompts, and the teacher scores those.

As TRL's ``GKDTrainer``: with probability λ the student's samples replace the answers; otherwise, with ``seq_kd``, the
teacher's own samples do (sequence-level KD, Kim & Rush 2016), else the data's answers stay. The draw for micro-batch ``i`` comes from
``(seed, i)`` alone and so do the sampling streams, so a resumed run makes the same choices and — with the same
weights — the same samples. Sampling goes through the continuous-batching engine
(:func:`litgpt_ext.generate.on_model.sample_answers`), never a one-row generate loop.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch

from litgpt_ext.data.batches import pad_collate
from litgpt_ext.generate.on_model import ON_POLICY, sample_answers
from litgpt_ext.generate.settings import Sampling
from litgpt_ext.model.heads import unwrap


def _unit(seed: int, *parts) -> float:
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def prompt_of(input_ids: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> list[int]:
    """A sample's prompt: its tokens before the first supervised label."""
    supervised = (labels != ignore_index).nonzero()
    start = int(supervised[0]) if len(supervised) else len(input_ids)
    return input_ids[:start].tolist()


@dataclass(frozen=True)
class OnPolicy:
    lmbda: float = 0.0
    seq_kd: bool = False
    gen: Sampling = ON_POLICY
    seed: int = 1337

    @property
    def active(self) -> bool:
        return self.lmbda > 0 or self.seq_kd


class OnPolicySampler:
    """Decides, samples and rebuilds micro-batches; keeps the time it spent and what it sampled."""

    def __init__(self, policy: OnPolicy, tokenizer, pad_id: int = 0) -> None:
        self.policy, self.tokenizer, self.pad_id = policy, tokenizer, pad_id
        self.gen_seconds = 0.0
        self.seen = self.onpolicy = 0
        self.lengths: list[int] = []
        self.ended_early = 0  # samples cut at --gen.max_new_tokens (no EOS)
        self._since = {"gen": 0.0, "seen": 0, "on": 0}

    def student_turn(self, iteration: int) -> bool:
        return self.policy.lmbda >= 1 or _unit(self.policy.seed, "lmbda", iteration) < self.policy.lmbda

    def prompts(self, batch: dict) -> list[list[int]]:
        ids, labels, lengths = batch["input_ids"].cpu(), batch["labels"].cpu(), batch["lengths"].cpu()
        return [prompt_of(ids[b, : lengths[b]], labels[b, : lengths[b]]) for b in range(ids.size(0))]

    def resample(self, model, batch: dict, iteration: int, who: str, autocast=None, context: int | None = None) -> dict:
        """``batch`` with each answer replaced by one ``model`` samples for its prompt (see :meth:`resample_many`)."""
        return self.resample_many(model, [(batch, iteration)], who, autocast, context)[0]

    def resample_many(
        self, model, batches: list[tuple[dict, int]], who: str, autocast=None, context: int | None = None
    ) -> list[dict]:
        """Each ``(batch, iteration)`` with its answers replaced by ones ``model`` samples for its prompts — all in
        one engine call (the weights do not change between the micro-batches of a step, and many rows decode for
        the price of few) — EOS appended where a sample ended by itself, labels on the new answers only, samples
        within ``context`` tokens (default: the model's). Row ``r`` of micro-batch ``i`` draws from
        ``(seed, who, i, r)`` whatever else is sampled with it."""
        t0 = time.perf_counter()
        prompts, keys, owners = [], [], []
        for n, (batch, iteration) in enumerate(batches):
            for r, prompt in enumerate(self.prompts(batch)):
                prompts.append(prompt)
                keys.append(f"{who}|{iteration}|{r}")
                owners.append(n)
        context = min(context or unwrap(model).max_seq_length, unwrap(model).config.block_size)
        answers = sample_answers(model, self.tokenizer, prompts, self.policy.gen, self.policy.seed, context,
                                 autocast, keys)  # fmt: skip
        per_batch: list[list[dict]] = [[] for _ in batches]
        for owner, prompt, (tokens, reason) in zip(owners, prompts, answers, strict=True):
            answer = tokens + ([self.tokenizer.eos_id] if reason == "stop" else [])
            answer = answer or [self.tokenizer.eos_id]
            ids = torch.tensor(prompt + answer, dtype=torch.long)
            labels = ids.clone()
            labels[: len(prompt)] = -100
            per_batch[owner].append({"input_ids": ids, "labels": labels})
            self.lengths.append(len(tokens))
            self.ended_early += reason != "stop"
        rebuilt = []
        for (batch, _), samples in zip(batches, per_batch, strict=True):
            device = batch["input_ids"].device
            rebuilt.append({k: v.to(device) for k, v in pad_collate(samples, self.pad_id, -100).items()})
        seconds = time.perf_counter() - t0
        self.gen_seconds += seconds
        self._since["gen"] += seconds
        return rebuilt

    def count(self, on: bool) -> None:
        self.seen += 1
        self.onpolicy += on
        self._since["seen"] += 1
        self._since["on"] += on

    def step_stats(self, elapsed: float) -> dict[str, float]:
        """Since the previous log row: share of on-policy micro-batches, seconds generating, the rest training."""
        since, self._since = self._since, {"gen": 0.0, "seen": 0, "on": 0}
        return {
            "onpolicy_fraction": since["on"] / max(since["seen"], 1),
            "gen_s": since["gen"],
            "train_s": max(elapsed - since["gen"], 0.0),
        }

    def report(self, seconds: float) -> dict:
        lengths = torch.tensor(self.lengths or [0], dtype=torch.float)
        q = torch.quantile(lengths, torch.tensor([0.5, 0.9])).tolist()
        return {
            "gen_s": round(self.gen_seconds, 3),
            "train_s": round(max(seconds - self.gen_seconds, 0.0), 3),
            "onpolicy_fraction": round(self.onpolicy / max(self.seen, 1), 4),
            "sampled_answers": len(self.lengths),
            "sampled_length": {
                "mean": round(float(lengths.mean()), 2),
                "p50": q[0],
                "p90": q[1],
                "max": int(lengths.max()),
                "ended_at_max_new_tokens": self.ended_early,
            },  # fmt: skip
        }
