"""``--eval.test true``: after training, the final checkpoint answers the data's test split through generate_batch's
engine (greedy, batched, split over the training processes) and evaluate_generations scores it, into
``out_dir/test/`` — the same files the two commands write when run by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L

from litgpt_ext.errors import UserError
from litgpt_ext.generate.command import GenerateArgs, generate_on, shard_output
from litgpt_ext.generate.inputs import Shard, detect_format
from litgpt_ext.generate.merge import generate_merge
from litgpt_ext.generate.settings import greedy
from litgpt_ext.precision import compute_dtype


def test_source(data) -> tuple[Path, str]:
    """(file, split) of a DataModule's test split; a one-line error when it has none (checked before training)."""
    source = getattr(data, "test_input", lambda: None)()
    if source is None:
        raise UserError(
            "needs a test split: a Q/A file with a 'test' list or a directory with test.json (--data PATH)",
            field="eval.test",
        )
    return source


def evaluate_test_split(
    fabric: L.Fabric, source: tuple[Path, str], out_dir: Path, precision: str | None, max_new_tokens: int
) -> dict | None:
    """Generate for the test split with ``out_dir/final`` and score it; returns the summary on rank 0."""
    from litgpt_ext.evaluate.command import evaluate_generations

    path, split = source
    test_dir = out_dir / "test"
    if fabric.global_rank == 0:  # answers of an earlier model must not be taken as done
        shutil.rmtree(test_dir, ignore_errors=True)
        test_dir.mkdir(parents=True)
    fabric.barrier()
    fmt = detect_format(path, "auto", "prompt", split)
    output = test_dir / "generations.jsonl"
    args = GenerateArgs(
        out_dir / "final",
        path,
        output,
        fmt,
        compute_dtype(precision or "32-true"),
        sampling=greedy(max_new_tokens),
        quiet=fabric.global_rank != 0,
    )
    generate_on(fabric, args)
    fabric.barrier()
    if fabric.global_rank != 0:
        return None
    if fabric.world_size > 1:
        shards = [shard_output(output, Shard(r, fabric.world_size)) for r in range(fabric.world_size)]
        generate_merge(inputs=shards, output=output)
        for shard in shards:
            shard.unlink()
    return evaluate_generations(
        input=output, reference_field="Answer" if fmt.kind == "qa" else "output", output_dir=test_dir
    )
