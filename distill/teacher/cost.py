"""Token counts (tiktoken, offline-capable) and cost from a price table (USD per 1M tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from litgpt_ext.errors import UserError

# USD per 1M tokens (input, output); override with --price_in / --price_out. Batch API calls cost half.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}
# The split pattern shared by cl100k_base / o200k-style encodings (used for local .tiktoken files).
_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s+"""
)


def price_for(model: str, price_in: float | None, price_out: float | None) -> tuple[float, float] | None:
    if price_in is not None and price_out is not None:
        return price_in, price_out
    for name in sorted(PRICES, key=len, reverse=True):  # longest prefix: "gpt-4o-mini-2024..." -> gpt-4o-mini
        if model.startswith(name):
            base = PRICES[name]
            return (price_in if price_in is not None else base[0], price_out if price_out is not None else base[1])
    return None


@dataclass
class CostMeter:
    price: tuple[float, float] | None
    discount: float = 1.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if self.price is None:
            return 0.0
        return self.discount * (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1e6


CHARS_PER_TOKEN = 4
"""The estimate used when no tiktoken encoding can be loaded (OpenAI's rule of thumb for English text)."""


def load_encoding(name_or_file: str | None, model: str, estimate_offline: bool = False):
    """A tiktoken encoding: a local ``.tiktoken`` file works offline; a name may need a download.

    With ``estimate_offline`` and no ``--encoding`` given, an encoding that cannot be loaded (no network: tiktoken
    downloads its files) gives None, and the caller counts :data:`CHARS_PER_TOKEN` characters per token instead."""
    import tiktoken

    looks_like_file = bool(name_or_file) and ("/" in name_or_file or name_or_file.endswith(".tiktoken"))
    if name_or_file and Path(name_or_file).is_file():
        from tiktoken.load import load_tiktoken_bpe

        try:
            ranks = load_tiktoken_bpe(str(name_or_file))
        except Exception as err:
            raise UserError(f"not a .tiktoken file ({err})", path=name_or_file, field="encoding") from None
        return tiktoken.Encoding(name=Path(name_or_file).stem, pat_str=_PAT, mergeable_ranks=ranks, special_tokens={})
    if looks_like_file:
        raise UserError("file not found", path=name_or_file, field="encoding")
    try:
        if name_or_file:
            return tiktoken.get_encoding(name_or_file)
        return tiktoken.encoding_for_model(model)
    except Exception as err:
        if estimate_offline and not name_or_file:
            return None
        what = name_or_file or f"the encoding for model {model!r}"
        raise UserError(
            f"cannot load tiktoken {what} ({type(err).__name__}); offline, pass --encoding path/to/NAME.tiktoken",
            field="encoding",
        ) from None


def chat_prompt_tokens(encoding, messages: list[dict]) -> int:
    """OpenAI's chat accounting: ~3 tokens of framing per message plus 3 for the reply's priming."""
    return sum(3 + len(encoding.encode(str(m.get("content", "")), disallowed_special=())) for m in messages) + 3


def approx_prompt_tokens(messages: list[dict]) -> int:
    """Estimate (:data:`CHARS_PER_TOKEN` characters per token) for pacing, and for ``--dry_run`` when no encoding can
    be loaded; the same per-message framing as :func:`chat_prompt_tokens`."""
    return sum(3 + len(str(m.get("content", ""))) // CHARS_PER_TOKEN for m in messages) + 3
