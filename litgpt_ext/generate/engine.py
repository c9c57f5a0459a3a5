"""The continuous-batching decode loop, on a litgpt ``GPT``.

Every step runs all running rows at once, with one transfer between host and device: the sampled ids coming back.
What a step feeds the model — each slot's last token, its cache position, its sampling key and counter — lives in
device tensors that the step itself advances; the host writes into them only when rows are admitted or moved. A row that finishes — EOS, a stop string,
``max_new_tokens`` or a full context — frees its slot, and a waiting prompt is prefilled into it before the next step;
rows are kept packed in the lowest slots, so a step never computes for an empty slot. Waiting prompts come from a bounded look-ahead window over the input stream, longest first,
so long prompts do not straggle at the end and memory does not grow with the input.

Jobs come from a :class:`~litgpt_ext.generate.feed.Feed` (a file read as it goes, or requests from other threads);
each may carry its own sampling settings, ask for log-probs, stream its tokens or be cancelled
(:mod:`litgpt_ext.generate.jobs`). Rows of different settings share a step: the sampler runs once per distinct
setting among them.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from litgpt_ext.generate.admission import CACHE_STEP, COMPILED_CAPACITY, Admission
from litgpt_ext.generate.compiled_step import CompiledDecode
from litgpt_ext.generate.feed import Feed, IteratorFeed
from litgpt_ext.generate.jobs import Job, Row, TokenLogprobs
from litgpt_ext.generate.sampling import row_key, sample, uniforms
from litgpt_ext.generate.scoring import answer_scored
from litgpt_ext.generate.settings import Sampling
from litgpt_ext.model.heads import LastPositionHead
from litgpt_ext.model.kv_cache import SlotCaches
from litgpt_ext.model.packed_linear import install_packed_linears, packing_available
from litgpt_ext.model.patches import LITGPT_OWN, FastPaths, patched
from litgpt_ext.model.prefix_cache import PrefixCache


@dataclass
class Settings:
    """The engine's settings: how rows are sampled (:class:`Sampling`, shared with every command that generates) and
    how many run at once, over how long a context."""

    sampling: Sampling = Sampling()
    max_batch_size: int = 32
    max_seq_length: int = 1024
    """The longest a row may grow (prompt + answer): the model's context, or less."""
    seed: int = 42
    window: int = 256
    """Prompts looked ahead in the input stream (the scheduling window)."""
    prefill_tokens: int = 8192
    """Padded tokens per prefill forward (bounds prefill memory)."""
    admit_batch: int = 4
    """Free slots gathered before waiting rows are prefilled together (see ``Engine._admit_now``); 1 admits each
    row as soon as a slot frees."""
    admit_wait: int = 8
    """Decode steps a waiting row is held at most while slots are gathered."""
    stop_ids: tuple[int, ...] = ()
    """Tokens that end a generation besides EOS (a chat format's end of turn, e.g. ``<|im_end|>``)."""
    pack_weights: bool = False
    """Decode-step matmuls with weights packed for the slot batch (CPU fp32 only; see ``packed_linear``). Only for
    weights that stay fixed while the engine lives."""
    compile: bool = False
    """The decode step under ``torch.compile``, one graph for the run (see ``compiled_step``); fixed weights only."""
    fast_forwards: bool = True
    """The grouped decode step and packed matmuls where they apply; False runs litgpt's own attention forward."""
    prefix_cache: bool = False
    """Reuse the KV of prompt prefixes an earlier prompt computed (see ``model/prefix_cache.py``)."""
    prefix_cache_bytes: int = 2**31
    """Memory the prefix cache may hold; least recently used blocks are evicted beyond it."""


