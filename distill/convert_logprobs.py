"""``distill_convert --logprobs true``: an API teacher's answers with their log-probs -> pre-tokenized student data
(``train.pt`` / ``val.pt``) and the top-k store ``finetune_kd --teacher_logprobs`` reads.

The answer is the teacher's own token sequence, not a re-tokenization of its text: each answer token and each of
its ``top_logprobs`` alternatives is mapped to the student's id with the same bytes
(:class:`litgpt_ext.kd.token_bytes.ByteVocab`); a special token (an EOS among the alternatives) maps by its name,
else by its role (the teacher's end of text to the student's EOS). A student of the teacher's tokenizer family maps
everything; an alternative that does not map adds its mass to the tail bucket; an answer token that does not map
cannot be written in the student's ids, so its example is dropped (``unmapped_answer``). Examples whose share of mapped tokens
and alternatives is under ``--min_mapped`` are dropped with the share (``low_mapped``); when almost nothing maps
(another family) the command stops and says to use SFT on the text.

Rows follow :mod:`litgpt_ext.kd.store`: per answer position the mapped alternatives sorted by probability (padded
with id ``-1`` at ``-inf`` where fewer than k map), the log of the remaining mass, and the log-prob of the answer
token. API log-probs are rounded and their top-k can sum to 1, so the remaining mass is floored at
:data:`TAIL_FLOOR`, which keeps the reverse KL finite. The API returns nothing for the end of the answer, so its
EOS row is the hard label (p = 1 − :data:`TAIL_FLOOR`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from litgpt_ext.errors import UserError

TAIL_FLOOR = 1e-6
"""Least probability mass left outside an API teacher's top-k (see the module docstring)."""
FAMILY_SHARE = 0.5
"""Below this share of mapped tokens the student is taken to be of another tokenizer family."""


def _token_bytes(entry: dict) -> bytes:
    raw = entry.get("bytes")
    return bytes(raw) if isinstance(raw, list) else str(entry.get("token", "")).encode("utf-8")


