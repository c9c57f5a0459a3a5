"""Chat data everywhere: OpenAI messages / ShareGPT / TRL conversational rows, multi-turn labels, chat templates
(identical ids to transformers' apply_chat_template), litgpt styles turn by turn, and the chat path end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from litgpt_ext.errors import UserError
from tests.conftest import run_cli

SPECIAL = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<start_of_turn>",
           "<end_of_turn>"]  # fmt: skip
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN = (  # chatml with a default system prompt, as Qwen2.5's template has
    "{%- for message in messages %}{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
TEMPLATES = {"llama3": LLAMA3, "chatml": CHATML, "qwen": QWEN, "gemma": GEMMA}
TWO_TURNS = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What colour is the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And grass?"},
    {"role": "assistant", "content": "Green."},
]


@pytest.fixture(scope="module")
def chat_ckpt(tiny_factory, tmp_path_factory):
    """A tiny student whose tokenizer knows the turn markers of the three families; one copy per template."""
    base = tiny_factory(special_tokens=tuple(SPECIAL))
    out = {}
    for name, source in TEMPLATES.items():
        d = tmp_path_factory.mktemp(f"chat-{name}")
        for f in base.iterdir():
            shutil.copy(f, d / f.name)
        config = json.loads((d / "tokenizer_config.json").read_text())
        (d / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": source}))
        out[name] = d
    return out


def _hf_ids(ckpt: Path, messages, add_generation_prompt=False) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    return tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )


def _renderer(ckpt: Path, style: str = "chat_template"):
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.chat_encode import renderer_for
    from litgpt_ext.prompts import resolve_prompt_style

    return renderer_for(resolve_prompt_style(style, ckpt), Tokenizer(ckpt))


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- readers -----------------------------------------------------------------------------------------------------
def test_readers_normalize_openai_sharegpt_and_parts(tmp_path):
    from litgpt_ext.data.chat import data_format, load_conversations

    msgs = _write_jsonl(
        tmp_path / "m.jsonl",
        [{"id": "a", "messages": [{"role": "developer", "content": "S"},
                                  {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]},
                                  {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "f"}}]},
                                  {"role": "tool", "content": "42"},
                                  {"role": "assistant", "content": "It is 42."}]}],
    )  # fmt: skip
    share = _write_jsonl(
        tmp_path / "s.jsonl",
        [{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Hi"},
                            {"from": "gpt", "value": "Yo"}]}],
    )  # fmt: skip
    assert data_format(msgs) == "messages" and data_format(share) == "sharegpt"
    (conv,) = load_conversations(msgs)
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[1]["content"] == "Hi you" and json.loads(conv.messages[2]["content"])[0]["id"] == "c1"
    assert conv.id == "a"
    (conv,) = load_conversations(share)
    assert conv.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Yo"}]  # fmt: skip


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},
            "line 1: messages[1].content: missing",
        ),
        ({"messages": [{"role": "robot", "content": "q"}]}, "line 1: messages[0].role: unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": "q"}]}, "line 1: messages: no assistant turn"),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
            "line 1: conversations[1].from: unknown role",
        ),
        ({"messages": "hi"}, "line 1: messages: expected a list of turns, got str"),
    ],
)
def test_reader_errors_are_located(tmp_path, row, message):
    from litgpt_ext.data.chat import load_conversations

    path = _write_jsonl(tmp_path / "msgs.jsonl", [row])
    with pytest.raises(UserError, match=f"msgs.jsonl:{message}".replace("[", r"\[").replace("]", r"\]")):
        load_conversations(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="empty.jsonl: no conversations"):
        load_conversations(tmp_path / "empty.jsonl")


# -- chat templates: identical ids to transformers, labels from turn-by-turn rendering ----------------------------
@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_template_ids_equal_apply_chat_template(chat_ckpt, family):
    ckpt = chat_ckpt[family]
    messages = TWO_TURNS[1:] if family == "gemma" else TWO_TURNS  # gemma's template refuses a system turn
    renderer = _renderer(ckpt)
    ids, mask = renderer.encode(messages, "all_assistant")
    assert ids == _hf_ids(ckpt, messages)
    assert renderer.prompt_ids(messages[:-1]) == _hf_ids(ckpt, messages[:-1], add_generation_prompt=True)
    if family == "qwen":  # the template's default system prompt is there when the data has none
        assert renderer.prompt_ids(TWO_TURNS[1:2]) == _hf_ids(ckpt, TWO_TURNS[1:2], add_generation_prompt=True)
    tok = renderer.tokenizer
    supervised = tok.processor.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    end = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>\n", "qwen": "<|im_end|>\n", "gemma": "<end_of_turn>\n"}[family]
    assert supervised == f"Blue.{end}Green.{end}"
    ids_last, mask_last = renderer.encode(messages, "last_assistant")
    assert ids_last == ids
    assert tok.processor.decode([i for i, m in zip(ids, mask_last) if m], skip_special_tokens=False) == f"Green.{end}"


def test_template_labels_equal_a_by_hand_mask(chat_ckpt):
    """ChatML, two turns: the labels are the assistant pieces' tokens (each turn's words and its <|im_end|>\\n),
    everything else ignored — built here piece by piece."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.chat import Conversation
    from litgpt_ext.data.chat_encode import encode_conversations

    ckpt = chat_ckpt["chatml"]
    tok = Tokenizer(ckpt)
    pieces = [
        ("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nWhat colour is the sky?<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("Blue.<|im_end|>\n", True),
        ("<|im_start|>user\nAnd grass?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Green.<|im_end|>\n", True),
    ]  # fmt: skip
    ids, labels = [], []
    for text, learn in pieces:
        piece = tok.processor.encode(text, add_special_tokens=False).ids
        ids += piece
        labels += piece if learn else [-100] * len(piece)
    packed, _ = encode_conversations(_renderer(ckpt), [Conversation(TWO_TURNS, "line 1")], Path("x.jsonl"))
    assert packed["input_ids"].tolist() == ids
    assert packed["labels"].tolist() == labels


# -- litgpt prompt styles turn by turn ---------------------------------------------------------------------------
def test_litgpt_styles_single_turn_equals_alpaca_json_and_multi_turn_rules(tiny_checkpoint, tmp_path):
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.sft import SFTData

    rows = [{"instruction": f"Name fruit {i}", "output": f"apple {i}"} for i in range(6)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    chat = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in rows]  # fmt: skip
    _write_jsonl(tmp_path / "m.jsonl", chat)
    tok = Tokenizer(tiny_checkpoint)
    data = {}
    for name in ("a.json", "m.jsonl"):
        d = SFTData(path=tmp_path / name, prompt_style="alpaca", val_split_fraction=0.34)
        d.connect(tokenizer=tok)
        d.setup()
        data[name] = d
    for split in ("train_dataset", "val_dataset"):
        a, m = getattr(data["a.json"], split), getattr(data["m.jsonl"], split)
        assert len(a) == len(m) > 0
        for i in range(len(a)):
            assert a[i]["input_ids"].tolist() == m[i]["input_ids"].tolist()
            assert a[i]["labels"].tolist() == m[i]["labels"].tolist()

    two = _write_jsonl(tmp_path / "two.jsonl", [{"messages": TWO_TURNS}] * 3)
    d = SFTData(path=two, prompt_style="alpaca")
    d.connect(tokenizer=tok)
    with pytest.raises(UserError, match=r"two.jsonl:line \d: the Alpaca prompt style has no multi-turn form"):
        d.setup()
    # ChatML-like litgpt styles render later turns in their own form; every answer ends with EOS
    from litgpt_ext.data.chat_encode import StyleRenderer
    from litgpt_ext.prompts import style_from_name

    renderer = StyleRenderer(style_from_name("qwen2.5"), tok)
    ids, mask = renderer.encode(TWO_TURNS, "all_assistant")
    text = tok.processor.decode(ids, skip_special_tokens=False)
    assert "<|im_start|>system\nAnswer in one word." in text and "\n<|im_start|>user\nAnd grass?" in text
    assert [i for i, m in zip(ids, mask) if m].count(tok.eos_id) == 2


def test_truncation_drops_whole_turns_then_cuts_the_reply_and_names_what_it_drops(chat_ckpt, tmp_path, capsys):
    from litgpt_ext.data.chat import Conversation
    from litgpt_ext.data.chat_encode import encode_conversations, fit_conversation

    renderer = _renderer(chat_ckpt["chatml"])
    long_first = [TWO_TURNS[0], {"role": "user", "content": "word " * 200}, *TWO_TURNS[2:]]
    full, _ = renderer.encode(long_first, "all_assistant")
    ids, mask, cut = fit_conversation(renderer, long_first, 60, "all_assistant")
    assert cut == "turns" and len(ids) <= 60 < len(full)
    assert renderer.tokenizer.processor.decode(ids, skip_special_tokens=False).startswith(
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nAnd grass?"
    )  # the system prompt stays, the first exchange went
    long_reply = [TWO_TURNS[1], {"role": "assistant", "content": "very " * 100}]
    ids, mask, cut = fit_conversation(renderer, long_reply, 40, "all_assistant")
    assert cut == "reply" and len(ids) == 40 and mask[-1] and not mask[0]
    hopeless = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    convs = [Conversation(hopeless, "line 1"), Conversation(TWO_TURNS, "line 2")]
    packed, counts = encode_conversations(renderer, convs, tmp_path / "c.jsonl", max_seq_length=64)
    assert counts["dropped"] == 1 and len(packed["ids"]) == 1
    assert "c.jsonl:line 1: dropped:" in capsys.readouterr().out


# -- preference data: TRL's explicit and implicit conversational rows ---------------------------------------------
def _pref_rows():
    towns = ["Avon", "Bree", "Cole", "Dale", "Eske", "Fenn", "Gile", "Hove"]
    explicit, implicit = [], []
    for i in range(16):
        town = towns[i % 8]
        prompt = [{"role": "system", "content": "Be short."}, {"role": "user", "content": f"What does {town} sell?"}]
        good, bad = f"fish {i % 3}", f"rocks {i % 5}"
        explicit.append({"id": f"p{i}", "prompt": prompt, "chosen": [{"role": "assistant", "content": good}],
                         "rejected": [{"role": "assistant", "content": bad}]})  # fmt: skip
        implicit.append({"id": f"p{i}", "chosen": prompt + [{"role": "assistant", "content": good}],
                         "rejected": prompt + [{"role": "assistant", "content": bad}]})  # fmt: skip
    return explicit, implicit


def test_dpo_on_implicit_prompt_pairs_equals_explicit_prompt(chat_ckpt, tmp_path):
    explicit, implicit = _pref_rows()
    _write_jsonl(tmp_path / "explicit.jsonl", explicit)
    _write_jsonl(tmp_path / "implicit.jsonl", implicit)
    metrics = {}
    for name in ("explicit", "implicit"):
        out = tmp_path / f"out-{name}"
        result = run_cli(
            "finetune_dpo", chat_ckpt["llama3"], "--data", tmp_path / f"{name}.jsonl", "--data.val_split_fraction",
            "0.25", "--prompt_style", "chat_template", "--out_dir", out, "--precision", "32-true",
            "--train.max_steps", "2", "--train.epochs", "null", "--train.micro_batch_size", "4",
            "--train.global_batch_size", "4", "--eval.interval", "2",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        metrics[name] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics["explicit"]) == len(metrics["implicit"]) > 0
    compared = set()
    for a, b in zip(metrics["explicit"], metrics["implicit"]):
        for key in set(a) & set(b):
            if key.startswith(("loss", "val_", "rewards/", "logps/")):
                assert a[key] == pytest.approx(b[key], abs=1e-7), key
                compared.add(key)
    assert {"loss", "val_loss", "rewards/accuracies"} <= compared, compared


def test_preference_rows_are_checked(chat_ckpt, tmp_path):
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.preference import PreferenceData
    from litgpt_ext.prompts import resolve_prompt_style

    ckpt = chat_ckpt["chatml"]
    rows = [{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
             "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]}]  # fmt: skip
    path = _write_jsonl(tmp_path / "pref.jsonl", rows * 3)
    data = PreferenceData(path=path)
    data.connect(tokenizer=Tokenizer(ckpt), prompt_style=resolve_prompt_style("chat_template", ckpt))
    with pytest.raises(UserError, match=r"pref.jsonl:line 1: no shared prompt"):
        data.setup()
    explicit, _ = _pref_rows()
    path = _write_jsonl(tmp_path / "pref2.jsonl", explicit)
    data = PreferenceData(path=path, val_split_fraction=0.25)
    data.connect(tokenizer=Tokenizer(ckpt), prompt_style=resolve_prompt_style("chat_template", ckpt))
    data.setup()
    sample = data.train_dataset[0]
    decode = data.tokenizer.processor.decode
    assert decode(sample["prompt_ids"].tolist(), skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    assert decode(sample["chosen_ids"].tolist(), skip_special_tokens=False).endswith("<|im_end|>\n")


# -- the teacher stage writes chat data; generate and evaluate read it ---------------------------------------------
def test_convert_writes_messages_that_tokenize_and_evaluate_reads(chat_ckpt, tmp_path, api_key_free_records):
    records, responses = api_key_free_records
    out = tmp_path / "data"
    (tmp_path / "student.md").write_text("---\nsystem: Be brief.\n---\nTitle: {title}\n")
    result = run_cli(
        "distill_convert", "--records", records, "--responses", responses, "--out_dir", out,
        "--instruction", tmp_path / "student.md", "--format", "messages", "--val_fraction", "0.3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][0]["content"] == "Be brief." and not (out / "train.json").exists()
    prompt = json.loads((out / "prompts.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in prompt["messages"]] == ["system", "user"]
    result = run_cli("distill_tokenize", "--data_dir", out, "--checkpoint_dir", chat_ckpt["chatml"])
    assert result.returncode == 0, result.stderr[-2000:]
    packed = torch.load(out / "train.pt")
    assert packed["input_ids"].tolist()[: len(_hf_ids(chat_ckpt["chatml"], row["messages"]))] == _hf_ids(
        chat_ckpt["chatml"], row["messages"]
    )
    assert "ChatTemplateStyle" in (out / "prompt_style.yaml").read_text()
    # evaluate_generations: a chat row's final assistant turn is its reference
    gen = _write_jsonl(tmp_path / "gen.jsonl", [{"id": "1", **row, "generations": [row["messages"][-1]["content"]]}])
    result = run_cli("evaluate_generations", "--input", gen)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "gen.eval" / "metrics.json").read_text())["exact_match"] == 1.0


@pytest.fixture
def api_key_free_records(tmp_path):
    """A records file and a distill_query cache for it, written as the teacher stage writes them."""
    from distill.teacher.cache import ResponseCache

    records = _write_jsonl(tmp_path / "records.jsonl", [{"id": str(i), "title": f"Paper {i}"} for i in range(6)])
    cache = ResponseCache(tmp_path / "responses.jsonl")
    for i in range(6):
        cache.add_result({"key": f"k{i}", "ids": [str(i)], "status": "ok", "choices": [{"content": f"summary {i}"}]})
    cache.close()
    return records, tmp_path / "responses.jsonl"


# -- end to end: OpenAI-format JSONL -> LoRA with the chat template -> export -> transformers == generate_batch --
def test_chat_template_sft_export_and_generation_match_transformers(chat_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = chat_ckpt["chatml"]
    convs = []
    for i in range(12):
        convs.append({"id": f"c{i}", "messages": [
            {"role": "system", "content": "Reply with the number."},
            {"role": "user", "content": f"Count {i}"}, {"role": "assistant", "content": f"{i}"},
            {"role": "user", "content": f"And {i + 1}?"}, {"role": "assistant", "content": f"{i + 1}"}]})  # fmt: skip
    data = _write_jsonl(tmp_path / "chat.jsonl", convs)
    out = tmp_path / "sft"
    result = run_cli(
        "finetune_sft", ckpt, "--data", data, "--data.prompt_style", "chat_template", "--out_dir", out,
        "--precision", "32-true", "--train.max_steps", "40", "--train.epochs", "null", "--train.micro_batch_size", "4",
        "--train.global_batch_size", "4", "--eval.interval", "40", "--optimizer.lr", "0.02", "--lora_mlp", "true",
        "--train.lr_warmup_steps", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    final = out / "final"
    assert "ChatTemplateStyle" in (final / "prompt_style.yaml").read_text()
    hf = tmp_path / "hf"
    result = run_cli("export_hf", final, "--out_dir", hf)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((hf / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    prompts = _write_jsonl(
        tmp_path / "prompts.jsonl", [{"id": c["id"], "messages": c["messages"][:4]} for c in convs[:4]]
    )
    gen_out = tmp_path / "gen.jsonl"
    result = run_cli(
        "generate_batch", final, "--input", prompts, "--output", gen_out, "--max_new_tokens", "12", "--temperature", "0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = {json.loads(line)["id"]: json.loads(line) for line in gen_out.read_text().splitlines()}
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    for conv in convs[:4]:
        ids = tok.apply_chat_template(conv["messages"][:4], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]  # fmt: skip
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
        assert ours[conv["id"]]["generations"][0] == text, conv["id"]
    # it learned to end its turn with the template's <|im_end|>, and both sides stop there
    assert all(v["finish_reasons"] == ["stop"] for v in ours.values())
    assert json.loads((hf / "generation_config.json").read_text())["eos_token_id"][1:] == [
        tok.convert_tokens_to_ids("<|im_end|>")
    ]


def test_finetune_kd_reads_multi_turn_chat_data(pair, tmp_path):
    """Logit distillation on chat rows: the teacher's distribution is learned at every assistant token (here under
    the Qwen3 (ChatML) litgpt style, turn by turn), the loss falls."""
    from litgpt_ext.data.sft import SFTData
    from tests.kd_helpers import _train

    rows = [{"messages": [{"role": "user", "content": f"Count {i}"}, {"role": "assistant", "content": f"{i}"},
                          {"role": "user", "content": "Next?"}, {"role": "assistant", "content": f"{i + 1}"}]}
            for i in range(8)]  # fmt: skip
    data = SFTData(path=_write_jsonl(tmp_path / "chat.jsonl", rows), prompt_style="qwen3", val_split_fraction=0.25)
    metrics = _train(pair, data, tmp_path / "kd", steps=6)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 6 and losses[-1] < losses[0]
