"""``litgpt-ext generate_batch`` and ``generate_merge``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from tqdm import tqdm

from litgpt_ext.chat_template import encode_bos, stop_ids
from litgpt_ext.checks import at_least, check_checkpoint_dir
from litgpt_ext.data.chat import CHAT_FORMATS, parse_turns, prompt_and_reply
from litgpt_ext.data.chat_encode import located, renderer_for
from litgpt_ext.data.encode import encode_text, keep_end
from litgpt_ext.errors import EXIT_INCOMPLETE, UserError, require
from litgpt_ext.generate.engine import Engine, Job, Settings
from litgpt_ext.generate.inputs import InputFormat, PromptRecord, Shard, detect_format, parse_shard, read_prompts
from litgpt_ext.generate.outputs import accumulate_stats, stats_path, union_stats
from litgpt_ext.generate.settings import Sampling, spread_sampling
from litgpt_ext.io import JsonlAppender, atomic_write_json, read_jsonl_repairing
from litgpt_ext.prompts import apply_style, data_style, resolve_prompt_style
from litgpt_ext.templates import load_template


def shard_output(output: Path, shard: Shard) -> Path:
    if shard.count == 1:
        return output
    return output.with_name(f"{output.stem}.shard-{shard.index:05d}-of-{shard.count:05d}{output.suffix}")


@dataclass(frozen=True)
class GenerateArgs:
    """generate_batch's settings, handed to every process (one per device)."""

    checkpoint_dir: Path
    input: Path
    output: Path
    fmt: InputFormat
    dtype: torch.dtype
    prompt_template: Path | None = None
    prompt_style: str = "auto"
    passthrough: tuple[str, ...] = ()
    sampling: Sampling = Sampling()
    num_samples: int = 1
    seed: int = 42
    max_batch_size: int = 32
    window: int | None = None
    base_shard: Shard = Shard()
    on_error: str = "record"
    compile: bool = False
    pack_weights: bool = True
    fast_forwards: bool = True
    quiet: bool = False
    max_prompt_length: int | None = None
    prefix_cache: bool = True
    prefix_cache_gb: float = 2.0


