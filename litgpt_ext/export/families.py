"""Which architecture a litgpt config is, its transformers ``config.json``, and its weight-name mapping.

The mapping of tensors is litgpt's own (``litgpt.scripts.convert_lit_checkpoint.copy_weights_*``), applied one
tensor at a time so nothing forces the whole model into memory. The family is read from the architecture itself
(MLP / norm classes, biases, sliding window), not from the model's name, so renamed and tiny models export too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from litgpt.config import Config
from litgpt.scripts import convert_lit_checkpoint as lit

from litgpt_ext.errors import UserError

SUPPORTED = (
    "llama (incl. Llama-3 RoPE scaling), mistral, mixtral (MoE), qwen2 (qkv bias), qwen3 (qk-norm; dense or MoE), "
    "gemma (1, 2 and 3), gpt-neox (Pythia), phi (phi-1.5 / phi-2)"
)


@dataclass
class Family:
    name: str
    architecture: str
    model_type: str
    copy: Callable
    peft_modules: dict[str, str] | None
    """litgpt module path (after the block index) -> HF module name, for PEFT adapters; None: not supported."""
    no_peft: str = "its fused qkv has no per-projection adapters"
    """Why PEFT export is refused, when it is."""


_LLAMA_PEFT = {
    "attn.qkv": "self_attn.{q,k,v}_proj",
    "attn.proj": "self_attn.o_proj",
    "mlp.fc_1": "mlp.gate_proj",
    "mlp.fc_2": "mlp.up_proj",
    "mlp.proj": "mlp.down_proj",
}
_PHI_PEFT = {
    "attn.qkv": "self_attn.{q,k,v}_proj",
    "attn.proj": "self_attn.dense",
    "mlp.fc": "mlp.fc1",
    "mlp.proj": "mlp.fc2",
}


def _unsupported(config: Config, why: str) -> UserError:
    return UserError(f"cannot export {config.name!r}: {why}; supported families: {SUPPORTED}", field="model_config")


def _moe_family(config: Config, qwen3: bool) -> Family:
    """Mixtral and Qwen3-MoE: litgpt's router (top-k of the logits, softmax over those) is theirs (softmax, top-k,
    renormalised); grouped routers, shared experts and scaled routing are other models."""
    if config.n_expert_groups or config.n_shared_expert or config.routed_scaling_factor != 1.0:
        raise _unsupported(config, "an MoE with grouped routing, shared experts or scaled routing weights")
    no_peft = "adapters on MoE experts are not exported"
    if qwen3:
        return Family("qwen3-moe", "Qwen3MoeForCausalLM", "qwen3_moe", lit.copy_weights_qwen_3, None, no_peft)
    return Family("mixtral", "MixtralForCausalLM", "mixtral", lit.copy_weights_llama, None, no_peft)


def _copy_gemma_2(config: Config, out: dict, weights: dict) -> None:
    """litgpt's Gemma-2 copy, keeping the LM head (litgpt drops it, assuming it is tied; a finetune may untie it)."""
    lit.copy_weights_gemma_2(config, out, weights, untie_weights=False)


def _copy_gemma_3(config: Config, out: dict, weights: dict) -> None:
    """litgpt's Gemma-3 copy, keeping the LM head (as for Gemma 2)."""
    lit.copy_weights_gemma_3(config, out, weights, untie_weights=False)


def _gemma_3(config: Config) -> Family:
    """Gemma 3 (text): Gemma 2's norms around both sublayers without its softcapping, q/k RMSNorms, sliding-window
    layers that take the local RoPE base and global layers the global one (transformers ties the RoPE to the
    layer's kind: a checkpoint whose ``rope_indices`` differ from its windows has no transformers form)."""
    windows = config.sliding_window_indices or [0] * config.n_layer
    if (
        not (config.post_attention_norm and config.post_mlp_norm and config.scale_embeddings)
        or config.final_logit_softcapping
        or config.attention_logit_softcapping
        or config.norm_qk_type != "default"
        or config.attn_bias
        or config.rotary_percentage != 1.0
        or list(config.rope_indices or []) != list(windows)
        or (config.rope_adjustments and set(config.rope_adjustments) != {"factor"})
    ):
        raise _unsupported(config, "a Gemma 3 variant transformers has no form for (rope_indices other than its "
                           "sliding windows, RoPE scaling other than linear, biases, softcapping)")  # fmt: skip
    return Family("gemma3", "Gemma3ForCausalLM", "gemma3_text", _copy_gemma_3, _LLAMA_PEFT)


