"""Every token of a checkpoint's vocabulary as the bytes it stands for — how an API teacher's tokens (which come with
their ``bytes``) are matched to the student's ids, and how the stand-in server gives its answers log-probs.

Without torch or litgpt (the stand-in server imports this): HF ``tokenizer.json`` through ``tokenizers``, or a
SentencePiece ``tokenizer.model``. Byte-level BPE tokens (GPT-2, Llama 3, Qwen) are spelled in GPT-2's printable
alphabet for bytes; SentencePiece-style vocabularies (Llama 2, Gemma, Mistral) write a space as ``▁`` and unknown
bytes as ``<0xAB>`` pieces. Special and control tokens stand for no text and map to nothing.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SPACE = "\u2581"


@cache
def _gpt2_unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: printable bytes stand for themselves, the other 68 bytes are
    shifted to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def _byte_level(token: str) -> bytes | None:
    table = _gpt2_unicode_to_byte()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError:
        return None


def _pieces(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace(SPACE, " ").encode("utf-8")


class ByteVocab:
    """``bytes`` per token id (None for special tokens), the reverse map, and an encoder for plain text."""

    def __init__(self, checkpoint_dir: Path) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        if (checkpoint_dir / "tokenizer.json").is_file():
            self._load_hf(checkpoint_dir / "tokenizer.json")
        elif (checkpoint_dir / "tokenizer.model").is_file():
            self._load_sentencepiece(checkpoint_dir / "tokenizer.model")
        else:
            raise FileNotFoundError(f"{checkpoint_dir}: no tokenizer.json or tokenizer.model")
        self.id_of: dict[bytes, int] = {}
        for i, b in enumerate(self.bytes):
            if b:
                self.id_of.setdefault(b, i)

    def _load_hf(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._hf = Tokenizer.from_file(str(path))
        spec = json.loads(path.read_text(encoding="utf-8"))
        kinds = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
        byte_level = '"ByteLevel"' in kinds
        vocab = self._hf.get_vocab(with_added_tokens=True)
        special = {t["id"] for t in spec.get("added_tokens") or [] if t.get("special")}
        table: list[bytes | None] = [None] * (max(vocab.values()) + 1 if vocab else 0)
        for token, i in vocab.items():
            if i in special:
                continue
            table[i] = _byte_level(token) if byte_level else _pieces(token)
        self.bytes = table
        self._encode = lambda text: self._hf.encode(text, add_special_tokens=False).ids

    def _load_sentencepiece(self, path: Path) -> None:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(path))
        table: list[bytes | None] = []
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i):
                table.append(None)
            else:
                table.append(_pieces(sp.id_to_piece(i)))
        self.bytes = table
        self._encode = lambda text: sp.encode(text)

    def __len__(self) -> int:
        return len(self.bytes)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no special tokens)."""
        return list(self._encode(text))

    def token_text(self, i: int) -> str:
        """A token's bytes as text (invalid UTF-8 — a token inside a multi-byte character — replaced)."""
        return (self.bytes[i] or b"").decode("utf-8", errors="replace")
