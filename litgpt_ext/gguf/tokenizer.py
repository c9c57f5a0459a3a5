"""The tokenizer files of a GGUF model, written from its header so that litgpt and transformers both read them right.

transformers' own GGUF tokenizer export (5.3) is not usable as is: it names a ``CodeLlamaTokenizer``, adds
CodeLlama's FIM tokens past the vocabulary, gives BPE a byte fallback and an ``unk`` token, decodes with a
SentencePiece-style decoder (text comes back as ``Ġ``-bytes after a save/load round trip), and prepends the BOS
token whatever ``tokenizer.ggml.add_bos_token`` says. Here the ``tokenizer.json`` is built from the file's own
vocabulary, merges and token types, with the pre-tokenizer llama.cpp names in ``tokenizer.ggml.pre`` — the same
pieces the model's original ``tokenizer.json`` is made of — and ``tokenizer_config.json`` names the special tokens by
the ids the file gives them.
"""

from __future__ import annotations

from pathlib import Path

from litgpt_ext.errors import UserError
from litgpt_ext.gguf.reader import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED, GGUFInfo
from litgpt_ext.io import atomic_write_json, atomic_write_text

LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
"""Qwen2's split (Qwen2 / 2.5 / Coder / Qwen3): Llama 3's, with every digit a piece of its own."""
NFC_PRE = ("qwen2",)
"""Pre-tokenizers whose original ``tokenizer.json`` normalizes to NFC first."""


def _pre_tokenizer(pre: str | None):
    """llama.cpp's pre-tokenizer name -> the ``tokenizers`` pre-tokenizer of the model's original tokenizer."""
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in (None, "default", "gpt-2", "gpt2"):
        return byte_level
    if pre == "smollm":  # digits one by one, then GPT-2's split (SmolLM / SmolLM2's tokenizer.json)
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    patterns = {"llama-bpe": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}
    if pre in patterns:  # the model's split regex, then bytes
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(patterns[pre]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise UserError(
        f"tokenizer.ggml.pre {pre!r} is not known (known: default, gpt-2, smollm, llama-bpe, qwen2)", field="gguf_file"
    )


def build_tokenizer(info: GGUFInfo):
    """A ``tokenizers.Tokenizer`` equal to the one the GGUF was made from: a byte-level BPE (``gpt2``) or a
    SentencePiece BPE (``llama``), its CONTROL tokens special, its USER_DEFINED tokens added, BOS prepended only if
    the file says so."""
    from tokenizers import AddedToken

    sentencepiece = info.metadata.get("tokenizer.ggml.model") == "llama"
    texts = pieces(info)
    tokenizer = _sentencepiece_bpe(info, texts) if sentencepiece else _byte_level_bpe(info)
    special = [
        AddedToken(t, special=True, normalized=False) for t, k in zip(texts, info.token_types) if k == TOKEN_CONTROL
    ]
    # (SentencePiece matches its user-defined pieces - runs of spaces, new lines, tabs - in the normalized text)
    user = [AddedToken(t, special=False, normalized=sentencepiece)
            for t, k in zip(texts, info.token_types) if k == TOKEN_USER_DEFINED]  # fmt: skip
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)
    return tokenizer


def pieces(info: GGUFInfo) -> list[str]:
    """The vocabulary's token texts as the tokenizer holds them: a SentencePiece file's spaces as ``▁`` (llama.cpp
    writes Gemma's whitespace pieces with plain spaces)."""
    if info.metadata.get("tokenizer.ggml.model") != "llama":
        return info.tokens
    return [t.replace(" ", "▁") for t in info.tokens]


def _byte_level_bpe(info: GGUFInfo):
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    vocab = {token: i for i, token in enumerate(info.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in info.merges]
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    pre = info.metadata.get("tokenizer.ggml.pre")
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    if pre in NFC_PRE:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _bos_processor(info, processors.ByteLevel(trim_offsets=False))
    return tokenizer


def sentencepiece_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece BPE model applies, from its pieces and scores alone (a GGUF keeps no merges):
    every split of a normal piece into two pieces of the vocabulary, the merge ranked by the merged piece's score
    (SentencePiece merges the best-scoring adjacent pair first), ties by the pieces' ids."""
    ids = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k in (TOKEN_NORMAL, TOKEN_USER_DEFINED)}
    found = []
    for piece, merged in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                found.append((-scores[merged], merged, ids[left], ids[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def _sentencepiece_bpe(info: GGUFInfo, texts: list[str]):
    """SentencePiece BPE (Llama 1 / 2, TinyLlama, Mistral, Gemma) as ``tokenizers`` writes it for those models:
    spaces as ``▁`` (one prepended when ``tokenizer.ggml.add_space_prefix`` says so, SentencePiece's default),
    unknown characters as ``<0xNN>`` byte pieces (``texts``: :func:`pieces`)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {token: i for i, token in enumerate(texts)}
    unk = info.token_id("unknown")
    tokenizer = Tokenizer(models.BPE(vocab, sentencepiece_merges(texts, info.scores, info.token_types),
                                     unk_token=texts[unk] if unk is not None else None,
                                     fuse_unk=True, byte_fallback=TOKEN_BYTE in info.token_types))  # fmt: skip
    prefix = bool(info.metadata.get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Prepend("▁")] if prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    undo = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence([*undo, decoders.Strip(" ", 1, 0)] if prefix else undo)
    tokenizer.post_processor = _bos_processor(info, None)
    return tokenizer


def _bos_processor(info: GGUFInfo, base):
    """``base`` (or nothing), then BOS before every text when the file says to add it."""
    from tokenizers import processors

    bos = info.token_id("bos")
    if not (info.metadata.get("tokenizer.ggml.add_bos_token") and bos is not None):
        return base
    text = info.tokens[bos]
    template = processors.TemplateProcessing(
        single=f"{text}:0 $A:0", pair=f"{text}:0 $A:0 {text}:1 $B:1", special_tokens=[(text, bos)]
    )
    return processors.Sequence([base, template]) if base is not None else template


def write_tokenizer_files(info: GGUFInfo, out_dir: Path, context: int) -> dict[str, int | None]:
    """``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and ``chat_template.jinja`` (where
    transformers >= 4.47 keeps a template) in ``out_dir``; returns the bos/eos/pad ids for the generation config."""
    tokenizer = build_tokenizer(info)
    atomic_write_text(Path(out_dir) / "tokenizer.json", tokenizer.to_str())
    ids = {role: info.token_id(role) for role in ("bos", "eos", "unknown", "padding")}
    names = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token", "padding": "pad_token"}
    special = {names[role]: info.tokens[i] for role, i in ids.items() if i is not None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": bool(info.metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(info.metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": context,
    }
    atomic_write_json(Path(out_dir) / "tokenizer_config.json", config)
    atomic_write_json(Path(out_dir) / "special_tokens_map.json", special)
    if info.chat_template is not None:
        atomic_write_text(Path(out_dir) / "chat_template.jinja", info.chat_template)
    pad = ids["padding"] if ids["padding"] is not None else ids["eos"]
    return {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": pad}


def read_back_check(out_dir: Path, probes: list[str]) -> None:
    """Every probe text survives encode -> decode with the written files (a broken decoder is caught here, not in
    a user's generations)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(out_dir) / "tokenizer.json"))
    for text in probes:
        back = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
        if back != text:
            raise RuntimeError(f"tokenizer round trip failed: {text!r} came back as {back!r}")