def _gemma(config: Config) -> Family:
    """Gemma 1: (1 + w) RMSNorms, scaled embeddings, a tanh-GELU MLP. Gemma 2 adds softcapped attention and logits,
    norms after both sublayers and alternating sliding-window layers; Gemma 3 (:func:`_gemma_3`) q/k norms and a
    local RoPE base for the windowed layers, without the softcapping."""
    if config.norm_qk and config.rope_local_base_freq is not None:
        return _gemma_3(config)
    gemma_1 = not (
        config.post_attention_norm
        or config.post_mlp_norm
        or config.final_logit_softcapping
        or config.attention_logit_softcapping
        or config.sliding_window_size
    )
    if gemma_1 and config.scale_embeddings and not (config.norm_qk or config.attn_bias or config.rope_adjustments):
        return Family("gemma", "GemmaForCausalLM", "gemma", lit.copy_weights_llama, _LLAMA_PEFT)
    if (
        not (config.post_attention_norm and config.post_mlp_norm and config.scale_embeddings)
        or not (config.final_logit_softcapping and config.attention_logit_softcapping)
        or config.norm_qk
        or config.attn_bias
        or config.rope_indices is not None
        or config.rope_adjustments
        or config.rotary_percentage != 1.0
    ):
        raise _unsupported(config, "a Gemma variant other than Gemma 1, 2 or 3")
    return Family("gemma2", "Gemma2ForCausalLM", "gemma2", _copy_gemma_2, _LLAMA_PEFT)


def detect_family(config: Config) -> Family:
    if config.mlp_class_name == "GemmaMLP":
        return _gemma(config)
    moe = config.mlp_class_name == "LLaMAMoE" and bool(config.n_expert)
    if not moe and (config.n_expert or config.mlp_class_name not in ("LLaMAMLP", "GptNeoxMLP")):
        raise _unsupported(config, f"MLP {config.mlp_class_name!r} is not supported")
    qwen3 = config.norm_qk and config.norm_qk_type == "default" and not config.attn_bias
    if (
        (config.norm_qk and not qwen3)
        or config.post_attention_norm
        or config.post_mlp_norm
        or config.scale_embeddings
        or config.final_logit_softcapping
        or config.attention_logit_softcapping
        or config.latent_attention
    ):
        raise _unsupported(
            config, "this architecture variant (qk-norm, extra norms, softcapping, ...) is not supported"
        )
    if config.mlp_class_name in ("LLaMAMLP", "LLaMAMoE"):
        if config.norm_class_name != "RMSNorm" or config.parallel_residual or config.bias:
            raise _unsupported(config, "a LLaMA MLP with LayerNorm / parallel residual / biases")
        if moe:
            if config.attn_bias or (config.norm_qk and not qwen3):
                raise _unsupported(config, "an MoE with qkv biases or this qk-norm")
            return _moe_family(config, qwen3)
        if qwen3:
            return Family("qwen3", "Qwen3ForCausalLM", "qwen3", lit.copy_weights_qwen_3, _LLAMA_PEFT)
        if config.attn_bias:
            return Family("qwen2", "Qwen2ForCausalLM", "qwen2", lit.copy_weights_qwen_2_5, _LLAMA_PEFT)
        if config.sliding_window_size:
            return Family("mistral", "MistralForCausalLM", "mistral", lit.copy_weights_llama, _LLAMA_PEFT)
        return Family("llama", "LlamaForCausalLM", "llama", lit.copy_weights_llama, _LLAMA_PEFT)
    if config.norm_class_name != "LayerNorm" or not config.parallel_residual:
        raise _unsupported(config, "a GPT-NeoX MLP needs LayerNorm and a parallel residual")
    if config.shared_attention_norm:
        if not config.lm_head_bias:  # phi-1.5 / phi-2 have one; Falcon's layout (one shared norm, no head bias) not
            raise _unsupported(config, "a parallel-residual model with one shared norm and no LM-head bias (Falcon)")
        return Family("phi", "PhiForCausalLM", "phi", lit.copy_weights_phi, _PHI_PEFT)
    if not config.bias or config.n_query_groups != config.n_head:  # GPT-NeoX: biases everywhere, one kv per head
        raise _unsupported(config, "a parallel-residual model without biases or with grouped keys (Falcon)")
    return Family("gpt-neox", "GPTNeoXForCausalLM", "gpt_neox", lit.copy_weights_gpt_neox, None)


def _act(config: Config) -> str:
    if config.mlp_class_name in ("LLaMAMLP", "LLaMAMoE"):  # SwiGLU, in every expert too
        return "silu"
    if config.mlp_class_name == "GemmaMLP":
        return "gelu_pytorch_tanh" if config.gelu_approximate == "tanh" else "gelu"
    return "gelu_new" if config.gelu_approximate == "tanh" else "gelu"