class ApiLogprobData:
    """Collects the examples of each split (student prompt + the teacher's mapped answer) and their store rows."""

    def __init__(self, student_dir: Path, prompt_style: str | None, min_mapped: float) -> None:
        from litgpt.tokenizer import Tokenizer

        from litgpt_ext.checks import check_checkpoint_dir
        from litgpt_ext.kd.token_bytes import ByteVocab
        from litgpt_ext.prompts import data_style, resolve_prompt_style

        self.student_dir = Path(student_dir)
        check_checkpoint_dir(self.student_dir)
        self.tokenizer = Tokenizer(self.student_dir)
        self.vocab = ByteVocab(self.student_dir)
        self.style = resolve_prompt_style(prompt_style, self.student_dir, fallback=lambda: data_style("litgpt"))
        from litgpt.config import Config

        self.block_size = Config.from_file(self.student_dir / "model_config.yaml").block_size
        self.min_mapped = min_mapped
        self.samples: dict[str, list[dict]] = {"train": [], "val": []}
        self.rows: dict[str, list[list[tuple]]] = {"train": [], "val": []}
        self.ids: dict[str, list[str]] = {"train": [], "val": []}
        self.k = 1
        self.mapped = self.total = 0

    def _map(self, content: list[dict]) -> tuple[list[int] | None, list[tuple], int, int]:
        """(answer ids or None, per-position (alternatives, answer log-prob), mapped, total)."""
        answer, positions, mapped, total = [], [], 0, 0
        for entry in content:
            own = self.vocab.id_for(_token_bytes(entry))
            total += 1
            mapped += own is not None
            answer.append(own)
            probs: dict[int, float] = {}
            for alt in entry.get("top_logprobs") or []:
                alt_id = self.vocab.id_for(_token_bytes(alt))
                total += 1
                if alt_id is not None:
                    mapped += 1
                    probs[alt_id] = probs.get(alt_id, 0.0) + math.exp(float(alt["logprob"]))
            if own is not None and own not in probs:
                probs[own] = math.exp(float(entry["logprob"]))
            positions.append((probs, float(entry["logprob"])))
            self.k = max(self.k, len(entry.get("top_logprobs") or []))
        return (None if None in answer else answer), positions, mapped, total

    def add(self, split: str, rid: str, instruction: str, input_text: str, content) -> tuple[str, dict] | None:
        """Add one answer; returns ``(reason, details)`` when it cannot be used (the caller quarantines it)."""
        from litgpt_ext.chat_template import encode_bos
        from litgpt_ext.data.encode import encode_prompt_response, encode_text
        from litgpt_ext.prompts import apply_style

        if not isinstance(content, list) or not content:
            return "no_logprobs", {}
        answer, positions, mapped, total = self._map(content)
        self.mapped += mapped
        self.total += total
        share = mapped / max(total, 1)
        if answer is None:
            return "unmapped_answer", {"mapped_share": round(share, 4)}
        if share < self.min_mapped:
            return "low_mapped", {"mapped_share": round(share, 4), "min_mapped": self.min_mapped}
        prompt_ids = encode_text(
            self.tokenizer, apply_style(self.style, instruction, input_text), encode_bos(self.style)
        )
        encoded = encode_prompt_response(prompt_ids, answer, self.tokenizer.eos_id, self.tokenizer.bos_id)
        if len(encoded.input_ids) > self.block_size:
            return "too_long", {"tokens": len(encoded.input_ids), "student_context": self.block_size}
        self.samples[split].append({"input_ids": encoded.input_ids, "labels": encoded.labels})
        self.rows[split].append(positions)
        self.ids[split].append(rid)
        return None

    def share(self) -> float:
        return self.mapped / max(self.total, 1)

    def check_family(self, responses: Path) -> None:
        """Stop when almost nothing maps, or no answer can be written in the student's ids: another family."""
        usable = sum(len(v) for v in self.samples.values())
        if self.total and (self.share() < min(FAMILY_SHARE, self.min_mapped) or not usable):
            raise UserError(
                f"only {self.share():.1%} of the teacher's answer tokens and alternatives map to the student's "
                f"vocabulary by their bytes ({usable} answers fully): the student is not of the teacher's tokenizer "
                "family, so logit "
                "distillation cannot line the two up; train with SFT on the text (distill_convert without --logprobs)",
                path=responses,
                field="logprobs",
            )

    def _split_rows(self, split: str) -> dict[str, torch.Tensor]:
        k = self.k
        ids, logps, tail, target, counts = [], [], [], [], []
        for positions in self.rows[split]:
            for probs, own_logprob in positions:
                ranked = sorted(probs.items(), key=lambda kv: -kv[1])[:k]
                kept = sum(p for _, p in ranked)
                ids.append([i for i, _ in ranked] + [-1] * (k - len(ranked)))
                logps.append([math.log(p) if p > 0 else -math.inf for _, p in ranked] + [-math.inf] * (k - len(ranked)))
                tail.append(math.log(max(1.0 - kept, TAIL_FLOOR)))
                target.append(own_logprob)
            eos = self.tokenizer.eos_id  # the end of the answer: the hard label
            ids.append([eos] + [-1] * (k - 1))
            logps.append([math.log1p(-TAIL_FLOOR)] + [-math.inf] * (k - 1))
            tail.append(math.log(TAIL_FLOOR))
            target.append(math.log1p(-TAIL_FLOOR))
            counts.append(len(positions) + 1)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(counts, dtype=torch.int64).cumsum(0)])
        return {
            "ids": torch.tensor(ids, dtype=torch.int32).reshape(-1, k),
            "logps": torch.tensor(logps, dtype=torch.float32).reshape(-1, k),
            "tail": torch.tensor(tail, dtype=torch.float32),
            "target": torch.tensor(target, dtype=torch.float32),
            "offsets": offsets,
        }

    def write(self, out_dir: Path, store_dir: Path, teacher_model: str, responses: Path) -> dict:
        """train.pt / val.pt / prompt_style.yaml in ``out_dir``, the store in ``store_dir`` (manifest last)."""
        from litgpt.prompts import save_prompt_style

        from litgpt_ext.checkpoint_files import tokenizer_record
        from litgpt_ext.data.pretokenized import load_pretokenized, pack
        from litgpt_ext.io import atomic_path
        from litgpt_ext.kd.store import FORMAT, dataset_fingerprint, save_split, tokenizer_fingerprint, write_manifest

        fingerprints, positions = {}, {}
        for split in ("train", "val"):
            with atomic_path(Path(out_dir) / f"{split}.pt") as tmp:
                packed = pack(self.samples[split], self.ids[split])
                packed["tokenizer"] = tokenizer_record(self.tokenizer, self.student_dir)
                torch.save(packed, tmp)
            loaded = load_pretokenized(Path(out_dir) / f"{split}.pt", -100)  # exactly what finetune_kd will read
            fingerprints[split] = {
                "fingerprint": dataset_fingerprint(loaded),
                "samples": len(loaded),
                "max_seq_length": None,
            }
            parts = self._split_rows(split)
            save_split(store_dir, split, parts)
            positions[split] = int(parts["offsets"][-1])
        save_prompt_style(self.style, Path(out_dir))
        manifest = {
            "format": FORMAT,
            "teacher": {"kind": "api", "model": teacher_model, "responses": str(Path(responses).resolve())},
            "k": self.k,
            "temperature": 1.0,
            "dtype": "float32",
            "tokenizer": tokenizer_fingerprint(self.student_dir),
            "student": str(self.student_dir),
            "data": fingerprints,
            "positions": positions,
            "mapped_share": round(self.share(), 6),
            "tail_floor": TAIL_FLOOR,
        }
        write_manifest(store_dir, manifest)
        return manifest
