"""``make_tiny_checkpoint``: a random-init litgpt checkpoint with a tokenizer trained on a local corpus.

This is the embedded default student for tests, demos and smoke runs: nothing is downloaded. The directory has
litgpt's layout (``lit_model.pth``, ``model_config.yaml``, ``tokenizer.json`` or ``tokenizer.model``,
``tokenizer_config.json``, ``generation_config.json``) so litgpt's own ``finetune_lora``, ``generate`` and
``merge_lora`` accept it, and each architecture family mirrors a real model so export code paths are exercised.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Literal

import torch

from litgpt_ext.checks import at_least
from litgpt_ext.errors import UserError
from litgpt_ext.io import atomic_write_json

Family = Literal["llama", "mistral", "qwen2", "gpt-neox", "phi"]

# Architecture switches per family, copied in spirit from litgpt's configs of the named real models.
_LLAMA = dict(
    rotary_percentage=1.0,
    parallel_residual=False,
    bias=False,
    norm_class_name="RMSNorm",
    mlp_class_name="LLaMAMLP",
    norm_eps=1e-5,
)
FAMILIES: dict[str, dict] = {
    "llama": dict(_LLAMA, hf_config=dict(org="meta-llama", name="Llama-2-7b-hf")),
    "mistral": dict(_LLAMA, hf_config=dict(org="mistralai", name="Mistral-7B-v0.1")),
    "qwen2": dict(
        _LLAMA, attn_bias=True, norm_eps=1e-6, rope_base=1_000_000, hf_config=dict(org="Qwen", name="Qwen2.5-0.5B")
    ),
    "gpt-neox": dict(
        rotary_percentage=0.25,
        parallel_residual=True,
        bias=True,
        norm_class_name="LayerNorm",
        mlp_class_name="GptNeoxMLP",
        hf_config=dict(org="EleutherAI", name="pythia-14m"),
    ),
    "phi": dict(
        rotary_percentage=0.5,
        parallel_residual=True,
        bias=True,
        shared_attention_norm=True,
        lm_head_bias=True,
        gelu_approximate="tanh",
        norm_class_name="LayerNorm",
        mlp_class_name="GptNeoxMLP",
        hf_config=dict(org="microsoft", name="phi-1_5"),
    ),
}

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


def _train_bpe(corpus: Path, vocab_size: int, out_dir: Path, extra_special: tuple[str, ...] = ()) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKENS[k] for k in ("pad", "bos", "eos", "unk")] + list(extra_special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(corpus)], trainer)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_tokenizer_config(out_dir, "PreTrainedTokenizerFast", clean_up_tokenization_spaces=False)
    return tokenizer.get_vocab_size()


def _write_tokenizer_config(out_dir: Path, tokenizer_class: str, **extra) -> None:
    """``tokenizer_config.json``: the special tokens, BOS added and EOS not (as litgpt's Llama tokenizers)."""
    config = {"tokenizer_class": tokenizer_class, **{f"{role}_token": token for role, token in SPECIAL_TOKENS.items()}}
    config.update(add_bos_token=True, add_eos_token=False, **extra, model_max_length=1_000_000)
    atomic_write_json(out_dir / "tokenizer_config.json", config)


def _train_sentencepiece(corpus: Path, vocab_size: int, out_dir: Path) -> int:
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "tokenizer"
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type="bpe",
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            byte_fallback=True,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        (out_dir / "tokenizer.model").write_bytes(prefix.with_suffix(".model").read_bytes())
    processor = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    _write_tokenizer_config(out_dir, "LlamaTokenizer", legacy=True)
    return processor.vocab_size()


def _copy_tokenizer(source: Path, out_dir: Path) -> int:
    """The tokenizer files of ``source`` (a checkpoint) in ``out_dir``; returns its vocabulary size."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.checkpoint_files import copy_tokenizer_files

    if not any((source / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        raise UserError("has no tokenizer.json or tokenizer.model", path=source, field="tokenizer_from")
    copy_tokenizer_files(source, out_dir)
    return Tokenizer(out_dir).vocab_size


SIZE_FIELDS = ("name", "block_size", "n_layer", "n_embd", "vocab_size", "padded_vocab_size", "n_head", "head_size",
               "intermediate_size", "rope_n_elem", "padding_multiple")  # fmt: skip


def scaled_down(name: str, n_layer: int, block_size: int) -> dict:
    """The architecture fields of litgpt's config ``name`` (what makes it that family), sized for a tiny model: at
    most 4 experts with 2 per token, a sliding window of a quarter of the context, a layer pattern with both kinds
    of layers where the real model mixes them."""
    import dataclasses

    from litgpt.config import Config

    try:
        big = Config.from_name(name)
    except (ValueError, KeyError):
        raise UserError(f"{name!r} is not a litgpt config name", field="like") from None
    if big.latent_attention:
        raise UserError(f"{name!r} uses latent attention, which has no tiny version here", field="like")
    arch = {k: v for k, v in dataclasses.asdict(big).items() if k not in SIZE_FIELDS}
    arch["mha"] = big.n_query_groups == big.n_head
    if big.n_expert:
        arch.update(n_expert=min(4, big.n_expert), n_expert_per_token=min(2, big.n_expert_per_token))
        arch.update(n_expert_groups=None, n_topk_groups=None, n_topk_scores_per_group=None, first_k_dense_replace=None)
        arch["n_shared_expert"] = min(1, big.n_shared_expert) if big.n_shared_expert else None
    if big.sliding_window_size:
        arch["sliding_window_size"] = min(big.sliding_window_size, max(4, block_size // 4))
    for key in ("sliding_window_indices", "rope_indices"):
        pattern = arch.get(key)
        if pattern:
            mixed = len(set(pattern)) > 1
            arch[key] = [1] * (n_layer - 1) + [0] if mixed and n_layer > 1 else [pattern[0]] * n_layer
    return arch


def _init_weights(model: torch.nn.Module, n_layer: int) -> None:
    """GPT-2 style init (std 0.02, residual projections scaled by depth) so tiny models learn quickly."""
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("attn.proj", "mlp.proj", "mlp.fc_2")) else 0.02
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)


DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "artifacts" / "demo" / "corpus.txt"


def make_tiny_checkpoint(
    out_dir: Path = Path("checkpoints/tiny"),
    corpus: Path = DEFAULT_CORPUS,
    tokenizer: Literal["bpe", "sentencepiece"] = "bpe",
    model: Family = "llama",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_query_groups: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    padded_vocab_size: int | None = None,
    block_size: int = 512,
    seed: int = 42,
    tokenizer_from: Path | None = None,
    special_tokens: list[str] | None = None,
    chat_template: str | None = None,
    like: str | None = None,
) -> Path:
    """Write a random-init litgpt checkpoint with a tokenizer trained on a local text corpus (nothing downloaded).

    Args:
        out_dir: Checkpoint directory to create (litgpt layout).
        corpus: UTF-8 text file the tokenizer is trained on (default: the embedded demo corpus).
        tokenizer: ``bpe`` (HF ``tokenizers`` byte-level BPE, writes tokenizer.json) or ``sentencepiece``
            (writes tokenizer.model).
        model: Architecture family to mirror: llama, mistral, qwen2 (qkv bias), gpt-neox (Pythia) or phi.
        n_layer: Number of transformer blocks.
        n_embd: Embedding width.
        n_head: Attention heads.
        n_query_groups: Key/value heads (grouped-query attention); default: n_head // 2 for llama-like families,
            n_head otherwise.
        intermediate_size: MLP width; default 4 * n_embd (8/3 * n_embd rounded for LLaMA MLPs).
        vocab_size: Target tokenizer vocabulary size (the trainer may produce fewer on a small corpus).
        padded_vocab_size: Embedding / LM-head rows (>= the tokenizer's vocabulary; default: rounded up to 64).
            Set e.g. 32000 to give a tiny model a real student's vocabulary cost in benchmarks.
        block_size: Context length.
        seed: Seed for the random weights.
        tokenizer_from: Copy the tokenizer files of this checkpoint instead of training one (a student that shares
            a teacher's vocabulary, for logit distillation); --corpus and --vocab_size are then unused.
        special_tokens: Extra special tokens of a BPE tokenizer (a chat model's turn markers, e.g.
            ``[<|im_start|>, <|im_end|>]``), each one id.
        chat_template: A Jinja chat template (text, or a file holding it) for ``tokenizer_config.json``, so the
            tiny model stands in for an instruct student (``--prompt_style chat_template``).
        like: A litgpt config name (``Qwen3-30B-A3B``, ``Gemma-2-2b``, ...): the tiny model has that model's
            architecture (MoE, qk-norm, softcapping, sliding-window layers, RoPE scaling, biases) and name at the
            size the other flags give; --model is then unused.
    """
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.utils import save_config

    out_dir, corpus = Path(out_dir), Path(corpus)
    if not corpus.is_file():
        raise UserError("corpus file not found", path=corpus)
    if model not in FAMILIES:
        raise UserError(f"unknown model family {model!r}; choose one of {sorted(FAMILIES)}", field="model")
    for flag, value in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head), ("block_size", block_size)):
        at_least(flag, value, 1)
    at_least("n_query_groups", n_query_groups, 1)
    at_least("intermediate_size", intermediate_size, 1)
    at_least("vocab_size", vocab_size, 64)
    at_least("padded_vocab_size", padded_vocab_size, 1)
    if n_embd % n_head:
        raise UserError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})", field="n_embd")
    family = dict(FAMILIES[model]) if like is None else scaled_down(like, n_layer, block_size)
    llama_like = family.get("mlp_class_name") in ("LLaMAMLP", "GemmaMLP", "LLaMAMoE")
    if n_query_groups is None:
        n_query_groups = max(1, n_head // 2) if llama_like else n_head
    if like is not None and family.pop("n_query_groups") == 1:  # multi-query stays multi-query
        n_query_groups = 1
    if like is not None and family.pop("mha"):
        n_query_groups = n_head
    if intermediate_size is None:
        intermediate_size = 64 * math.ceil(8 * n_embd / 3 / 64) if llama_like else 4 * n_embd
    if family.get("moe_intermediate_size"):
        family["moe_intermediate_size"] = intermediate_size // 2
    if family.get("attention_scores_scalar"):
        family["attention_scores_scalar"] = n_embd // n_head
    if model == "mistral" and like is None:
        family["sliding_window_size"] = block_size

    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is not None:
        actual_vocab = _copy_tokenizer(Path(tokenizer_from), out_dir)
    else:
        if tokenizer == "bpe":
            actual_vocab = _train_bpe(corpus, vocab_size, out_dir, tuple(special_tokens or ()))
        else:
            if special_tokens:
                raise UserError("extra special tokens are supported with the bpe tokenizer", field="special_tokens")
            actual_vocab = _train_sentencepiece(corpus, vocab_size, out_dir)
    if chat_template is not None:
        import json

        source = Path(chat_template).read_text() if Path(chat_template).suffix == ".jinja" else chat_template
        config_path = out_dir / "tokenizer_config.json"
        atomic_write_json(config_path, {**json.loads(config_path.read_text()), "chat_template": source})

    config = Config(
        name=like or f"tiny-{model}",
        block_size=block_size,
        vocab_size=actual_vocab,
        padded_vocab_size=max(padded_vocab_size or 0, 64 * math.ceil(actual_vocab / 64)),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=n_query_groups,
        intermediate_size=intermediate_size,
        **family,
    )
    torch.manual_seed(seed)
    gpt = GPT(config)
    _init_weights(gpt, n_layer)
    torch.save(gpt.state_dict(), out_dir / "lit_model.pth")
    save_config(config, out_dir)
    atomic_write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    )
    n_params = sum(p.numel() for p in gpt.parameters())
    print(
        f"tiny {like or model} checkpoint: {n_params / 1e6:.2f}M params, vocab {actual_vocab} ({tokenizer}), "
        f"{n_layer} layers -> {out_dir}"
    )
    return out_dir