@spread_sampling
def generate_batch(
    checkpoint_dir: Path,
    input: Path | None = None,
    output: Path | None = None,
    split: str | None = None,
    input_format: Literal["auto", "prompts", "litgpt", "qa", "messages", "sharegpt"] = "auto",
    field: str = "prompt",
    prompt_template: Path | None = None,
    prompt_style: str = "auto",
    passthrough: list[str] | None = None,
    sampling: Sampling = Sampling(),
    num_samples: int = 1,
    seed: int = 42,
    max_prompt_length: int | None = None,
    max_batch_size: int = 32,
    window: int | None = None,
    precision: str | None = None,
    devices: int = 1,
    shard: str | None = None,
    on_error: Literal["record", "stop"] = "record",
    compile: bool = False,
    pack_weights: bool = True,
    fast_forwards: bool = True,
    prefix_cache: bool = True,
    prefix_cache_gb: float = 2.0,
) -> None:
    """Generate for every prompt of a file with continuous batching; resumable and shardable.

    Args:
        checkpoint_dir: litgpt checkpoint of the model that generates.
        input: JSONL prompts, one object per line (``id`` optional: the line number is the id); or a training file:
            litgpt JSON/JSONL (``instruction`` + ``input`` are the prompt, ``output`` the kept reference) or a Q/A
            file with ``--split`` (``Question`` is the prompt, ``Answer`` the kept reference); or chat rows (OpenAI
            ``messages`` or ShareGPT ``conversations``): the turns up to the last user turn are the prompt, rendered
            with the checkpoint's chat template (``--prompt_style chat_template``, the default when it has one)
            or a litgpt style; a final assistant turn stays in the row as the reference.
        output: JSONL output; one line per input (appended as each completes; a rerun skips done ids).
        split: Which split of a Q/A file to generate for (train, val or test); for litgpt files, the prefix of the
            ids of rows without one (default: the file name, e.g. ``test[3]`` for the third row of test.json).
        input_format: ``auto`` (by the file's shape), ``prompts``, ``litgpt``, ``qa``, ``messages`` or ``sharegpt``.
        field: The record field holding the prompt text of a JSONL of prompts (a record's `input` and `system`
            fields, when present, go through the prompt style too, as in training).
        prompt_template: Instead of --field: a template file with ``{field}`` placeholders (see prompts/README.md).
        prompt_style: litgpt prompt style applied to the prompt text: ``auto`` (the checkpoint's prompt_style.yaml,
            else its chat template, else litgpt's style for its name; for a training file and a base checkpoint
            with none of these, the style finetune_sft trains that format with: QA for Q/A, alpaca for litgpt
            JSON), a style name, ``chat_template`` (the checkpoint's Jinja template), or ``default`` for the raw
            text. The choice and its reason are printed.
        passthrough: Record fields copied into each output line (a training file's rows are kept whole).
        sampling: (the fields of :class:`~litgpt_ext.generate.settings.Sampling`, one flag each)
        num_samples: Generations per prompt.
        seed: Seed; each row's randomness derives from (seed, id, sample), independent of batching.
        max_prompt_length: Cut longer prompts (after the prompt style) to this many tokens, keeping BOS and the
            prompt's end as training does (the part that cues the answer); counted in the summary. Default: a prompt
            that leaves no room in the context is an error record.
        max_batch_size: Rows decoded together (KV-cache slots).
        window: Prompts looked ahead in the input for scheduling (default: 8 x max_batch_size).
        precision: bf16-true, 16-true or 32-true (default: litgpt's choice on a GPU; on a CPU 32-true, unless the
            CPU does bf16 natively and the model is at least 512 wide, where bf16-true is measurably faster).
        devices: Processes, one per GPU (Fabric); the input is split by global rank.
        shard: ``I/N`` to take every N-th line starting at line I+1 (default: SLURM array variables, if set).
        on_error: ``record`` writes an error line for a bad input line and continues; ``stop`` stops at it.
        compile: Compile the one-token decode step with ``torch.compile`` (one graph for every batch size and cache
            length; prefill stays eager). Its warm-up is printed and counted in the tokens/s. It pays where a
            step is launch-bound (a GPU); on a CPU the packed weights below already give most of it, without the
            warm-up (docs/generation.md).
        pack_weights: On a CPU in fp32, decode-step matmuls use weights packed once for ``max_batch_size`` rows
            (MKL), about 2x faster GEMMs at that size, for one more copy of the weights in memory. Ignored
            elsewhere and under ``--compile`` (which packs its own).
        fast_forwards: ``false`` runs litgpt's own attention forward at every decode step and no packed matmuls
            (for debugging, and to compare with the default, which computes the same with fewer copies).
        prefix_cache: Reuse the keys and values of a prompt's leading tokens that an earlier prompt shares (a system
            prompt, an instruction block, a database schema) instead of prefilling them again; block-aligned (16
            tokens), the same answers either way. ``false`` prefills every prompt from its first token.
        prefix_cache_gb: Memory the prefix cache may hold (on the model's device); least recently used blocks go
            first beyond it.
    """
    checkpoint_dir = Path(checkpoint_dir)
    input, output = Path(require(input, "input")), Path(require(output, "output"))
    sampling.check()
    at_least("num_samples", num_samples, 1)
    at_least("max_prompt_length", max_prompt_length, 1)
    at_least("max_batch_size", max_batch_size, 1)
    at_least("window", window, 1)
    at_least("devices", devices, 1)
    at_least("prefix_cache_gb", prefix_cache_gb, 0.0)
    check_checkpoint_dir(checkpoint_dir)
    from litgpt_ext.model.support import require_support

    require_support(checkpoint_dir, "generate_batch")
    if not input.is_file():
        raise UserError("file not found", path=input, field="input")
    fmt = detect_format(input, input_format, field, split)
    base_shard = parse_shard(shard)
    from litgpt_ext.precision import compute_dtype, default_precision

    precision = precision or default_precision(checkpoint_dir, training=False)
    dtype = compute_dtype(precision)
    fabric = L.Fabric(devices=devices, precision=precision, strategy="ddp" if devices > 1 else "auto")
    args = GenerateArgs(
        checkpoint_dir,
        input,
        output,
        fmt,
        dtype,
        prompt_template=prompt_template,
        prompt_style=prompt_style,
        passthrough=tuple(passthrough or ()),
        sampling=sampling,
        num_samples=num_samples,
        seed=seed,
        max_batch_size=max_batch_size,
        window=window,
        base_shard=base_shard,
        on_error=on_error,
        compile=compile,
        pack_weights=pack_weights,
        fast_forwards=fast_forwards,
        max_prompt_length=max_prompt_length,
        prefix_cache=prefix_cache,
        prefix_cache_gb=prefix_cache_gb,
    )
    stats = fabric.launch(generate_on, args)
    if fabric.world_size > 1:  # every rank holds the union (generate_on gathered it); rank 0 reports it
        fabric.print(
            f"all {fabric.world_size} processes: {stats['prompts']:,} prompts, {stats['generated_tokens']:,} generated "
            f"tokens in {stats['seconds']:.1f}s ({stats['generated_tokens'] / max(stats['seconds'], 1e-9):,.0f} "
            f"tokens/s), {stats['error_records']:,} error records"
        )
        failed = wait_for_children(fabric)
        if failed:
            raise SystemExit(f"error: generate_batch: {failed} of the other processes failed (their output above)")
    if stats and not stats["prompts"] and stats["error_records"]:
        print(f"no row produced a generation ({stats['error_records']:,} failed); exit code {EXIT_INCOMPLETE}")
        raise SystemExit(EXIT_INCOMPLETE)


