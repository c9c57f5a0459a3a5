"""Tiny GGUF files written the way llama.cpp's converter writes them, from tiny transformers models.

A random-init transformers model of each family (``llama``, ``qwen2``, ``qwen3``) is the reference; its weights go
into a GGUF under llama.cpp's tensor names (``llama`` files carry q/k rows permuted for llama.cpp's rope, as
``convert_hf_to_gguf.py`` writes them), with a byte-level BPE vocabulary and merges trained on the demo corpus, the
pre-tokenizer the family names, ChatML special tokens and a chat template. ``convert_gguf`` must give back the
reference's logits and a tokenizer that splits text as the family's own ``tokenizer.json`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PRE = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}
SPLIT = {  # each family's own tokenizer.json split (written out here, not taken from the converter)
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def reference_tokenizer(corpus: Path, pre: str, vocab_size: int = 400):
    """A byte-level BPE trained on ``corpus`` with the family's split (and Qwen's NFC), ChatML specials added."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train([str(corpus)], trainer)
    tok.add_special_tokens(SPECIAL)
    return tok


def reference_model(family: str, vocab_size: int, seed: int = 0):
    """A tiny random transformers model of ``family`` (2 layers, 64 wide, 4 heads in 2 groups)."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                  rope_theta=10000.0, tie_word_embeddings=False)  # fmt: skip
    if family == "llama":
        config = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(config)
    elif family == "qwen2":
        config = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.Qwen3Config(**common, head_dim=32)  # (Qwen3's heads are wider than n_embd / n_head)
        model = transformers.Qwen3ForCausalLM(config)
    with torch.no_grad():  # (transformers initializes biases and norms to constants: make them count)
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def byte_level_fields(tokenizer, family: str) -> dict:
    """A ``tokenizers`` byte-level BPE as llama.cpp's converter writes it into a GGUF header."""
    import json

    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return {"model": "gpt2", "pre": PRE[family], "tokens": tokens, "types": [3 if t in SPECIAL else 1 for t in tokens],
            "merges": [" ".join(m) if isinstance(m, list) else m for m in merges], "bos": vocab["<|endoftext|>"],
            "eos": vocab["<|im_end|>"], "pad": vocab["<|endoftext|>"], "add_bos": False}  # fmt: skip


def sentencepiece_fields(corpus: Path, tmp: Path, vocab_size: int = 400) -> tuple[dict, object]:
    """A SentencePiece BPE (byte fallback, digits split, no normalization: as Llama 2's) trained on ``corpus``, as llama.cpp's converter writes it
    into a GGUF header (pieces, scores, token types; BOS added); returns the fields and the processor itself."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp / "sp"), vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, pad_id=-1, bos_id=1, eos_id=2, unk_id=0,
                                   hard_vocab_limit=False, minloglevel=2, split_digits=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=str(tmp / "sp.model"))
    n = sp.vocab_size()
    kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    fields = {"model": "llama", "tokens": [sp.id_to_piece(i) for i in range(n)], "types": kinds,
              "scores": [sp.get_score(i) for i in range(n)], "bos": 1, "eos": 2, "pad": 0, "add_bos": True}  # fmt: skip
    return fields, sp


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order for ``llama`` files (``convert_hf_to_gguf.py``'s ``LlamaModel.permute``)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, family: str, model, tokenizer, *, name: str = "Tiny", shape_lie: bool = False,
               tokenizer_model: str = "gpt2") -> Path:  # fmt: skip
    """``model`` and ``tokenizer`` (a ``tokenizers`` byte-level BPE, or the header fields of another) as a GGUF
    file of ``family`` (F32 tensors). ``shape_lie``: the metadata's feed-forward length disagrees with the tensors;
    ``tokenizer_model``: another ``tokenizer.ggml.model`` than the tokenizer's."""
    from gguf import GGUFWriter

    cfg = model.config
    writer = GGUFWriter(str(path), family)
    writer.add_name(name)
    writer.add_basename(name)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size + (32 if shape_lie else 0))
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if family == "qwen3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    fields = tokenizer if isinstance(tokenizer, dict) else byte_level_fields(tokenizer, family)
    writer.add_tokenizer_model(tokenizer_model if tokenizer_model != "gpt2" else fields["model"])
    if fields.get("pre"):
        writer.add_tokenizer_pre(fields["pre"])
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    if fields.get("merges"):
        writer.add_token_merges(fields["merges"])
    if fields.get("scores"):
        writer.add_token_scores(fields["scores"])
    writer.add_bos_token_id(fields["bos"])
    writer.add_eos_token_id(fields["eos"])
    writer.add_pad_token_id(fields["pad"])
    writer.add_add_bos_token(fields["add_bos"])
    writer.add_chat_template(CHATML)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
             "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
             "self_attn.k_norm.weight": "attn_k_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            w = state.get(f"model.layers.{i}.{hf}")
            if w is None:
                continue
            if family == "llama" and hf in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
                w = _permute(w, cfg.num_attention_heads if "q_proj" in hf else cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gg}", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sentencepiece_of(gguf_path: Path):
    """SentencePiece's own processor for a GGUF's SentencePiece vocabulary: a BPE ``ModelProto`` built from the
    header's pieces, scores and types (no normalization, a dummy prefix as ``add_space_prefix`` says, byte
    fallback) — an implementation of the algorithm independent of the ``tokenizers`` one the converter writes."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    from litgpt_ext.gguf.reader import read_gguf

    info = read_gguf(gguf_path)
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = 6 in info.token_types
    proto.trainer_spec.unk_id = info.token_id("unknown") or 0
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(info.metadata.get("tokenizer.ggml.add_space_prefix", True))
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for text, score, kind in zip(info.tokens, info.scores, info.token_types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text.replace(" ", "▁"), score, kind
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
