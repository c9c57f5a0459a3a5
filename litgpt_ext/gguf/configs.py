"""Which litgpt ``Config`` a GGUF file is: litgpt's own config of the file's family and shape, chosen by the name its
metadata gives, or — when litgpt has no config of that shape (Gemma-3-270M, a user's own small model, the tests' tiny
files) — one derived from the family's config with every hyperparameter the file states.

A derived config is registered with litgpt only while ``convert_hf_checkpoint`` runs (:func:`registered`); the
checkpoint's ``model_config.yaml`` holds all of it, which is how litgpt reads a checkpoint back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from litgpt_ext.errors import UserError
from litgpt_ext.gguf.reader import GGUFInfo

INSTRUCT_MARKS = ("instruct", "-it", "chat")
FAMILIES = {"llama": "SmolLM2-135M", "qwen2": "Qwen2.5-0.5B", "qwen3": "Qwen3-0.6B", "gemma3": "Gemma-3-1b-it"}
"""Each architecture's litgpt config to derive from: the name prefix picks litgpt's weight layout in
``convert_hf_checkpoint`` (``Qwen2.5``: biased q/k/v; ``Qwen3``: q/k norms; ``Gemma-3``: ``(1 + w)`` norms, four
norms per block, sliding-window layers; else Llama's)."""
PREFIXES = {"llama": "", "qwen2": "Qwen2.5-", "qwen3": "Qwen3-", "gemma3": "Gemma-3-"}
GEMMA3_GLOBAL_EVERY = 6
"""Gemma 3 attends globally in every sixth layer and over a sliding window in the others (llama.cpp's
``swa_pattern``; litgpt's ``sliding_window_indices`` / ``rope_indices``)."""


def shape_of(info: GGUFInfo) -> dict:
    """The GGUF hyperparameters under litgpt's ``Config`` names (``None`` where the file does not say)."""
    return {
        "n_layer": info.get("block_count"),
        "n_embd": info.get("embedding_length"),
        "n_head": info.get("attention.head_count"),
        "n_query_groups": info.get("attention.head_count_kv", info.get("attention.head_count")),
        "head_size": info.get("attention.key_length"),
        "intermediate_size": info.get("feed_forward_length"),
        "vocab_size": info.get("vocab_size", len(info.tokens)),
    }


def _differences(config, shape: dict) -> list[str]:
    wrong = []
    for key, value in shape.items():
        have = getattr(config, key)
        if key == "vocab_size":  # files carry the padded embedding table (Qwen: 151,643 tokens in 151,936 rows)
            have = value if value in (config.vocab_size, config.padded_vocab_size) else config.padded_vocab_size
        if value is not None and have != value:
            wrong.append(f"{key} {have} != {value}")
    return wrong


def _of_family(config, architecture: str) -> bool:
    mlp = "GemmaMLP" if architecture == "gemma3" else "LLaMAMLP"
    if config.norm_class_name != "RMSNorm" or config.mlp_class_name != mlp:
        return False
    if architecture == "llama":
        return not config.name.lower().startswith(("qwen", "gemma", "phi", "olmo", "qwq"))
    return config.name.startswith(PREFIXES[architecture])


def litgpt_config(info: GGUFInfo, model_name: str | None):
    """The litgpt ``Config`` for this file: ``model_name``'s (checked against the file's shape), else the one
    config of the file's family and shape whose name its metadata (basename, size) points to — the instruct variant
    when the file carries a chat template — else one derived from the file (:func:`derived_config`)."""
    from litgpt.config import Config, configs

    shape = shape_of(info)
    if model_name is not None:
        try:
            config = Config.from_name(model_name)
        except (ValueError, KeyError):
            raise UserError(f"{model_name!r} is not a litgpt config name", field="model_name") from None
        wrong = _differences(config, shape)
        if wrong:
            raise UserError(f"{model_name!r} does not have this file's shape: {', '.join(wrong)}", field="model_name")
        return config
    same = [
        c for c in (Config(**e) for e in configs) if _of_family(c, info.architecture) and not _differences(c, shape)
    ]
    if not same:
        return derived_config(info)
    hints = [str(info.metadata.get(k, "")).lower() for k in ("general.basename", "general.size_label")]
    named = [c for c in same if all(h in c.name.lower() for h in hints if h)] or same
    instruct = info.chat_template is not None
    kind = [c for c in named if any(m in c.name.lower() for m in INSTRUCT_MARKS) == instruct]
    chosen = kind or named
    if len(chosen) != 1:
        found = ", ".join(c.name for c in chosen[:8])
        raise UserError(
            f"cannot tell which litgpt config this file is (configs of its shape: {found}): pass --model_name",
            path=info.path,
            field="model_name",
        )
    return chosen[0]


def derived_config(info: GGUFInfo):
    """A litgpt ``Config`` for a file of a known family whose shape no litgpt config has: the family's config with
    the file's shape, context, rope base, norm epsilon and biases. Files whose metadata asks for what a derived
    config would silently drop (rope scaling) are refused."""
    from litgpt.config import Config, name_to_config

    where = {"path": info.path, "field": "model_name"}
    scaling = [k for k in info.metadata if ".rope.scaling." in k and info.metadata[k] not in (None, "none")]
    if scaling:
        raise UserError(f"no litgpt config has this file's shape, and its {scaling[0]} cannot be carried over to "
                        "a derived one: pass --model_name", **where)  # fmt: skip
    shape = {k: v for k, v in shape_of(info).items() if v is not None}
    missing = {"n_layer", "n_embd", "n_head", "intermediate_size"} - set(shape)
    if missing:
        raise UserError(f"its metadata lacks {', '.join(sorted(missing))}", path=info.path, field="gguf_file")
    base = dict(name_to_config[FAMILIES[info.architecture]])
    label = "-".join(str(info.metadata.get(k) or "") for k in ("general.basename", "general.size_label")).strip("-")
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", label or info.path.stem).strip("-")
    prefix = PREFIXES[info.architecture]
    name = prefix + (slug[len(prefix) :] if slug.lower().startswith(prefix.lower()) else slug)
    tokens = len(info.tokens)
    head_size = shape.get("head_size") or shape["n_embd"] // shape["n_head"]
    values = {
        **base,
        **shape,
        "name": name,
        "hf_config": {"org": str(info.metadata.get("general.organization") or "gguf"), "name": name},
        "vocab_size": tokens,
        "padded_vocab_size": shape.get("vocab_size", tokens),
        "block_size": int(info.get("context_length") or base["block_size"]),
        "rope_base": int(info.get("rope.freq_base") or base.get("rope_base", 10000)),
        "norm_eps": float(info.get("attention.layer_norm_rms_epsilon") or base.get("norm_eps", 1e-5)),
        "attn_bias": "blk.0.attn_q.bias" in info.tensor_shapes,
        "rotary_percentage": (info.get("rope.dimension_count") or head_size) / head_size,
    }
    if "head_size" not in shape:
        values.pop("head_size", None)
    if info.architecture == "gemma3":
        pattern = [0 if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 else 1 for i in range(shape["n_layer"])]
        window = info.get("attention.sliding_window") or base["sliding_window_size"]
        values |= {"sliding_window_size": int(window), "sliding_window_indices": pattern, "rope_indices": pattern}
    config = Config(**values)
    print(f"no litgpt config has this file's shape: {name}, derived from {FAMILIES[info.architecture]}")
    return config


@contextmanager
def registered(config) -> Iterator[None]:
    """``config`` known to ``litgpt.config.Config.from_name`` for the block, when it is not one of litgpt's own."""
    from litgpt.config import name_to_config

    if config.name in name_to_config:
        yield
        return
    name_to_config[config.name] = {k: v for k, v in asdict(config).items() if k not in ("rope_n_elem",)}
    try:
        yield
    finally:
        name_to_config.pop(config.name, None)
