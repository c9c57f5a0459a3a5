"""``litgpt-ext prune``: a smaller student made from its teacher — Minitron-style depth and width pruning of any
litgpt checkpoint, scored on calibration data, written as an ordinary litgpt checkpoint that ``finetune_kd`` (or any
other command) then trains."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from litgpt.data import DataModule

from litgpt_ext.checks import at_least, check_checkpoint_dir
from litgpt_ext.data.sft import SFTData  # noqa: F401 (imported so that --data SFTData resolves by name)
from litgpt_ext.errors import UserError
from litgpt_ext.io import atomic_dir, atomic_write_json
from litgpt_ext.model import prune as surgery
from litgpt_ext.model.importance import Scores, score
from litgpt_ext.precision import compute_dtype
from litgpt_ext.prune.calibration import calibration_samples as read_calibration
from litgpt_ext.prune.report import plot_scores

_SIZES = ("n_layer", "intermediate_size", "n_embd", "n_head", "n_query_groups")


def prune(
    checkpoint_dir: Path,
    out_dir: Path | None = None,
    data: DataModule | Path | None = None,
    n_layer: int | None = None,
    intermediate_size: int | None = None,
    n_embd: int | None = None,
    n_head: int | None = None,
    n_query_groups: int | None = None,
    depth_metric: Literal["cosine", "ppl"] = "cosine",
    calibration_samples: int = 256,
    max_seq_length: int = 256,
    precision: Literal["32-true", "bf16-true", "16-true"] = "32-true",
    device: str | None = None,
    overwrite: bool = False,
) -> None:
    """Make a smaller model from a litgpt checkpoint by removing its least important blocks, MLP channels, attention
    heads (whole query groups) or embedding channels, as measured on calibration data; the result is a litgpt
    checkpoint (weights, ``model_config.yaml``, the teacher's tokenizer files and chat template) to distill from the
    uncut teacher with ``finetune_kd``. Give at least one target; the others stay as the teacher has them.

    Args:
        checkpoint_dir: The teacher's litgpt checkpoint directory.
        out_dir: Where the pruned checkpoint goes (with ``prune_report.json`` and ``prune_scores.png``); refused if
            it exists and is not empty, unless --overwrite.
        data: Calibration data: a text file (``.txt``, cut into --max_seq_length-token pieces), a JSONL of
            ``{"text": ...}`` (or ``"prompt"``) rows, or anything ``finetune_sft`` reads (litgpt JSON/JSONL, Q/A
            JSON, chat rows, a directory with train.json or train.pt, a DataModule).
        n_layer: Blocks to keep (depth pruning): the lowest-scoring blocks go, the others keep their order.
        intermediate_size: MLP channels to keep in every block (width).
        n_embd: Residual-stream (embedding) channels to keep (width); the same channels everywhere.
        n_head: Query heads to keep in every block (width): whole query groups go with their heads, so it must be a
            multiple of the teacher's heads per group.
        n_query_groups: Key/value groups to keep in every block (the same cut as --n_head, counted in groups).
        depth_metric: ``cosine``: block influence, ``1 − cos(input, output)`` of the block's hidden states (one
            forward); ``ppl``: the calibration loss with the block alone skipped (one forward per block).
        calibration_samples: Calibration sequences scored.
        max_seq_length: Tokens per calibration sequence (longer ones are cut).
        precision: The scoring forward's precision (the weights are cut and saved in their own dtype).
        device: ``cpu``, ``cuda``, ``cuda:1`` (default: cuda if available).
        overwrite: Replace an existing --out_dir.
    """
    from litgpt.config import Config
    from litgpt.tokenizer import Tokenizer

    checkpoint_dir = Path(checkpoint_dir)
    check_checkpoint_dir(checkpoint_dir)
    if out_dir is None:
        raise UserError("pass --out_dir DIR (where the pruned checkpoint goes)", field="out_dir")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError("exists and is not empty (pass --overwrite to replace it)", path=out_dir, field="out_dir")
    at_least("calibration_samples", calibration_samples, 1)
    at_least("max_seq_length", max_seq_length, 2)
    config = Config.from_file(checkpoint_dir / "model_config.yaml")
    targets = _targets(config, n_layer, intermediate_size, n_embd, n_head, n_query_groups)
    if not targets:
        raise UserError(
            "give a size to prune to: --n_layer, --intermediate_size, --n_embd, --n_head or --n_query_groups"
        )
    width = {name: name in targets for name in ("intermediate_size", "n_head", "n_embd")}
    refusals = surgery.width_refusals(config, width["intermediate_size"], width["n_head"], width["n_embd"])
    if refusals:
        raise UserError(f"cannot width-prune {config.name!r}: " + "; ".join(refusals), path=checkpoint_dir)
    tokenizer = Tokenizer(checkpoint_dir)
    samples = read_calibration(data, tokenizer, checkpoint_dir, calibration_samples, max_seq_length)

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = torch.load(checkpoint_dir / "lit_model.pth", map_location="cpu", weights_only=True)
    state = state.get("model", state)
    gpt = _model(config, state, device, compute_dtype(precision))
    print(f"scoring {config.name} on {len(samples)} calibration sequences ({depth_metric} block scores) ...")
    scores = score(gpt, samples, depth_metric)
    del gpt
    new_config, new_state, kept = _cut(config, state, scores, targets)
    before, after = _parameters(state), _parameters(new_state)
    print(f"parameters: {before:,} -> {after:,} ({after / before:.1%}); "
          + ", ".join(f"{k} {getattr(config, k)} -> {getattr(new_config, k)}" for k in _SIZES
                      if k in targets or (k == "n_query_groups" and "n_head" in targets)))  # fmt: skip
    report = _report(config, new_config, scores, kept, before, after, depth_metric, len(samples))
    _write(checkpoint_dir, out_dir, new_config, new_state, report, scores, kept)
    print(f"pruned checkpoint -> {out_dir}")


def _targets(config, n_layer, intermediate_size, n_embd, n_head, n_query_groups) -> dict[str, int]:
    """The requested sizes, checked: at most the teacher's, dividing as needed."""
    heads, groups = config.n_head, config.n_query_groups
    targets = {}
    for flag, value, teacher in (("n_layer", n_layer, config.n_layer), ("intermediate_size", intermediate_size,
                                 config.intermediate_size), ("n_embd", n_embd, config.n_embd)):  # fmt: skip
        if value is not None:
            at_least(flag, value, 1)
            if value > teacher:
                raise UserError(f"must be at most the teacher's {teacher}, got {value}", field=flag)
            targets[flag] = value  # the teacher's own size too: the cut then keeps everything (the identity)
    if n_head is not None or n_query_groups is not None:
        per_group = heads // groups
        if groups == 1:  # multi-query: query heads go one by one, the key/value head stays
            if n_query_groups not in (None, 1):
                raise UserError("the teacher has one key/value head (multi-query): it stays", field="n_query_groups")
            kept_units = n_head
        else:
            if n_head is not None and n_head % per_group:
                raise UserError(f"must be a multiple of the teacher's {per_group} query heads per group "
                                f"(whole groups go), got {n_head}", field="n_head")  # fmt: skip
            kept_units = n_query_groups if n_query_groups is not None else n_head // per_group
            if n_head is not None and n_query_groups is not None and n_head != n_query_groups * per_group:
                raise UserError(f"--n_head {n_head} and --n_query_groups {n_query_groups} disagree (the teacher has "
                                f"{per_group} query heads per group)", field="n_head")  # fmt: skip
        flag = "n_head" if groups == 1 or n_query_groups is None else "n_query_groups"
        at_least(flag, kept_units, 1)
        limit = heads if groups == 1 else groups
        if kept_units > limit:
            raise UserError(f"must keep at most the teacher's {limit}, got {kept_units}", field=flag)
        targets["n_head"] = kept_units  # counted in query heads (multi-query) or groups
    if "n_layer" in targets and config.first_k_dense_replace:
        raise UserError("an MoE whose first blocks are dense cannot lose blocks here", field="n_layer")
    return targets


