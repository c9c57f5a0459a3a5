"""Structured pruning of a litgpt checkpoint's weights: whole blocks (depth), and MLP channels, attention heads and
embedding channels (width), as Minitron cuts them. The scores that choose what goes are :mod:`.importance`'s; this
module only removes what it is told to and writes the smaller model's config and weights.

Width pruning keeps the layout valid: the same number of MLP channels and of query groups in every block (each block
its own best ones), whole query groups for grouped-query attention (a group and its query heads go together, so the
heads per group stay as they were), and one set of embedding channels for the whole residual stream — embeddings, every
norm, every projection into and out of it, the LM head (a tied head stays tied: it is the embedding). Head size and
RoPE dimensions are untouched. An RMSNorm over fewer channels divides by a smaller mean: its kept weights are scaled by
``sqrt(n_embd / new n_embd)`` and its epsilon by ``n_embd / new n_embd``, which makes the cut exact when the removed
channels carry nothing (and is the expected correction when they carry little; a model with q/k norms keeps its
epsilon, which they share); a LayerNorm's centring has no such correction, so for LayerNorm families the
embedding cut is approximate.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from litgpt.config import Config

from litgpt_ext.errors import UserError

MLP_NAMES = {"LLaMAMLP": ("fc_1", "fc_2"), "GemmaMLP": ("fc_1", "fc_2"), "GptNeoxMLP": ("fc",)}
"""MLP classes whose channels width pruning knows: the projections into the channels (rows cut) — ``proj`` takes
them out (columns cut)."""
NORMS = ("norm_1", "norm_2", "post_attention_norm", "post_mlp_norm")


def width_refusals(config: Config, intermediate: bool, heads: bool, embedding: bool) -> list[str]:
    """What stops the requested width cuts on this architecture (empty: all can be done)."""
    why = []
    if config.latent_attention is not None and (heads or embedding):
        why.append("multi-head latent attention (its projections are not cut)")
    if (intermediate or embedding) and config.mlp_class_name not in MLP_NAMES:
        why.append(
            f"MLP {config.mlp_class_name!r} (an MoE's experts and router are not cut; known: {', '.join(MLP_NAMES)})"
        )
    if config.norm_qk and config.norm_qk_type != "default" and heads:
        why.append("a q/k norm over all heads together (OLMo 2)")
    if embedding and config.scale_embeddings:
        why.append("embeddings scaled by sqrt(n_embd) (Gemma): the scale would change with the width")
    if embedding and config.norm_class_name not in ("RMSNorm", "LayerNorm"):
        why.append(f"norm {config.norm_class_name!r}")
    return why


def depth_config(config: Config, keep: list[int]) -> Config:
    """``config`` with only the blocks ``keep`` (in order): per-layer patterns (sliding windows, local RoPE) follow."""
    changes: dict = {"n_layer": len(keep)}
    for name in ("sliding_window_indices", "rope_indices"):
        pattern = getattr(config, name)
        if pattern is not None:
            changes[name] = [pattern[i] for i in keep]
    if config.first_k_dense_replace:
        raise UserError("dropping blocks of an MoE whose first blocks are dense is not supported", field="n_layer")
    return _replaced(config, **changes)


def drop_blocks(state: dict[str, torch.Tensor], keep: list[int]) -> dict[str, torch.Tensor]:
    """The state dict with only blocks ``keep``, renumbered 0..len(keep)-1."""
    new_index = {old: new for new, old in enumerate(keep)}
    out = {}
    for key, value in state.items():
        if key.startswith("transformer.h."):
            index, rest = key[len("transformer.h.") :].split(".", 1)
            if int(index) not in new_index:
                continue
            key = f"transformer.h.{new_index[int(index)]}.{rest}"
        out[key] = value
    return out


@dataclasses.dataclass
class WidthPlan:
    """What width pruning keeps (indices into the teacher's dimensions; None: that dimension stays whole)."""

    embedding: torch.Tensor | None = None
    """Kept residual-stream channels (``n_embd``), sorted."""
    mlp: list[torch.Tensor] | None = None
    """Per block: kept MLP channels (``intermediate_size``), sorted."""
    groups: list[torch.Tensor] | None = None
    """Per block: kept query groups (sorted); with one key/value head (multi-query): kept query heads."""


def width_config(config: Config, plan: WidthPlan) -> Config:
    changes: dict = {"head_size": config.head_size}  # stays as it was, even if n_embd / n_head changes
    if plan.embedding is not None:
        changes["n_embd"] = len(plan.embedding)
        if config.norm_class_name == "RMSNorm" and not config.norm_qk:  # see _cut_embedding
            changes["norm_eps"] = config.norm_eps * config.n_embd / len(plan.embedding)
    if plan.mlp is not None:
        changes["intermediate_size"] = len(plan.mlp[0])
    if plan.groups is not None:
        kept = len(plan.groups[0])
        if config.n_query_groups == 1:
            changes["n_head"] = kept
        else:
            changes["n_query_groups"] = kept
            changes["n_head"] = kept * (config.n_head // config.n_query_groups)
    return _replaced(config, **changes)


def prune_width(state: dict[str, torch.Tensor], config: Config, plan: WidthPlan) -> dict[str, torch.Tensor]:
    """The state dict of ``config`` cut as ``plan`` says (see the module docstring)."""
    out = dict(state)
    for i in range(config.n_layer):
        block = f"transformer.h.{i}."
        if plan.groups is not None:
            _cut_heads(out, block + "attn.", config, plan.groups[i])
        if plan.mlp is not None:
            for name in MLP_NAMES[config.mlp_class_name]:
                _cut(out, f"{block}mlp.{name}.weight", 0, plan.mlp[i])
                _cut(out, f"{block}mlp.{name}.bias", 0, plan.mlp[i])
            _cut(out, f"{block}mlp.proj.weight", 1, plan.mlp[i])
    if plan.embedding is not None:
        _cut_embedding(out, config, plan.embedding)
    return out


def _cut(state: dict, key: str, dim: int, keep: torch.Tensor) -> None:
    if key in state:
        state[key] = state[key].index_select(dim, keep.to(state[key].device)).contiguous()


def _cut_heads(state: dict, prefix: str, config: Config, kept: torch.Tensor) -> None:
    """qkv rows of the kept query heads and of their groups' keys and values; ``proj`` columns of those heads."""
    hs, heads, groups = config.head_size, config.n_head, config.n_query_groups
    if groups == 1:  # multi-query: the one key/value head stays, query heads go one by one
        query_heads, kv_groups = kept, torch.tensor([0])
    else:
        per_group = heads // groups
        query_heads = (kept.unsqueeze(1) * per_group + torch.arange(per_group)).reshape(-1)
        kv_groups = kept

    def rows(units: torch.Tensor, offset: int) -> torch.Tensor:
        return (offset + units.unsqueeze(1) * hs + torch.arange(hs)).reshape(-1)

    qkv_rows = torch.cat([rows(query_heads, 0), rows(kv_groups, heads * hs), rows(kv_groups, (heads + groups) * hs)])
    _cut(state, prefix + "qkv.weight", 0, qkv_rows)
    _cut(state, prefix + "qkv.bias", 0, qkv_rows)
    _cut(state, prefix + "proj.weight", 1, rows(query_heads, 0))


def _cut_embedding(state: dict, config: Config, keep: torch.Tensor) -> None:
    scale = math.sqrt(config.n_embd / len(keep))
    norm_keys = [f"transformer.h.{i}.{n}." for i in range(config.n_layer) for n in NORMS] + ["transformer.ln_f."]
    for prefix in norm_keys:
        if prefix + "weight" not in state:
            continue
        _cut(state, prefix + "weight", 0, keep)
        _cut(state, prefix + "bias", 0, keep)
        if config.norm_class_name == "RMSNorm":  # the mean of squares is over fewer channels now
            w = state[prefix + "weight"]
            offset = 1.0 if "Gemma" in config.name else 0.0  # litgpt's RMSNorm scales by 1 + w for Gemma
            state[prefix + "weight"] = ((w.float() + offset) * scale - offset).to(w.dtype)
    for key in list(state):
        if key == "transformer.wte.weight" or key == "lm_head.weight":
            _cut(state, key, 1, keep)
        elif key.startswith("transformer.h.") and key.endswith(".weight"):
            inner = key.split(".", 3)[3]
            if inner in ("attn.qkv.weight",) or inner in {f"mlp.{n}.weight" for n in ("fc_1", "fc_2", "fc")}:
                _cut(state, key, 1, keep)  # reads the residual stream
            elif inner in ("attn.proj.weight", "mlp.proj.weight"):
                _cut(state, key, 0, keep)  # writes into it
                _cut(state, key[: -len("weight")] + "bias", 0, keep)


def _replaced(config: Config, **changes) -> Config:
    """A new ``Config`` with ``changes`` (its derived fields recomputed)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    fields.update(changes)
    for derived in ("rope_n_elem",):
        fields.pop(derived, None)
    return Config(**fields)
