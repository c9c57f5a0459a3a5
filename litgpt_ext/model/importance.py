"""How much each block, MLP channel, attention head and embedding channel of a litgpt model matters, measured on
calibration tokens — the scores structured pruning (:mod:`.prune`) cuts by. One forward pass gathers them all:

* **block influence** (Minitron's depth score, ShortGPT's BI): ``1 − cos(input, output)`` of a block's hidden
  states, averaged over tokens — a block that barely turns the residual stream scores near 0 (an identity block: 0);
* **MLP channels**: the mean absolute value of each channel where it enters the down projection (the product of the
  gate and up projections for a gated MLP, the activation otherwise);
* **attention heads**: the mean L2 norm of each head's output (before the output projection);
* **embedding channels**: the mean absolute value of each residual-stream channel at every norm's output, summed
  over the norms (the channels the blocks and the head actually read).

``--depth_metric ppl`` scores blocks instead by the calibration loss with that block alone skipped (one more forward
per block): the lowest loss goes first.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.model.prune import NORMS


@dataclasses.dataclass
class Scores:
    block: torch.Tensor
    """``(n_layer,)`` block influence (or, with the ppl metric, the calibration loss with the block skipped)."""
    mlp: torch.Tensor | None
    """``(n_layer, intermediate_size)``, or None for an MLP without a down projection of its channels (MoE)."""
    heads: torch.Tensor | None
    """``(n_layer, n_head)``, or None (latent attention)."""
    embedding: torch.Tensor
    """``(n_embd,)``."""
    loss: float
    """The model's mean next-token loss on the calibration tokens."""
    tokens: int


class _Sums:
    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}

    def add(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().double()
        self.values[key] = self.values[key] + value if key in self.values else value


@torch.inference_mode()
def score(gpt: nn.Module, samples: Sequence[torch.Tensor], depth_metric: str = "cosine") -> Scores:
    """The scores of ``gpt`` (a litgpt ``GPT``, in eval mode) over ``samples`` (1-D token tensors, one forward each)."""
    config, sums, hooks = gpt.config, _Sums(), []
    for i, block in enumerate(gpt.transformer.h):
        hooks.append(block.register_forward_hook(_block_hook(sums, i)))
        proj = getattr(block.mlp, "proj", None)
        if isinstance(proj, nn.Linear):
            hooks.append(proj.register_forward_pre_hook(_abs_hook(sums, f"mlp.{i}")))
        if config.latent_attention is None:
            hooks.append(block.attn.proj.register_forward_pre_hook(_heads_hook(sums, f"heads.{i}", config)))
        for name in NORMS:
            norm = getattr(block, name, None)
            if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
                hooks.append(norm.register_forward_hook(_out_hook(sums, "embedding")))
    hooks.append(gpt.transformer.ln_f.register_forward_hook(_out_hook(sums, "embedding")))
    try:
        loss, tokens = _loss(gpt, samples)
    finally:
        for hook in hooks:
            hook.remove()
    n = max(tokens, 1)
    layers = range(config.n_layer)
    block = torch.stack([sums.values[f"block.{i}"] for i in layers]) / n
    if depth_metric == "ppl":
        block = torch.tensor([_loss(gpt, samples, skip=i)[0] for i in layers], dtype=torch.float64)
    mlp = torch.stack([sums.values[f"mlp.{i}"] for i in layers]) / n if "mlp.0" in sums.values else None
    heads = torch.stack([sums.values[f"heads.{i}"] for i in layers]) / n if "heads.0" in sums.values else None
    return Scores(block.float(), _f(mlp), _f(heads), (sums.values["embedding"] / n).float(), loss, tokens)


def _f(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


def _loss(gpt: nn.Module, samples: Sequence[torch.Tensor], skip: int | None = None) -> tuple[float, int]:
    """Mean next-token cross-entropy over every sample's positions (with block ``skip`` left out)."""
    device = next(gpt.parameters()).device
    total, tokens = 0.0, 0
    with _skipped(gpt, skip):
        for ids in samples:
            ids = ids.to(device).unsqueeze(0)
            logits = gpt(ids)[0, :-1].float()
            total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            tokens += ids.size(1) - 1
    return total / max(tokens, 1), tokens


class _Skipped(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x


@contextlib.contextmanager
def _skipped(gpt: nn.Module, index: int | None) -> Iterator[None]:
    if index is None:
        yield
        return
    blocks, original = gpt.transformer.h, gpt.transformer.h[index]
    blocks[index] = _Skipped()
    try:
        yield
    finally:
        blocks[index] = original


def _block_hook(sums: _Sums, i: int):
    def hook(module, args, output):
        x = args[0]
        cos = F.cosine_similarity(x.float(), output.float(), dim=-1)  # (B, T)
        sums.add(f"block.{i}", (1 - cos).sum())

    return hook


def _abs_hook(sums: _Sums, key: str):
    def hook(module, args):
        sums.add(key, args[0].float().abs().sum(dim=(0, 1)))

    return hook


def _heads_hook(sums: _Sums, key: str, config):
    def hook(module, args):
        y = args[0].float()
        sums.add(key, y.view(*y.shape[:2], config.n_head, -1).norm(dim=-1).sum(dim=(0, 1)))

    return hook


def _out_hook(sums: _Sums, key: str):
    def hook(module, args, output):
        sums.add(key, output.float().abs().sum(dim=(0, 1)))

    return hook
