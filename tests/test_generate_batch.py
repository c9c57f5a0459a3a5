"""generate_batch: continuous batching equals sequential decoding, batch-independent sampling, crash-safe resume,
sharding, and located errors for bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import DEMO, run_cli
from litgpt_ext.finetune.sft import setup as finetune_sft
from litgpt_ext.generate.command import generate_batch
from litgpt_ext.generate.merge import generate_merge
from litgpt_ext.training.args import EvalArgs, TrainArgs


@pytest.fixture(scope="module")
def student(tiny_factory, tmp_path_factory):
    """A tiny model trained enough to answer the demo questions and stop with EOS at varied lengths."""
    out = tmp_path_factory.mktemp("student")
    finetune_sft(
        tiny_factory(n_embd=128),
        data=DEMO / "qa.json",
        out_dir=out,
        mode="full",
        precision="32-true",
        train=TrainArgs(
            save_interval=None,
            global_batch_size=16,
            micro_batch_size=16,
            max_steps=120,
            epochs=None,
            lr_warmup_steps=5,
            log_interval=20,
        ),
        eval=EvalArgs(interval=1000, max_iters=1, final_validation=False),
        optimizer={"lr": 3e-3},
    )
    return out / "final"


def _prompts(path, n, seed=0, extra_lines=()):
    rng = random.Random(seed)
    towns = ["Avalon", "Ivel", "Marrow", "Thorne", "Jasper", "Pellam", "Kestrel"]
    questions = [
        "What does {} sell?",
        "Which river runs through {}?",
        "How many people live in {}?",
        "What color are the roofs in {}?",
    ]
    with open(path, "w") as fh:
        for i in range(n):
            q = rng.choice(questions).format(rng.choice(towns))
            q = " ".join([q] * rng.randint(1, 6))  # mixed prompt lengths
            fh.write(json.dumps({"id": f"q{i:04d}", "prompt": q, "n": i}) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return path


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_id(path):
    return {r["id"]: r for r in rows_of(path)}


def _gen(ckpt, inp, out, **kw):
    settings = dict(max_new_tokens=24, temperature=0.0, precision="32-true", max_batch_size=8)
    generate_batch(ckpt, input=inp, output=out, **{**settings, **kw})


def test_greedy_batched_equals_one_prompt_at_a_time(student, tmp_path):
    inp = _prompts(tmp_path / "p.jsonl", 40)
    _gen(student, inp, tmp_path / "seq.jsonl", max_batch_size=1)
    _gen(student, inp, tmp_path / "bat.jsonl", max_batch_size=7, window=13)
    seq, bat = _by_id(tmp_path / "seq.jsonl"), _by_id(tmp_path / "bat.jsonl")
    assert seq.keys() == bat.keys() and len(seq) == 40
    for rid in seq:
        assert seq[rid]["generations"] == bat[rid]["generations"], rid
    reasons = {r["finish_reasons"][0] for r in seq.values()}
    assert "stop" in reasons  # the trained student ends answers with EOS
    lengths = {r["generated_tokens"][0] for r in seq.values()}
    assert len(lengths) > 2  # ... at varied lengths, so rows leave and enter mid-batch


def test_sampling_is_independent_of_batch_composition(student, tmp_path):
    inp = _prompts(tmp_path / "p.jsonl", 24, seed=3)
    kw = dict(temperature=0.9, top_k=20, top_p=0.95, num_samples=2, seed=11)
    _gen(student, inp, tmp_path / "a.jsonl", max_batch_size=1, **kw)
    _gen(student, inp, tmp_path / "b.jsonl", max_batch_size=5, **kw)
    a, b = _by_id(tmp_path / "a.jsonl"), _by_id(tmp_path / "b.jsonl")
    assert all(a[i]["generations"] == b[i]["generations"] for i in a)
    assert any(r["generations"][0] != r["generations"][1] for r in a.values())  # samples differ from each other
    _gen(student, inp, tmp_path / "c.jsonl", max_batch_size=5, **{**kw, "seed": 12})
    assert _by_id(tmp_path / "c.jsonl") != b  # and the seed matters


def test_kill_9_and_rerun_gives_exactly_the_input_ids(tiny_checkpoint, tmp_path):
    inp = _prompts(tmp_path / "p.jsonl", 400)
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable,
        "-m",
        "litgpt_ext",
        "generate_batch",
        str(tiny_checkpoint),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--max_new_tokens",
        "48",
        "--temperature",
        "1.0",
        "--precision",
        "32-true",
        "--max_batch_size",
        "4",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 30):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out.read_text().count("\n")
    assert 0 < partial < 400
    with open(out, "a") as fh:
        fh.write('{"id": "q9999", "generati')  # a torn last line
    subprocess.run(args, check=True, capture_output=True)
    ids = [r["id"] for r in rows_of(out)]
    assert len(ids) == len(set(ids)) == 400
    assert set(ids) == {f"q{i:04d}" for i in range(400)}


def test_two_shards_merged_equal_one_run(student, tmp_path):
    inp = _prompts(tmp_path / "p.jsonl", 30, seed=5)
    _gen(student, inp, tmp_path / "all.jsonl")
    for i in range(2):
        _gen(student, inp, tmp_path / "gen.jsonl", shard=f"{i}/2")
    shards = sorted(tmp_path.glob("gen.shard-*-of-00002.jsonl"))
    assert [s.name for s in shards] == ["gen.shard-00000-of-00002.jsonl", "gen.shard-00001-of-00002.jsonl"]
    generate_merge(inputs=shards, output=tmp_path / "merged.jsonl")
    generate_merge(inputs=[tmp_path / "all.jsonl"], output=tmp_path / "all-ordered.jsonl")
    assert (tmp_path / "merged.jsonl").read_text() == (tmp_path / "all-ordered.jsonl").read_text()
    assert [r["_line"] for r in rows_of(tmp_path / "merged.jsonl")] == list(range(1, 31))


def test_slurm_array_variables_pick_the_shard(student, tmp_path, monkeypatch):
    inp = _prompts(tmp_path / "p.jsonl", 9)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    _gen(student, inp, tmp_path / "g.jsonl")
    rows = rows_of(tmp_path / "g.shard-00002-of-00003.jsonl")
    assert sorted(r["_line"] for r in rows) == [3, 6, 9]


def test_bad_lines_become_located_error_records_or_stop_the_run(tiny_checkpoint, tmp_path):
    long_prompt = json.dumps({"id": "long", "prompt": "word " * 2000})
    inp = _prompts(
        tmp_path / "p.jsonl",
        3,
        extra_lines=[
            "{not json",
            json.dumps({"id": "nofield", "x": 1}),
            json.dumps({"id": "empty", "prompt": "   "}),
            long_prompt,
        ],
    )
    out = tmp_path / "out.jsonl"
    _gen(tiny_checkpoint, inp, out, max_new_tokens=4)
    rows = _by_id(out)
    assert len(rows) == 7  # every line accounted for: 3 generations + 4 error records
    assert rows["4"]["error"] == f"{inp}:4: invalid JSON: Expecting property name enclosed in double quotes"
    assert rows["nofield"]["error"] == f"{inp}:5: prompt: missing"
    assert rows["empty"]["error"] == f"{inp}:6: prompt: empty prompt"
    assert rows["long"]["error"].startswith(f"{inp}:7: prompt: 6002 tokens, but the model's context is 512")
    result = run_cli(
        "generate_batch",
        tiny_checkpoint,
        "--input",
        inp,
        "--output",
        tmp_path / "o2.jsonl",
        "--on_error",
        "stop",
        "--max_new_tokens",
        "4",
        "--precision",
        "32-true",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {inp}:4: invalid JSON: Expecting property name enclosed in double quotes"
    )


def test_stop_strings_and_passthrough(student, tmp_path):
    inp = _prompts(tmp_path / "p.jsonl", 6)
    _gen(student, inp, tmp_path / "s.jsonl", stop=[" in "], passthrough=["n"])
    for row in rows_of(tmp_path / "s.jsonl"):
        assert " in " not in row["generations"][0] and "n" in row
        assert row["finish_reasons"][0] in ("stop", "length")


def test_the_window_bounds_how_far_the_input_is_read(tiny_checkpoint):
    """Memory does not grow with the input: the engine pulls prompts lazily, a window at a time."""
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.generate.engine import Engine, Job, Settings

    model = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml")).eval()
    engine = Engine(
        model,
        Tokenizer(tiny_checkpoint),
        Settings(max_batch_size=4, max_seq_length=64, window=6),
        torch.device("cpu"),
        torch.float32,
    )
    pulled = []

    def source():
        for i in range(300):
            pulled.append(i)
            yield Job(str(i), i + 1, [1, 5, 6, 7], 1, 3)

    first_emit_at = []
    engine.run(source(), lambda job: first_emit_at.append(len(pulled)) if not first_emit_at else None)
    assert first_emit_at[0] <= 6 + 4 + 1 and len(pulled) == 300


def test_devices_two_processes_split_by_rank(student, tmp_path):
    inp = _prompts(tmp_path / "p.jsonl", 12, seed=8)
    _gen(student, inp, tmp_path / "one.jsonl")
    result = run_cli(
        "generate_batch",
        student,
        "--input",
        inp,
        "--output",
        tmp_path / "g.jsonl",
        "--devices",
        "2",
        "--max_new_tokens",
        "24",
        "--temperature",
        "0",
        "--precision",
        "32-true",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # the launching process waited for the other one, and reports both
    assert "all 2 processes: 12 prompts" in result.stdout, result.stdout
    assert "process 0: " in result.stdout and "process 1: " in result.stdout
    shards = sorted(tmp_path.glob("g.shard-*-of-00002.jsonl"))
    assert len(shards) == 2
    generate_merge(inputs=shards, output=tmp_path / "merged.jsonl")
    generate_merge(inputs=[tmp_path / "one.jsonl"], output=tmp_path / "one-ordered.jsonl")
    assert (tmp_path / "merged.jsonl").read_text() == (tmp_path / "one-ordered.jsonl").read_text()


def test_slurm_array_script_runs_a_task_and_the_merge_script_joins(student, tmp_path):
    from conftest import REPO

    inp = _prompts(tmp_path / "p.jsonl", 10, seed=9)
    env = {
        **os.environ,
        "CHECKPOINT": str(student),
        "INPUT": str(inp),
        "OUTPUT": str(tmp_path / "out" / "g.jsonl"),
        "PRECISION": "32-true",
        "MAX_NEW_TOKENS": "16",
        "EXTRA_ARGS": "--temperature 0",
        "LITGPT_EXT": str(__import__("pathlib").Path(sys.executable).with_name("litgpt-ext")),
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_ARRAY_TASK_COUNT": "2",
    }
    for task in ("0", "1"):
        subprocess.run(
            ["bash", REPO / "jobs" / "generate_array.sbatch"],
            env={**env, "SLURM_ARRAY_TASK_ID": task},
            check=True,
            capture_output=True,
            cwd=tmp_path,
        )
    subprocess.run(
        ["bash", REPO / "jobs" / "merge_generations.sbatch"], env=env, check=True, capture_output=True, cwd=tmp_path
    )
    rows = rows_of(tmp_path / "out" / "g.jsonl")
    assert [r["_line"] for r in rows] == list(range(1, 11))


def test_sliding_window_models_match_litgpt_ring_buffer(tiny_factory, tmp_path):
    """Mistral-style sliding window: generations longer than the window equal litgpt's own (ring-buffer) decoding."""
    import shutil

    import torch
    from litgpt.config import Config
    from litgpt.generate.base import generate
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    ckpt = tmp_path / "mistral"
    shutil.copytree(tiny_factory(model="mistral"), ckpt)
    cfg_text = (ckpt / "model_config.yaml").read_text()
    (ckpt / "model_config.yaml").write_text(cfg_text.replace("sliding_window_size: 512", "sliding_window_size: 12"))
    config = Config.from_file(ckpt / "model_config.yaml")
    assert config.sliding_window_size == 12
    inp = tmp_path / "p.jsonl"
    prompts = ["What does Ivel sell?", "Avalon", "How many people live in Marrow?"]
    inp.write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    _gen(ckpt, inp, tmp_path / "g.jsonl", max_new_tokens=20, prompt_style="default", max_batch_size=3)
    ours = _by_id(tmp_path / "g.jsonl")

    model = GPT(config)
    model.load_state_dict(torch.load(ckpt / "lit_model.pth"))
    model.eval()
    tok = Tokenizer(ckpt)
    for i, prompt in enumerate(prompts):
        ids = tok.encode(prompt)
        assert len(ids) <= 12 < len(ids) + 20  # the generation runs past the window
        model.set_kv_cache(batch_size=1, max_seq_length=len(ids) + 20)
        out = generate(model, ids, max_returned_tokens=len(ids) + 20, temperature=0.0, eos_id=tok.eos_id)
        model.clear_kv_cache()
        expected = tok.decode(out[len(ids) :][out[len(ids) :] != tok.eos_id])
        assert ours[str(i)]["generations"][0] == expected, (prompt, ours[str(i)]["generations"][0], expected)


