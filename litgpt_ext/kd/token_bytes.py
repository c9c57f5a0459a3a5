"""Every token of a checkpoint's vocabulary as the bytes it stands for — how an API teacher's tokens (which come with
their ``bytes``) are matched to the student's ids, and how the stand-in server gives its answers log-probs.

Without torch or litgpt (the stand-in server imports this): HF ``tokenizer.json`` through ``tokenizers``, or a
SentencePiece ``tokenizer.model``. Byte-level BPE tokens (GPT-2, Llama 3, Qwen) are spelled in GPT-2's printable
alphabet for bytes; SentencePiece-style vocabularies (Llama 2, Gemma, Mistral) write a space as ``▁`` and unknown
bytes as ``<0xAB>`` pieces. Special and control tokens stand for no text: they map by name instead — to the
student's token of the same name, else by their role (:data:`ROLE_NAMES`: another family's end of text is the
student's EOS), since real servers (vLLM) return EOS among ``top_logprobs``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SPACE = "\u2581"

ROLE_NAMES: dict[str, frozenset[str]] = {
    "eos": frozenset({"</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>",
                      "<end_of_turn>", "<eos>", "<|end|>", "<|endofturn|>", "<\uff5cend\u2581of\u2581sentence\uff5c>"}),
    "bos": frozenset({"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>",
                      "<\uff5cbegin\u2581of\u2581sentence\uff5c>"}),
    "pad": frozenset({"<pad>", "<|pad|>", "<|finetune_right_pad_id|>", "<|padding|>"}),
}  # fmt: skip
"""Special tokens of the common families by the role they play: a teacher's special token that the student lacks
maps to the student's token of that role (Llama 2's ``</s>``, Llama 3's ``<|eot_id|>``, ChatML's ``<|im_end|>``,
Gemma's ``<end_of_turn>``, DeepSeek's end of sentence: all "the answer ends here")."""


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
        self.roles = self._roles(checkpoint_dir)
        """The student's ``eos`` / ``bos`` / ``pad`` ids where its tokenizer files name them."""

    def _roles(self, checkpoint_dir: Path) -> dict[str, int]:
        roles: dict[str, int] = {}
        config = checkpoint_dir / "tokenizer_config.json"
        names = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
        for role in ("eos", "bos", "pad"):
            name = names.get(f"{role}_token")
            name = name.get("content") if isinstance(name, dict) else name
            if isinstance(name, str) and name in self.special:
                roles[role] = self.special[name]
        generation = checkpoint_dir / "generation_config.json"
        if generation.is_file():  # what litgpt's Tokenizer takes as EOS / BOS when it is there
            ids = json.loads(generation.read_text(encoding="utf-8"))
            for role in ("eos", "bos", "pad"):
                value = ids.get(f"{role}_token_id")
                value = value[0] if isinstance(value, list) and value else value
                if isinstance(value, int):
                    roles[role] = value
        for role, names in ROLE_NAMES.items():  # else its special token of a well-known name for the role
            found = sorted(i for name, i in self.special.items() if name in names)
            if role not in roles and found:
                roles[role] = found[0]
        return roles

    def id_for(self, raw: bytes) -> int | None:
        """The student's id for a teacher token given as bytes (an API's ``bytes`` field): the token with those
        bytes; else, for a special token, the student's special token of that name, else of that role; else None."""
        found = self.id_of.get(raw)
        if found is not None:
            return found
        name = raw.decode("utf-8", errors="replace")
        if name in self.special:
            return self.special[name]
        for role, names in ROLE_NAMES.items():
            if name in names:
                return self.roles.get(role)
        return None

    def _load_hf(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._hf = Tokenizer.from_file(str(path))
        spec = json.loads(path.read_text(encoding="utf-8"))
        kinds = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
        byte_level = '"ByteLevel"' in kinds
        vocab = self._hf.get_vocab(with_added_tokens=True)
        special = {t["id"] for t in spec.get("added_tokens") or [] if t.get("special")}
        self.special = {t["content"]: t["id"] for t in spec.get("added_tokens") or [] if t.get("special")}
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
        self.special = {}
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i):
                table.append(None)
                self.special[sp.id_to_piece(i)] = i
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


def shared_tokens(student: ByteVocab, teacher: ByteVocab) -> dict[int, int]:
    """``teacher id -> student id`` for the tokens the two vocabularies share: the same bytes, or for a special
    token the student's of that name, else of that role (:meth:`ByteVocab.id_for`). One teacher id per student id
    (the first), so the map can be inverted."""
    names = {i: name for name, i in teacher.special.items()}
    shared: dict[int, int] = {}
    for role in ("eos", "bos", "pad"):  # the teacher's end of text is the student's, whatever their names
        if role in teacher.roles and role in student.roles and student.roles[role] not in shared.values():
            shared.setdefault(teacher.roles[role], student.roles[role])
    taken: set[int] = set(shared.values())
    for i, raw in enumerate(teacher.bytes):
        if i in shared:
            continue
        if raw is None:
            raw = names.get(i, "").encode("utf-8")
            if not raw:
                continue
        j = student.id_for(raw)
        if j is not None and j not in taken:
            shared[i] = j
            taken.add(j)
    return shared