def _model(config, state, device, dtype):
    from litgpt.model import GPT

    gpt = GPT(config)
    gpt.load_state_dict(state)
    return gpt.to(device=device, dtype=dtype).eval()


def _cut(config, state, scores: Scores, targets: dict[str, int]):
    kept: dict = {}
    blocks = list(range(config.n_layer))
    if "n_layer" in targets:
        order = torch.argsort(scores.block, descending=True)  # most important first
        blocks = sorted(order[: targets["n_layer"]].tolist())
        kept["blocks"] = blocks
        config, state = surgery.depth_config(config, blocks), surgery.drop_blocks(state, blocks)
    plan = surgery.WidthPlan()
    if "intermediate_size" in targets:
        plan.mlp = [_top(scores.mlp[i], targets["intermediate_size"]) for i in blocks]
    if "n_head" in targets:
        heads = scores.heads[blocks]
        units = heads if config.n_query_groups == 1 else heads.view(len(blocks), config.n_query_groups, -1).sum(-1)
        plan.groups = [_top(units[i], targets["n_head"]) for i in range(len(blocks))]
        kept["groups" if config.n_query_groups > 1 else "query_heads"] = [g.tolist() for g in plan.groups]
    if "n_embd" in targets:
        plan.embedding = _top(scores.embedding, targets["n_embd"])
        kept["embedding_channels"] = len(plan.embedding)
    if any(x is not None for x in (plan.mlp, plan.groups, plan.embedding)):
        state = surgery.prune_width(state, config, plan)
        config = surgery.width_config(config, plan)
    return config, state, kept


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest values, in increasing order (ties: the lower index first)."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def _parameters(state: dict) -> int:
    from litgpt_ext.model.tied import state_is_tied

    total = sum(t.numel() for t in state.values())
    return total - (state["lm_head.weight"].numel() if state_is_tied(state) else 0)


def _report(config, new_config, scores: Scores, kept, before, after, metric, samples) -> dict:
    sizes = ("n_layer", "n_embd", "n_head", "n_query_groups", "intermediate_size", "head_size")
    return {
        "teacher": {k: getattr(config, k) for k in sizes},
        "student": {k: getattr(new_config, k) for k in sizes},
        "parameters": {"teacher": before, "student": after, "ratio": round(after / before, 4)},
        "calibration": {"sequences": samples, "tokens": scores.tokens, "teacher_loss": round(scores.loss, 4)},
        "depth_metric": metric,
        "block_scores": [round(float(v), 6) for v in scores.block],
        "kept": kept,
    }


def _write(checkpoint_dir: Path, out_dir: Path, config, state, report, scores: Scores, kept) -> None:
    from litgpt.utils import save_config

    from litgpt_ext.checkpoint_files import copy_tokenizer_files

    with atomic_dir(out_dir) as partial:
        torch.save(state, partial / "lit_model.pth")
        save_config(config, partial)
        copy_tokenizer_files(checkpoint_dir, partial)
        for name in ("generation_config.json", "prompt_style.yaml"):
            if (checkpoint_dir / name).is_file():
                (partial / name).write_bytes((checkpoint_dir / name).read_bytes())
        atomic_write_json(partial / "prune_report.json", report)
        plot_scores(scores, kept, partial / "prune_scores.png")


prune.default_data = "SFTData"
"""The DataModule a bare ``--data PATH`` means when ``--data.*`` options follow (the CLI's long form)."""
