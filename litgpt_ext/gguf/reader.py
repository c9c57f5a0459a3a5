"""What a GGUF file (llama.cpp, Ollama) holds, read from its header without loading its weights, and what
``convert_gguf`` can take: the architecture, the quantization of every tensor, the tokenizer, the chat template.

Everything that would make the conversion fail later is refused here, in one line naming the key, before anything
is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from litgpt_ext.errors import UserError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
"""``general.architecture`` values converted: SmolLM / SmolLM2, Llama 2 / 3.x, TinyLlama, Mistral (``llama``),
Qwen2 / 2.5 / 2.5-Coder (``qwen2``), Qwen3 (``qwen3``), Gemma 3 text models (``gemma3``)."""
TOKENIZER_MODELS = ("gpt2", "llama")
"""``tokenizer.ggml.model`` values converted: byte-level BPE, SentencePiece BPE."""

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_BYTE = 1, 3, 4, 6
"""llama.cpp's ``tokenizer.ggml.token_type`` values that matter here (CONTROL tokens are special tokens, BYTE ones
SentencePiece's ``<0xNN>`` fallback pieces)."""


@dataclass
class GGUFInfo:
    """The parts of a GGUF header the conversion uses."""

    path: Path
    architecture: str
    metadata: dict = field(repr=False)
    """Every scalar and string key (the token lists are in the fields below)."""
    tokens: list[str] = field(repr=False)
    token_types: list[int] = field(repr=False)
    merges: list[str] = field(repr=False)
    tensor_types: dict[str, str] = field(repr=False)
    """tensor name -> its GGML type name (``Q4_1``, ``F32``, ...)."""
    scores: list[float] = field(default_factory=list, repr=False)
    """SentencePiece piece scores (``tokenizer.ggml.scores``; empty for byte-level BPE files)."""
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    """tensor name -> its shape as PyTorch writes it (rows first: ``token_embd.weight`` is ``(vocab, n_embd)``)."""

    def get(self, key: str, default=None):
        """An architecture key (``block_count`` means ``llama.block_count``) or a full key."""
        return self.metadata.get(f"{self.architecture}.{key}", self.metadata.get(key, default))

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None

    def token_id(self, role: str) -> int | None:
        """The id ``tokenizer.ggml.{role}_token_id`` names (bos, eos, unknown, padding), if it is a real token."""
        value = self.metadata.get(f"tokenizer.ggml.{role}_token_id")
        return int(value) if value is not None and 0 <= int(value) < len(self.tokens) else None


def _value(field_):
    try:
        return field_.contents()
    except Exception:  # a type this gguf version cannot decode: not a key the conversion reads
        return None