class Engine(Admission):
    """Runs jobs on a litgpt ``GPT`` it has fitted with slot caches, a last-position head and the decode forwards
    (all through :func:`~litgpt_ext.model.patches.patched`); :meth:`close` — or leaving a ``with Engine(...)``
    block — gives the model back exactly as it came."""

    def __init__(self, model, tokenizer, settings: Settings, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.tokenizer, self.s = model, tokenizer, settings
        self.device = device
        self._patches = contextlib.ExitStack()
        fast = FastPaths() if settings.fast_forwards else LITGPT_OWN
        patches = self._patches.enter_context(patched(model, "decode", fast))
        try:
            # a compiled step keeps one graph only while the cache keeps its shape: room for COMPILED_CAPACITY
            # positions up front (a longer row grows it once more, and the recompile is warned about)
            capacity = COMPILED_CAPACITY if settings.compile else CACHE_STEP
            self.caches = SlotCaches(
                model, settings.max_batch_size, capacity, settings.max_seq_length, device, dtype, patches
            )
            self.head = LastPositionHead(model.lm_head)
            patches.set(model, "lm_head", self.head)
            self.packed = (
                settings.pack_weights and fast.forwards and not settings.compile and packing_available(device, dtype)
            )
            if self.packed:
                install_packed_linears(model, settings.max_batch_size, patches)
        except BaseException:
            self.close()
            raise
        self.prefix = PrefixCache(settings.prefix_cache_bytes) if settings.prefix_cache else None
        """Keys and values of prompt prefixes seen, reused by later prompts (None: off)."""
        self.replaced_forwards = patches.forwards()
        """The litgpt module classes whose forward the engine replaced (none with ``fast_forwards=False``)."""
        self.step = (
            CompiledDecode(self._forward, device, settings.max_batch_size) if settings.compile else self._forward
        )
        self.slots: list[Row | None] = [None] * settings.max_batch_size
        # per slot, on the device: the token fed back next step, its cache position, the row's sampling key and the
        # tokens it has drawn so far (its random stream's counter)
        slots = settings.max_batch_size
        self.next_ids, self.positions, self.keys, self.drawn, self.min_new = (
            torch.zeros(slots, dtype=torch.long, device=device) for _ in range(5)
        )
        self.eos = tokenizer.eos_id
        self.sampling = settings.sampling
        self.stops = {t for t in (self.eos, *settings.stop_ids) if t is not None}
        self.stop_ids = torch.tensor(sorted(self.stops), dtype=torch.long, device=device)
        self.vocab = int(getattr(tokenizer, "vocab_size", 0) or model.config.padded_vocab_size)
        self.generated = 0
        self._logprobs: list | None = None  # the last _sample call's log-probs, for _advance

    def close(self) -> None:
        """Take off everything the engine installed (caches, head, forwards, context length); idempotent."""
        self._patches.close()
        self.caches = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- model calls ----------------------------------------------------------------------------------------------
    def to_device(self, values) -> torch.Tensor:
        """Host values into a device tensor: at admission, and in a step only where its rows need indices of their
        own (rows of several sampling settings, log-probs for some rows: a server's steps; see the module docstring)."""
        return torch.as_tensor(values, dtype=torch.long).to(self.device, non_blocking=True)

    def to_host(self, tokens: torch.Tensor) -> list[int]:
        """The sampled ids back on the host: the step's one transfer (it waits for the step to finish)."""
        return tokens.tolist()

    @torch.inference_mode()
    def _decode(self, rows: list[Row]) -> torch.Tensor:
        """One step for the running rows, which :meth:`_pack` put in slots ``0..len(rows)-1``: their tokens and
        positions are already on the device (the attended length is known on the host)."""
        n = len(rows)
        maxp1 = max(r.position for r in rows) + 1
        return self.step(self.next_ids[:n].unsqueeze(1), self.positions[:n].unsqueeze(1), maxp1)[:, -1]

    def _forward(self, idx: torch.Tensor, pos: torch.Tensor, maxp1: int) -> torch.Tensor:
        return self.model(idx, input_pos=pos, input_pos_maxp1=maxp1)

    @torch.inference_mode()
    def _pack(self) -> list[Row]:
        """Move rows down into the slots that finished rows left, so the running rows are slots ``0..n-1`` and a
        decode step costs what the n rows need, not ``max_batch_size`` (the tail of a run, a short input). A move
        copies the row's cached positions once; positions 0..position-1 are all it has written."""
        rows = [r for r in self.slots if r is not None]
        top = len(self.slots) - 1
        for hole in range(len(rows)):
            if self.slots[hole] is not None:
                continue
            while self.slots[top] is None:
                top -= 1
            row = self.slots[top]
            self.caches.move(top, hole, row.position)
            for state in (self.next_ids, self.positions, self.keys, self.drawn, self.min_new):  # no sync
                state[hole] = state[top]
            self.slots[hole], self.slots[top] = row, None
        return self.slots[: len(rows)]

    def _sample(self, logits: torch.Tensor, rows: list[Row], slots: torch.Tensor | slice) -> list[int]:
        """A token for each of ``rows`` (in ``slots``: a decode step's ``0..n-1``, or the slots just prefilled); the
        slots' device state advances to the next step on the device, and the ids come back to the host."""
        tokens = self.draw(logits, rows, self.keys[slots], self.drawn[slots], self.min_new[slots])
        self.next_ids[slots] = tokens
        if isinstance(slots, slice):  # a decode step: the next token goes one position on (a prefill set the first)
            self.positions[slots] += 1
        self.drawn[slots] += 1
        self._logprobs = self.token_logprobs(logits, rows, tokens)
        return self.to_host(tokens)

    def draw(self, logits, rows: list[Row], keys: torch.Tensor, drawn: torch.Tensor, min_new: torch.Tensor):
        """The rows' tokens ``(n,)`` on the device: EOS and the stop ids masked for rows younger than their
        ``min_new_tokens``, then each distinct sampling setting among the rows samples its own rows."""
        if self.stops and any(r.sampling.min_new_tokens for r in rows):
            young = (drawn < min_new).unsqueeze(1)
            logits = logits.index_copy(1, self.stop_ids, logits[:, self.stop_ids].masked_fill(young, float("-inf")))
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            g = row.sampling
            groups.setdefault((g.temperature, g.top_k, g.top_p, g.repetition_penalty, g.no_repeat_ngram_size), [])
            groups[(g.temperature, g.top_k, g.top_p, g.repetition_penalty, g.no_repeat_ngram_size)].append(i)
        if len(groups) == 1:
            return self._sample_group(logits, rows, keys, drawn)
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        for members in groups.values():
            at = self.to_device(members)
            tokens[at] = self._sample_group(logits[at], [rows[i] for i in members], keys[at], drawn[at])
        return tokens

    def _sample_group(self, logits: torch.Tensor, rows: list[Row], keys: torch.Tensor, drawn: torch.Tensor):
        g = rows[0].sampling
        repetition = g.repetition
        if repetition.active:  # the rows' histories live on the host: these controls cost a transfer a step
            logits = repetition.apply(logits, [r.history for r in rows])
        u = uniforms(keys, drawn) if not g.greedy else None
        return sample(logits, g.temperature, g.top_k, g.top_p, u)

    def token_logprobs(self, logits: torch.Tensor, rows: list[Row], tokens: torch.Tensor) -> list | None:
        """For the rows whose job asked: the sampled token's log-prob under the model (raw logits, temperature 1)
        and the most likely tokens — one more transfer, only in steps where some row asked."""
        wanted = [i for i, r in enumerate(rows) if r.job.logprobs is not None]
        if not wanted:
            return None
        at = self.to_device(wanted) if len(wanted) < len(rows) else slice(None)
        logps = torch.log_softmax(logits[at].float(), dim=-1)
        chosen = logps.gather(1, tokens[at].unsqueeze(1)).squeeze(1).tolist()
        k = min(max(rows[i].job.logprobs for i in wanted), self.vocab)
        values, ids = logps[:, : self.vocab].topk(k, dim=-1) if k else (None, None)
        values, ids = (values.tolist(), ids.tolist()) if k else (None, None)
        out: list = [None] * len(rows)
        for n, i in enumerate(wanted):
            own = rows[i].job.logprobs
            top = list(zip(ids[n][:own], values[n][:own], strict=True)) if k and own else []
            out[i] = TokenLogprobs(chosen[n], top)
        return out

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def accept(self, row: Row, token: int, logprobs: TokenLogprobs | None) -> str | None:
        if token in self.stops:
            return "stop"
        row.tokens.append(token)
        if row.history is not None:
            row.history.add(token)
        self.generated += 1
        job = row.job
        if logprobs is not None:
            job.token_logprobs[row.sample].append(logprobs)
        if job.on_token is not None:
            job.on_token(row.sample, token, logprobs)
        stops = row.sampling.stops
        if stops:
            tail_length = max(len(stop) for stop in stops) + 8
            tail = self.tokenizer.decode(torch.tensor(row.tokens[-tail_length:]))
            if any(stop in tail for stop in stops):
                return "stop"
        if len(row.tokens) >= row.job.max_new_tokens or row.position + 1 >= self.s.max_seq_length:  # context full
            return "length"
        return None

    def complete(self, row: Row, reason: str) -> Job | None:
        text = self.tokenizer.decode(torch.tensor(row.tokens, dtype=torch.long)) if row.tokens else ""
        for stop in row.sampling.stops:
            if stop in text:
                text = text[: text.index(stop)]
        job = row.job
        job.texts[row.sample], job.finish_reasons[row.sample] = text, reason
        job.generated_tokens[row.sample] = len(row.tokens)
        job.token_ids[row.sample] = row.tokens
        job.pending -= 1
        return job if job.pending == 0 else None

    def _advance(self, slot_rows: list[tuple[int, Row]], tokens: list[int], emit: Callable[[Job], None]) -> None:
        logprobs, self._logprobs = self._logprobs or [None] * len(tokens), None
        for (slot, row), token, lp in zip(slot_rows, tokens, logprobs, strict=True):
            reason = self.accept(row, token, lp)
            if reason is None:
                continue
            self.slots[slot] = None
            job = self.complete(row, reason)
            if job is not None:
                emit(job)

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self, jobs: Iterable[Job] | Feed, emit: Callable[[Job], None]) -> None:
        """Generate for every job (an iterable, read as it goes, or a :class:`Feed`), calling ``emit(job)`` as each
        one completes (in completion order); returns when the feed ends and every job has completed."""
        feed = jobs if isinstance(jobs, Feed) else IteratorFeed(jobs)
        window: list[tuple[int, int, Row]] = []  # heap of (-prompt length, arrival, row)
        arrival = itertools.count()
        closed = False
        held = 0  # steps that rows waited with a slot free (see _admit_now)
        while True:
            if not closed and len(window) < self.s.window:
                idle = not window and all(r is None for r in self.slots)
                taken = feed.take(self.s.window - len(window), wait=idle)
                if taken is None:
                    closed = True
                else:
                    for job in self._take(taken, emit):
                        for row in self.rows_of(job):
                            heapq.heappush(window, (-len(job.prompt_ids), next(arrival), row))
            if any(row.job.cancelled for _, _, row in window):
                window = [entry for entry in window if not entry[2].job.cancelled]
                heapq.heapify(window)
            self._drop_cancelled()
            free = [i for i, r in enumerate(self.slots) if r is None]
            if free and window and self._admit_now(len(free), len(window), held):
                self._admit(free, window, emit)
                held = 0
            elif free and window:
                held += 1
            rows = self._pack()
            if not rows:
                if closed and not window:
                    return
                continue
            tokens = self._sample(self._decode(rows), rows, slice(0, len(rows)))
            self._advance(list(enumerate(rows)), tokens, emit)

    def _admit_now(self, free: int, waiting: int, held: int) -> bool:
        """Whether waiting rows take the free slots this step. Rows that finish one at a time would each be
        prefilled alone, and a one-row prefill runs well below a group's tokens/s (its GEMMs are short); so the
        slots are gathered until ``admit_batch`` are free (or every waiting row fits), for at most ``admit_wait``
        steps, and an engine with nothing running admits at once. A decode step with a slot or two empty costs
        about what a full one does, so a held slot costs its share of a few steps' tokens."""
        if free == len(self.slots) or free >= min(waiting, self.s.admit_batch):
            return True
        return held >= self.s.admit_wait

    def rows_of(self, job: Job) -> list[Row]:
        sampling = job.sampling or self.sampling
        seed = self.s.seed if job.seed is None else job.seed
        rows = []
        for k in range(job.samples):
            name = job.id if job.stream_name is None else job.stream_name
            row = Row(job, k, row_key(seed, name, k), sampling)
            if sampling.repetition.active:
                row.history = sampling.repetition.history(job.prompt_ids)
            rows.append(row)
        return rows

    def _take(self, jobs: list[Job], emit: Callable[[Job], None]) -> list[Job]:
        """Start the jobs taken from the feed; those that ask for their prompt's scores get them now (teacher-forced,
        together), and one that wants no more than one new token is answered from the same forward."""
        for job in jobs:
            job.start()
        scoring = [job for job in jobs if job.prompt_logprobs is not None and not job.cancelled]
        for start in range(0, len(scoring), 8):
            answer_scored(self, scoring[start : start + 8], emit)
        return [job for job in jobs if job.pending and not job.cancelled]

    def _drop_cancelled(self) -> None:
        """Free the slots of cancelled jobs (a client that went away): their rows stop here, unemitted."""
        for slot, row in enumerate(self.slots):
            if row is not None and row.job.cancelled:
                self.slots[slot] = None

    def prefix_stats(self) -> dict:
        """What the prefix cache reused (empty when it is off)."""
        return self.prefix.stats.as_dict() if self.prefix is not None else {}