def hf_config(
    config: Config, family: Family, dtype: torch.dtype, bos_id: int | None, eos_id: int | None, tied: bool = False
) -> dict:
    """The ``config.json`` transformers reads for this family (``tied``: the LM head is the input embedding)."""
    common = {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        "vocab_size": config.padded_vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "max_position_embeddings": config.block_size,
        "hidden_act": _act(config),
        "tie_word_embeddings": tied,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "use_cache": True,
    }
    if family.name in ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3-moe"):
        common |= {
            "num_key_value_heads": config.n_query_groups,
            "head_dim": config.head_size,
            "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_base,
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
        }
        if config.rope_adjustments:
            adj = config.rope_adjustments
            if "low_freq_factor" not in adj:
                raise _unsupported(config, f"RoPE adjustments {sorted(adj)}")
            common["rope_scaling"] = {
                "rope_type": "llama3",
                "factor": adj["factor"],
                "low_freq_factor": adj["low_freq_factor"],
                "high_freq_factor": adj["high_freq_factor"],
                "original_max_position_embeddings": adj["original_max_seq_len"],
            }
        if family.name == "mistral":
            common["sliding_window"] = config.sliding_window_size
        if family.name in ("qwen2", "qwen3", "qwen3-moe"):
            common |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": config.n_layer}
        expert_size = config.moe_intermediate_size or config.intermediate_size
        if family.name == "mixtral":
            common |= {"num_local_experts": config.n_expert, "num_experts_per_tok": config.n_expert_per_token,
                       "intermediate_size": expert_size, "sliding_window": config.sliding_window_size,
                       "router_jitter_noise": 0.0, "output_router_logits": False}  # fmt: skip
        if family.name == "qwen3-moe":
            common |= {"num_experts": config.n_expert, "num_experts_per_tok": config.n_expert_per_token,
                       "moe_intermediate_size": expert_size, "norm_topk_prob": True, "decoder_sparse_step": 1,
                       "mlp_only_layers": [], "output_router_logits": False}  # fmt: skip
        if config.rotary_percentage != 1.0:
            raise _unsupported(config, "partial rotary embeddings in a LLaMA-style model")
        return common
    gemma = common | {
        "hidden_activation": _act(config),
        "num_key_value_heads": config.n_query_groups,
        "head_dim": config.head_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
    }
    if family.name == "gemma":
        return gemma
    if family.name == "gemma2":
        sliding = config.sliding_window_indices or [0] * config.n_layer
        return gemma | {
            "query_pre_attn_scalar": config.attention_scores_scalar or config.head_size,
            "sliding_window": config.sliding_window_size,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
            "final_logit_softcapping": config.final_logit_softcapping,
            "attn_logit_softcapping": config.attention_logit_softcapping,
            # transformers' SDPA attention for Gemma 2 leaves the attention softcapping out (measured: 6.6e-4 off
            # litgpt's logits after a short finetune, 0 with eager); this key makes from_pretrained load eager
            "_attn_implementation": "eager",
        }
    if family.name == "gemma3":
        sliding = config.sliding_window_indices or [0] * config.n_layer
        full = {"rope_type": "default", "rope_theta": config.rope_base}
        if config.rope_adjustments:
            full = {"rope_type": "linear", "rope_theta": config.rope_base, "factor": config.rope_adjustments["factor"]}
        return {key: value for key, value in gemma.items() if key != "rope_theta"} | {
            "query_pre_attn_scalar": config.attention_scores_scalar or config.head_size,
            "sliding_window": config.sliding_window_size,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "rope_parameters": {"full_attention": full,
                                "sliding_attention": {"rope_type": "default",
                                                      "rope_theta": config.rope_local_base_freq}},
            "use_bidirectional_attention": False,
        }  # fmt: skip
    if family.name == "gpt-neox":
        return common | {
            "rotary_pct": config.rotary_percentage,
            "rotary_emb_base": config.rope_base,
            "layer_norm_eps": config.norm_eps,
            "use_parallel_residual": True,
            "attention_bias": True,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
        }
    return common | {
        "num_key_value_heads": config.n_query_groups,
        "partial_rotary_factor": config.rotary_percentage,
        "rope_theta": config.rope_base,
        "layer_norm_eps": config.norm_eps,
        "qk_layernorm": False,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
    }


def convert_tensor(family: Family, config: Config, name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """HF name -> tensor for one litgpt tensor (a fused qkv gives three, or one re-laid-out for GPT-NeoX)."""
    out: dict[str, torch.Tensor] = {}
    try:
        family.copy(config, out, {name: tensor})
    except KeyError:
        raise UserError(f"unexpected tensor {name!r} for a {family.name} model", field="lit_model.pth") from None
    is_norm = "norm" in name or name.startswith("transformer.ln_f.")
    if family.name.startswith("gemma") and is_norm and not _unit_offset_norms(config):
        # transformers' Gemma classes always scale by (1 + w); litgpt only where its Config says so (it keys that
        # on the config's name: a checkpoint named "gemma-3-1b-it" computes plain RMSNorms) — w - 1 makes
        # transformers compute what litgpt does
        out = {key: value - 1 for key, value in out.items()}
    return out


def _unit_offset_norms(config: Config) -> bool:
    """Whether litgpt builds this config's RMSNorms in Gemma's ``(1 + w)`` form (asked of litgpt's own norm class)."""
    return bool(getattr(config.norm_class, "keywords", {}).get("add_unit_offset", False))