def wait_for_children(fabric: L.Fabric) -> int:
    """On the launching process, wait for the processes Lightning started for the other devices (its launcher does
    not: under ``sbatch`` they would be killed when the job's main process ends) and count those that failed."""
    procs = getattr(getattr(fabric.strategy, "launcher", None), "procs", None) or []
    return sum(proc.wait() != 0 for proc in procs)


def load_generator(checkpoint_dir: Path, config: Config, fabric: L.Fabric, dtype: torch.dtype) -> GPT:
    """The checkpoint's model for generation: on the device, in ``dtype``, eval mode, no gradients (its file mapped,
    not copied, on its way there)."""
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    state = torch.load(Path(checkpoint_dir) / "lit_model.pth", mmap=True, weights_only=True, map_location="cpu")
    model.load_state_dict(state.get("model", state), assign=True)
    return model.to(device=fabric.device, dtype=dtype).eval().requires_grad_(False)


def generate_on(fabric: L.Fabric, a: GenerateArgs) -> dict:
    """Generate this process's share of the input; returns its stats (also written next to the output)."""
    shard = a.base_shard.split(fabric.global_rank, fabric.world_size)
    out_path = shard_output(a.output, shard)
    config = Config.from_file(a.checkpoint_dir / "model_config.yaml")
    tokenizer = Tokenizer(a.checkpoint_dir)
    chat = a.fmt.kind in CHAT_FORMATS
    fallback = None
    if chat:
        fallback = lambda: data_style("litgpt")  # noqa: E731
    elif a.fmt.keeps_fields:
        fallback = lambda: data_style(a.fmt.kind)  # noqa: E731
    style = resolve_prompt_style(a.prompt_style, a.checkpoint_dir, config, fallback=fallback)
    renderer = renderer_for(style, tokenizer)
    template = None
    if a.prompt_template is not None:
        template = load_template(Path(a.prompt_template))
    field = a.fmt.field

    def render(record: dict, where: int | str) -> str | list[dict]:
        if chat:  # the turns up to the last one to answer (a final assistant turn is the reference)
            turns = parse_turns(record.get(field), a.input, where, field, a.fmt.kind)
            return prompt_and_reply(turns)[0]
        if template is not None:
            return template.render(record, (a.input, where))
        if field not in record or record[field] is None:
            raise UserError("missing", path=a.input, line=where, field=field)
        if not isinstance(record[field], str):
            raise UserError(
                f"expected a string, got {type(record[field]).__name__}", path=a.input, line=where, field=field
            )
        return record[field]

    done = {str(r["id"]) for r in read_jsonl_repairing(out_path)}
    model = load_generator(a.checkpoint_dir, config, fabric, a.dtype)
    settings = Settings(
        sampling=a.sampling,
        max_batch_size=a.max_batch_size,
        max_seq_length=config.block_size,
        seed=a.seed,
        window=a.window or 8 * a.max_batch_size,
        stop_ids=tuple(sorted(stop_ids(style, tokenizer))),
        pack_weights=a.pack_weights,
        compile=a.compile,
        fast_forwards=a.fast_forwards,
        prefix_cache=a.prefix_cache,
        prefix_cache_bytes=int(a.prefix_cache_gb * 2**30),
    )
    engine = Engine(model, tokenizer, settings, fabric.device, a.dtype)
    existed = out_path.exists()
    writer = JsonlAppender(out_path)
    stats = {"prompts": 0, "errors": 0, "tokens": 0, "truncated": 0}
    bar = tqdm(
        desc=f"generate{'' if shard.count == 1 else f' {shard.index}/{shard.count}'}",
        unit="prompt",
        dynamic_ncols=True,
        position=fabric.global_rank,
        disable=a.quiet,
    )
    t0 = time.perf_counter()

    def jobs():
        for item in read_prompts(a.input, render, shard, done, a.on_error, a.fmt):
            if isinstance(item, dict):  # an error record
                writer.write(item)
                stats["errors"] += 1
                continue
            try:
                job = _make_job(item, a, style, tokenizer, config, renderer)
                stats["truncated"] += job.prompt_truncated
                yield job
            except UserError as err:
                if a.on_error == "stop":
                    raise
                writer.write({"id": item.id, "_line": item.line, **a.fmt.kept(item.record), "error": str(err)})
                stats["errors"] += 1

    def emit(job: Job) -> None:
        writer.write(
            {
                "id": job.id,
                **job.extra,
                "generations": job.texts,
                "finish_reasons": job.finish_reasons,
                "prompt_tokens": len(job.prompt_ids),
                "generated_tokens": job.generated_tokens,
                "_line": job.line,
            }
        )
        stats["prompts"] += 1
        stats["tokens"] += sum(job.generated_tokens)
        elapsed = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(tok_s=f"{stats['tokens'] / elapsed:,.0f}", refresh=False)

    try:
        engine.run(jobs(), emit)
    finally:
        engine.close()
        writer.close()
        bar.close()
        if not existed and out_path.is_file() and not out_path.stat().st_size:
            out_path.unlink()  # stopped before its first line (--on_error stop): leave nothing behind
    elapsed = time.perf_counter() - t0
    rows = stats["prompts"] + stats["errors"]
    failed = f"{stats['errors']:,} of {rows:,} rows failed (error records in the output)" if stats["errors"] else ""
    cut = f", {stats['truncated']:,} prompts cut to --max_prompt_length" if stats["truncated"] else ""
    who = f"process {fabric.global_rank}: " if fabric.world_size > 1 else ""
    print(
        f"{who}{stats['prompts']:,} prompts, {stats['tokens']:,} generated tokens in {elapsed:.1f}s "
        f"({stats['tokens'] / max(elapsed, 1e-9):,.0f} tokens/s){cut}{'; ' + failed if failed else ''} "
        f"-> {out_path}" + (f" ({len(done):,} done by earlier runs)" if done else "")
    )
    prefix = engine.prefix_stats()
    if prefix.get("prompt_tokens_reused"):  # (every process its own, as the summary line above)
        print(
            f"{who}prefix cache: {prefix['prompt_tokens_reused']:,} of "
            f"{prefix['prompt_tokens_reused'] + prefix['prompt_tokens_computed']:,} prompt tokens reused "
            f"({prefix['hits']:,} of {prefix['lookups']:,} prompts), {prefix['evictions']:,} blocks evicted"
        )
    warmup = getattr(engine.step, "warmup_s", None)
    if warmup is not None:
        fabric.print(f"--compile: the decode step's first call (tracing and compiling) took {warmup:.1f}s of that")
    run_stats = {
        "prompts": stats["prompts"],
        "generated_tokens": stats["tokens"],
        "error_records": stats["errors"],
        "truncated_prompts": stats["truncated"],
        "already_done": len(done),
        "seconds": round(elapsed, 3),
        "device": str(fabric.device),
        "dtype": str(a.dtype).removeprefix("torch."),
        "max_batch_size": a.max_batch_size,
        "threads": torch.get_num_threads(),
        "packed_weights": engine.packed,
        "replaced_forwards": engine.replaced_forwards,
        "compile_warmup_s": None if warmup is None else round(warmup, 3),
        "prefix_cache": prefix or None,
    }
    if stats["prompts"]:  # a run that generated nothing (all done already) leaves the measured runs' figures alone
        atomic_write_json(stats_path(out_path), accumulate_stats(stats_path(out_path), run_stats))
    if fabric.world_size > 1:  # every rank waits here for the others, and learns what they did
        import torch.distributed as dist

        per_rank: list[dict | None] = [None] * fabric.world_size
        dist.all_gather_object(per_rank, run_stats)
        dist.destroy_process_group()  # (its gloo threads joined now, not torn down at exit: a race that aborted a rank)
        return union_stats(per_rank)
    return run_stats