def test_greedy_equals_litgpt_generate_and_min_new_tokens_equals_transformers(student, tmp_path):
    """The engine's own prefill (LM head on the last prompt token only) and grouped-query decode step (no KV
    copies) give litgpt's greedy tokens; --min_new_tokens gives transformers' (EOS masked until N tokens)."""
    import torch
    from litgpt.config import Config
    from litgpt.generate.base import generate
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer
    from transformers import AutoModelForCausalLM

    from litgpt_ext.export.command import export_hf
    from litgpt_ext.model.decode_attention import grouped_decode_applies

    config = Config.from_file(student / "model_config.yaml")
    assert grouped_decode_applies(config)  # the tiny llama has 4 heads in 2 groups
    inp = _prompts(tmp_path / "p.jsonl", 6, seed=5)
    _gen(student, inp, tmp_path / "ours.jsonl", prompt_style="default", max_batch_size=4)
    _gen(student, inp, tmp_path / "min.jsonl", prompt_style="default", max_batch_size=4, min_new_tokens=20)
    by_id, min_by_id = _by_id(tmp_path / "ours.jsonl"), _by_id(tmp_path / "min.jsonl")  # rows land as they finish
    prompts = [r["prompt"] for r in rows_of(inp)]
    ours, at_least = [by_id[r["id"]] for r in rows_of(inp)], [min_by_id[r["id"]] for r in rows_of(inp)]
    tok = Tokenizer(student)
    model = GPT(config)
    model.load_state_dict(torch.load(student / "lit_model.pth", weights_only=True))
    model.eval()
    for prompt, row in zip(prompts, ours):
        ids = tok.encode(prompt)
        model.set_kv_cache(batch_size=1, max_seq_length=len(ids) + 24)
        out = generate(model, ids, max_returned_tokens=len(ids) + 24, temperature=0.0, eos_id=tok.eos_id)
        new = out[len(ids) :].tolist()
        assert row["generations"][0] == tok.decode(torch.tensor([t for t in new if t != tok.eos_id])), prompt
        model.clear_kv_cache()
    assert any(r["finish_reasons"][0] == "stop" for r in ours)  # so that min_new_tokens changes something

    export_hf(student, out_dir=tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    for prompt, row in zip(prompts, at_least):
        ids = tok.encode(prompt)
        with torch.inference_mode():
            out = hf.generate(
                ids.unsqueeze(0), max_new_tokens=24, min_new_tokens=20, do_sample=False, eos_token_id=tok.eos_id
            )
        new = out[0, len(ids) :].tolist()
        new = new[: new.index(tok.eos_id)] if tok.eos_id in new else new
        assert row["generated_tokens"][0] == len(new) >= 20, prompt
        assert row["generations"][0] == tok.decode(torch.tensor(new)), prompt


@pytest.mark.parametrize("penalty,n", [(1.3, 0), (0.7, 0), (1.0, 1), (1.0, 2), (1.5, 3)])
def test_repetition_controls_equal_transformers_logits_processors(penalty, n):
    """Row by row, on the same logits and histories (prompt + generated), the two controls give exactly what
    transformers' RepetitionPenaltyLogitsProcessor / NoRepeatNGramLogitsProcessor give."""
    import torch
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    from litgpt_ext.generate.repetition import RepetitionControls

    g = torch.Generator().manual_seed(n + int(penalty * 10))
    vocab, length = 50, 30
    histories = torch.randint(0, 12, (4, length), generator=g)  # a small alphabet, so n-grams repeat
    logits = torch.randn(4, vocab, generator=g) * 3
    controls = RepetitionControls(penalty, n)
    rows = []
    for h in histories.tolist():
        state = controls.history(h[:10])  # 10 prompt tokens, then 20 generated one at a time
        for t in h[10:]:
            state.add(t)
        rows.append(state)
    ours = controls.apply(logits, rows)
    expected = logits.clone()
    if penalty != 1.0:
        expected = RepetitionPenaltyLogitsProcessor(penalty)(histories, expected)
    if n:
        expected = NoRepeatNGramLogitsProcessor(n)(histories, expected)
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, logits)


