"""What the engine is asked to do and what it gives back: a :class:`Job` (one prompt, its samples and how they are
drawn), and the :class:`Row` each sample becomes while it runs.

A job carries its own :class:`~litgpt_ext.generate.settings.Sampling` when it has one (a server maps every request
onto one), else the engine's; it may ask for the log-probs of what it generates (OpenAI's ``logprobs`` /
``top_logprobs``), for those of its own prompt (``echo`` with ``logprobs``: teacher-forced scoring), for each token as
it comes (streaming), and it may be cancelled by another thread (a client that went away): its rows are dropped at
the next step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from litgpt_ext.generate.repetition import History
from litgpt_ext.generate.settings import Sampling


@dataclass
class TokenLogprobs:
    """A token's log-probability under the model (log-softmax of its raw logits, temperature 1) and the ``k`` most
    likely tokens there, most likely first."""

    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class PromptScores:
    """Teacher-forced scores of a prompt: for positions 1..T-1, the log-probability of the prompt's own token given
    the tokens before it, and the ``k`` most likely tokens there (position 0 has none)."""

    token_logprobs: list[float]
    top: list[list[tuple[int, float]]]


@dataclass
class Job:
    """One input prompt and what has been generated for it."""

    id: str
    line: int
    prompt_ids: list[int]
    samples: int
    max_new_tokens: int
    extra: dict = field(default_factory=dict)
    prompt_truncated: bool = False
    """The prompt was cut to ``--max_prompt_length`` (BOS and its end kept)."""
    sampling: Sampling | None = None
    """How this job's rows are drawn (None: the engine's settings)."""
    seed: int | None = None
    """The seed of this job's random streams (None: the engine's)."""
    stream_name: str | None = None
    """What names its random streams with the seed (None: its id, so jobs of one seed differ; a server gives
    requests that set a seed the same name, so the same request gives the same answer)."""
    logprobs: int | None = None
    """Report each generated token's log-prob and the ``logprobs`` most likely tokens (0: the token's only)."""
    prompt_logprobs: int | None = None
    """Score the prompt first (:class:`PromptScores` with this many alternatives per position)."""
    on_token: Callable[[int, int, TokenLogprobs | None], None] | None = None
    """Called from the engine's thread with (sample index, token id, its log-probs) as each token is accepted."""
    cancelled: bool = False
    """Set from any thread: the engine drops the job's rows at its next step and never emits it."""
    texts: list[str | None] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    generated_tokens: list[int] = field(default_factory=list)
    token_ids: list[list[int] | None] = field(default_factory=list)
    """Each sample's generated ids (without EOS), for callers that train on them."""
    token_logprobs: list[list[TokenLogprobs] | None] = field(default_factory=list)
    prompt_scores: PromptScores | None = None
    pending: int = 0

    def start(self) -> None:
        """Empty results for every sample (the engine calls it when it takes the job)."""
        self.texts, self.finish_reasons = [None] * self.samples, [None] * self.samples
        self.generated_tokens, self.pending = [0] * self.samples, self.samples
        self.token_ids = [None] * self.samples
        self.token_logprobs = [[] if self.logprobs is not None else None for _ in range(self.samples)]


@dataclass
class Row:
    """One sample of a job while it runs in a slot."""

    job: Job
    sample: int
    key: int
    sampling: Sampling
    tokens: list[int] = field(default_factory=list)
    history: History | None = None
    """Prompt + generated tokens as the repetition controls need them (None when they are off)."""

    @property
    def position(self) -> int:
        """Cache position where the last generated token is written when it is fed back."""
        return len(self.job.prompt_ids) + len(self.tokens) - 1