def _make_job(item: PromptRecord, a: GenerateArgs, style, tokenizer, config, renderer) -> Job:
    if isinstance(item.text, list):  # a conversation
        prompt_ids = located(lambda: renderer.prompt_ids(item.text), a.input, item.line)
    else:
        extra_input, system = item.record.get("input"), item.record.get("system")
        text = apply_style(
            style,
            item.text,
            extra_input if isinstance(extra_input, str) else "",
            system if isinstance(system, str) else None,
        )
        prompt_ids = encode_text(tokenizer, text, encode_bos(style))
    truncated = a.max_prompt_length is not None and len(prompt_ids) > a.max_prompt_length
    if truncated:
        prompt_ids = keep_end(prompt_ids, a.max_prompt_length, tokenizer.bos_id)
    if len(prompt_ids) >= config.block_size:
        raise UserError(
            f"{len(prompt_ids)} tokens, but the model's context is {config.block_size} (--max_prompt_length N cuts "
            f"long prompts)",
            path=a.input,
            line=item.line,
            field="prompt",
        )
    extra = {**a.fmt.kept(item.record), **{k: item.record.get(k) for k in a.passthrough}}
    return Job(
        item.id, item.line, prompt_ids, a.num_samples, a.sampling.max_new_tokens, extra, prompt_truncated=truncated
    )