def test_repetition_controls_equal_transformers_generate_and_do_not_depend_on_the_batch(student, tmp_path):
    """--no_repeat_ngram_size and --repetition_penalty through the engine: greedy tokens equal transformers'
    generate with the same settings, and sampled rows are the same at batch size 1 and 8."""
    import torch
    from litgpt.tokenizer import Tokenizer
    from transformers import AutoModelForCausalLM

    from litgpt_ext.export.command import export_hf

    inp = _prompts(tmp_path / "p.jsonl", 8, seed=11)
    controls = dict(no_repeat_ngram_size=2, repetition_penalty=1.3, prompt_style="default")
    _gen(student, inp, tmp_path / "ours.jsonl", **controls)
    _gen(student, inp, tmp_path / "plain.jsonl", prompt_style="default")
    ours, plain = _by_id(tmp_path / "ours.jsonl"), _by_id(tmp_path / "plain.jsonl")
    assert any(ours[i]["generations"] != plain[i]["generations"] for i in ours)  # the controls change outputs
    export_hf(student, out_dir=tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tok = Tokenizer(student)
    for row in rows_of(inp):
        ids = tok.encode(row["prompt"])
        with torch.inference_mode():
            out = hf.generate(
                ids.unsqueeze(0),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=tok.eos_id,
                no_repeat_ngram_size=2,
                repetition_penalty=1.3,
            )
        new = out[0, len(ids) :].tolist()
        new = new[: new.index(tok.eos_id)] if tok.eos_id in new else new
        assert ours[row["id"]]["generations"][0] == tok.decode(torch.tensor(new)), row["prompt"]

    sampled = dict(controls, temperature=0.9, top_k=20, num_samples=2)
    _gen(student, inp, tmp_path / "b1.jsonl", max_batch_size=1, **sampled)
    _gen(student, inp, tmp_path / "b8.jsonl", max_batch_size=8, **sampled)
    b1, b8 = _by_id(tmp_path / "b1.jsonl"), _by_id(tmp_path / "b8.jsonl")
    assert {i: r["generations"] for i, r in b1.items()} == {i: r["generations"] for i, r in b8.items()}


def test_qa_split_and_litgpt_files_are_inputs_with_references_kept(student, tmp_path):
    """--input qa.json --split test: the question through the checkpoint's prompt style (QA), the answer kept,
    ids test[N]; litgpt JSON and JSONL: instruction + input through the style, output kept; shards and resume
    work by row."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.errors import UserError
    from litgpt_ext.prompts import QA

    qa = json.loads((DEMO / "qa.json").read_text())
    out = tmp_path / "test.jsonl"
    _gen(student, DEMO / "qa.json", out, split="test")
    rows = _by_id(out)
    assert set(rows) == {f"test[{i}]" for i in range(1, len(qa["test"]) + 1)}
    for i, item in enumerate(qa["test"], start=1):
        row = rows[f"test[{i}]"]
        assert row["Answer"] == item["Answer"] and row["Question"] == item["Question"]
        ids = Tokenizer(student).encode(QA().apply(item["Question"]))
        assert row["prompt_tokens"] == len(ids)  # the QA style the student was trained with
    assert all(r["generations"][0].strip() for r in rows.values())  # (test facts are unseen: not necessarily right)

    # litgpt JSON (a list) and JSONL: a row's id when it has one, else <file stem>[N]
    records = [
        {"instruction": qa["test"][0]["Question"], "output": qa["test"][0]["Answer"]},
        {"id": "mine", "instruction": "Name a town.", "input": "Ivel", "output": "Ivel"},
        {"instruction": "", "output": "x"},
    ]
    (tmp_path / "heldout.json").write_text(json.dumps(records))
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name, where in (("heldout.json", "record 3"), ("heldout.jsonl", "3")):
        out = tmp_path / f"{name}.out.jsonl"
        _gen(student, tmp_path / name, out, max_batch_size=2)
        rows = _by_id(out)
        assert rows["heldout[1]"]["output"] == records[0]["output"]
        assert rows["mine"]["input"] == "Ivel" and rows["mine"]["instruction"] == "Name a town."
        assert rows["heldout[3]"]["error"] == f"{tmp_path / name}:{where}: instruction: empty prompt"

    # shards by row of the split, and a rerun of a finished output does nothing
    for k in range(2):
        _gen(student, DEMO / "qa.json", tmp_path / "s.jsonl", split="val", shard=f"{k}/2")
    shards = sorted(tmp_path.glob("s.shard-*.jsonl"))
    generate_merge(inputs=shards, output=tmp_path / "merged.jsonl")
    assert [r["id"] for r in rows_of(tmp_path / "merged.jsonl")] == [f"val[{i}]" for i in range(1, len(qa["val"]) + 1)]
    before = (tmp_path / "test.jsonl").read_bytes()
    _gen(student, DEMO / "qa.json", tmp_path / "test.jsonl", split="test")
    assert (tmp_path / "test.jsonl").read_bytes() == before

    with pytest.raises(UserError, match=r"qa.json: split: a Q/A file with splits train, val, test: pass --split"):
        _gen(student, DEMO / "qa.json", tmp_path / "x.jsonl")
    with pytest.raises(UserError, match=r"--split 'dev' is not in it"):
        _gen(student, DEMO / "qa.json", tmp_path / "x.jsonl", split="dev")


def test_packed_weights_and_compiled_decode_step_give_the_default_greedy_texts(student, tmp_path, capfd):
    """The CPU speed switches change kernels, not results: ``--pack_weights false`` (plain F.linear) and
    ``--compile true`` (the decode step compiled once, with symbolic batch and cache length) give the default's
    greedy texts, as rows leave down to a lone row; the compiled step never compiles a second graph."""
    inp = _prompts(tmp_path / "p.jsonl", 30, seed=7)
    runs = {}
    for name, kw in {"default": {}, "unpacked": {"pack_weights": False}, "compiled": {"compile": True}}.items():
        _gen(student, inp, tmp_path / f"{name}.jsonl", max_batch_size=7, window=9, **kw)
        runs[name] = {rid: r["generations"] for rid, r in _by_id(tmp_path / f"{name}.jsonl").items()}
    assert runs["default"] == runs["unpacked"] == runs["compiled"] and len(runs["default"]) == 30
    stats = {n: json.loads((tmp_path / f"{n}.stats.json").read_text()) for n in runs}
    assert stats["default"]["packed_weights"] and not stats["unpacked"]["packed_weights"]
    assert not stats["compiled"]["packed_weights"] and stats["compiled"]["compile_warmup_s"] > 0
    err = capfd.readouterr()
    assert "compiled again" not in err.err and "first call (tracing and compiling) took" in err.out


def test_packed_linear_matches_f_linear_and_comes_off(tiny_checkpoint):
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT

    from litgpt_ext.model.packed_linear import install_packed_linears, packing_available
    from litgpt_ext.model.patches import Patches

    if not packing_available(torch.device("cpu"), torch.float32):
        pytest.skip("this PyTorch has no MKL")
    model = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml")).eval()
    x = torch.randint(0, 100, (5, 3))
    with torch.inference_mode():
        ref = model(x)
        patches = Patches()
        assert install_packed_linears(model, 8, patches) == sum(type(m) is torch.nn.Linear for m in model.modules())
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)  # 15 rows: the packed path
        assert model(torch.randint(0, 100, (2, 9))).shape[:2] == (2, 9)  # 18 rows > 2 x 8: F.linear
    with torch.enable_grad():
        model(x).sum().backward()  # training never goes through the frozen copy
    patches.restore()
    assert not any({"_packed_weight", "_packed_rows", "forward"} & set(vars(m)) for m in model.modules())


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.9, "min_new_tokens": 3}])
def test_a_decode_step_moves_only_the_sampled_ids_between_host_and_device(tiny_checkpoint, sampling):
    """What a step feeds the model (last tokens, positions, sampling keys and counters) stays on the device and is
    advanced there; the host writes it when rows are admitted, and reads back the sampled ids once a step. (On a GPU
    every other transfer is a sync that idles it: tests/gpu/check.py counts them with the CUDA profiler.)"""
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.generate.engine import Engine, Job, Settings
    from litgpt_ext.generate.settings import Sampling

    model = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml")).eval()
    settings = Settings(Sampling(max_new_tokens=12, **sampling), max_batch_size=4, max_seq_length=256)
    engine = Engine(model, Tokenizer(tiny_checkpoint), settings, torch.device("cpu"), torch.float32)
    calls = {"to_device": 0, "to_host": 0, "decode": 0, "prefill": 0}

    def counted(name, method):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return method(*args, **kwargs)

        return wrapper

    for name in calls:
        method = name if name.startswith("to_") else f"_{name}"
        setattr(engine, method, counted(name, getattr(engine, method)))
    jobs = [Job(str(i), i, [1, 5 + i, 9, 11][: 2 + i % 3], 1, 12) for i in range(3)]
    done = []
    with engine:
        engine.run(jobs, done.append)
    assert len(done) == 3 and calls["decode"] >= 5
    assert calls["to_host"] == calls["decode"] + calls["prefill"]  # one read-back per step or prefill group
    assert calls["to_device"] == calls["prefill"]  # slots, positions, keys, minimum lengths: at admission only