def read_gguf(path: Path) -> GGUFInfo:
    """The header of ``path``; an unreadable file or one that is not GGUF is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path=path, field="gguf_file")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise UserError("not a GGUF file (it does not start with the GGUF magic)", path=path, field="gguf_file")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as err:
        raise UserError(f"cannot read ({type(err).__name__}: {err})", path=path, field="gguf_file") from None
    lists = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores")
    metadata = {k: _value(f) for k, f in reader.fields.items() if k not in lists}
    lists_read = {k: (_value(reader.fields[k]) if k in reader.fields else None) or [] for k in lists}
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise UserError("has no general.architecture key", path=path, field="gguf_file")
    return GGUFInfo(
        path=path,
        architecture=architecture,
        metadata=metadata,
        tokens=list(lists_read["tokenizer.ggml.tokens"]),
        token_types=[int(t) for t in lists_read["tokenizer.ggml.token_type"]],
        merges=list(lists_read["tokenizer.ggml.merges"]),
        scores=[float(x) for x in lists_read["tokenizer.ggml.scores"]],
        tensor_types={t.name: t.tensor_type.name for t in reader.tensors},
        tensor_shapes={t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors},
    )


def dequantizable(type_name: str) -> bool:
    """Whether gguf-py (which transformers' GGUF loader calls) turns tensors of this GGML type into floats."""
    from gguf import GGMLQuantizationType
    from gguf.quants import _type_traits

    if type_name in ("F32", "F16"):
        return True
    qtype = getattr(GGMLQuantizationType, type_name, None)
    return qtype is not None and qtype in _type_traits


def check_convertible(info: GGUFInfo) -> None:
    """One line naming what this file has that the conversion does not take: the architecture, a quantization,
    the tokenizer model."""
    where = {"path": info.path, "field": "gguf_file"}
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"architecture {info.architecture!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
            **where,
        )
    bad = sorted({t for t in info.tensor_types.values() if not dequantizable(t)})
    if bad:
        tensors = [n for n, t in info.tensor_types.items() if t in bad]
        raise UserError(
            f"quantization {', '.join(bad)} cannot be dequantized (tensor {tensors[0]!r} and {len(tensors) - 1} "
            "more); re-export the model with F16, BF16, Q8_0, Q4_K_M or another k-/legacy quant",
            **where,
        )
    model = info.metadata.get("tokenizer.ggml.model")
    if model not in TOKENIZER_MODELS:
        raise UserError(
            f"tokenizer model {model!r} is not supported: only byte-level BPE ('gpt2': SmolLM, Llama 3, Qwen, ...) "
            "and SentencePiece BPE ('llama': Llama 2, TinyLlama, Mistral, Gemma) tokenizers are converted",
            **where,
        )
    if not info.tokens or len(info.token_types) != len(info.tokens):
        raise UserError("its tokenizer has no tokens or token types", **where)
    if model == "gpt2" and not info.merges:
        raise UserError("its byte-level BPE tokenizer has no merges (tokenizer.ggml.merges)", **where)
    if model == "llama" and len(info.scores) != len(info.tokens):
        raise UserError("its SentencePiece tokenizer has no score per token (tokenizer.ggml.scores)", **where)


def check_tensor_shapes(info: GGUFInfo, shape: dict) -> None:
    """One line naming the first tensor whose shape contradicts the file's own metadata (``shape``: litgpt's
    ``Config`` names, from :func:`litgpt_ext.gguf.configs.shape_of`): a file that would otherwise load as garbage or
    fail deep inside a converter."""
    n_embd, heads, groups = shape["n_embd"], shape["n_head"], shape["n_query_groups"]
    head_size = shape.get("head_size") or (n_embd // heads if n_embd and heads else None)
    expected = {
        "token_embd.weight": (shape["vocab_size"], n_embd),
        "output.weight": (shape["vocab_size"], n_embd),
    }
    for i in range(shape["n_layer"] or 0):
        expected |= {
            f"blk.{i}.attn_q.weight": (heads * head_size, n_embd),
            f"blk.{i}.attn_k.weight": (groups * head_size, n_embd),
            f"blk.{i}.attn_v.weight": (groups * head_size, n_embd),
            f"blk.{i}.attn_output.weight": (n_embd, heads * head_size),
            f"blk.{i}.ffn_gate.weight": (shape["intermediate_size"], n_embd),
            f"blk.{i}.ffn_up.weight": (shape["intermediate_size"], n_embd),
            f"blk.{i}.ffn_down.weight": (n_embd, shape["intermediate_size"]),
        }
    blocks = {int(name.split(".")[1]) for name in info.tensor_shapes if name.startswith("blk.")}
    if shape["n_layer"] is not None and blocks != set(range(shape["n_layer"])):
        raise UserError(f"its tensors hold {len(blocks)} blocks but {info.architecture}.block_count says "
                        f"{shape['n_layer']}", path=info.path, field="gguf_file")  # fmt: skip
    for name, want in expected.items():
        got = info.tensor_shapes.get(name)
        if got is not None and None not in want and got != want:
            raise UserError(f"tensor {name} is {tuple(got)} but the file's metadata makes it {want}",
                            path=info.path, field="gguf_file")  # fmt: skip
