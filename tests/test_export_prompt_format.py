"""The exported model says how to prompt it: a chat_template that renders the trained litgpt prompt style (checked
with transformers' own apply_chat_template), and a model card with the exact prompt; reward models export their
head with PEFT adapters and record the prompt they were trained on."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from litgpt.prompts import save_prompt_style
from litgpt.tokenizer import Tokenizer

from litgpt_ext.export.command import export_hf
from litgpt_ext.prompts import QA, apply_style, style_from_name

STYLES = ["alpaca", "default", "qa", "llama3", "qwen2.5", "qwen3", "phi-3", "gemma"]


def _style(name):
    return QA() if name == "qa" else style_from_name(name)


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    """One export per prompt style (the same tiny weights, a different prompt_style.yaml)."""
    out = {}
    for name in STYLES:
        root = tmp_path_factory.mktemp(f"style-{name}")
        ckpt = root / "ckpt"
        shutil.copytree(tiny_checkpoint, ckpt)
        save_prompt_style(_style(name), ckpt)
        export_hf(ckpt, out_dir=root / "hf")
        out[name] = (ckpt, root / "hf")
    return out


@pytest.mark.parametrize("name", STYLES)
def test_chat_template_reproduces_the_litgpt_prompt_style(exports, name):
    from transformers import AutoTokenizer

    ckpt, hf = exports[name]
    style, tok, hf_tok = _style(name), Tokenizer(ckpt), AutoTokenizer.from_pretrained(hf)
    prompt, system = "What does Ivel sell?", "Answer in one line."
    for messages, text in (
        ([{"role": "user", "content": prompt}], apply_style(style, prompt)),
        (
            [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
            apply_style(style, prompt, system=system),
        ),
    ):
        ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ids == tok.encode(text).tolist(), (name, messages)
        rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert rendered.endswith(text) and rendered[: len(rendered) - len(text)] in ("", hf_tok.bos_token)
    # a training-shaped conversation ends with the answer and EOS, as litgpt's SFT samples do
    answer = hf_tok.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": " salt"}], tokenize=False
    )
    assert answer.endswith(apply_style(style, prompt) + " salt" + hf_tok.eos_token)
    three = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    from litgpt_ext.data.chat_encode import StyleRenderer, multi_turn_form

    if multi_turn_form(style) is None:  # a single-turn style has no form for a second user turn
        with pytest.raises(Exception, match="single-turn litgpt prompt style"):
            hf_tok.apply_chat_template(three, tokenize=False)
    else:  # a chat style's later turns render exactly as training renders them
        ids = hf_tok.apply_chat_template(three, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ids == StyleRenderer(style, tok).prompt_ids(three), name


@pytest.mark.parametrize("name", ["alpaca", "qa"])
def test_model_card_shows_the_exact_prompt_and_a_snippet_that_runs(exports, name, capsys):
    ckpt, hf = exports[name]
    card = (hf / "README.md").read_text()
    assert "## Prompt format" in card and f"`{type(_style(name)).__name__}`" in card
    assert _style(name).apply("{your prompt}") in card
    snippet = card.split("```python\n")[-1].split("```")[0]
    assert "apply_chat_template(messages, add_generation_prompt=True" in snippet
    exec(snippet.replace("THIS_DIR", str(hf)).replace("max_new_tokens=128", "max_new_tokens=3"), {})
    capsys.readouterr()


def test_the_checkpoints_own_chat_template_stays_when_it_renders_as_the_style(exports, tmp_path):
    """An instruct model's own template (tool calls and all) is kept when it agrees with the trained style."""
    from litgpt_ext.export.chat_template import chat_template

    ckpt = tmp_path / "ckpt"
    shutil.copytree(exports["qwen3"][0], ckpt)
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    own = chat_template(style_from_name("qwen3"), add_bos=Tokenizer(ckpt).use_bos) + "{# the model's own #}"
    (ckpt / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": own}))
    export_hf(ckpt, out_dir=tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == own
    save_prompt_style(style_from_name("alpaca"), ckpt)  # trained with another style: the style's template wins
    export_hf(ckpt, out_dir=tmp_path / "hf", overwrite=True)
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] != own


@pytest.mark.parametrize("head", ["classifier", "scalar"])
def test_peft_reward_model_carries_its_head_and_scores_as_orm_score(tiny_checkpoint, tmp_path, head):
    """A LoRA reward model exported as a PEFT adapter: the head travels as modules_to_save, and the adapter on the
    exported base, loaded as AutoModelForSequenceClassification, scores what orm_score scores. orm_config.json
    records the prompt training rendered the rows with (the default, here), not null."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from litgpt_ext.data.orm import TEXT_PROMPT
    from litgpt_ext.finetune import orm
    from litgpt_ext.reward.score import orm_score
    from litgpt_ext.training.args import EvalArgs, TrainArgs

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "question_id": f"q{i // 2}", "prompt": f"What does town {i} sell?",
                        "response": ["salt", "fish"][i % 2], "label": 1 - i % 2}) + "\n"
            for i in range(24)
        )
    )  # fmt: skip
    out = tmp_path / "orm"
    orm.setup(
        tiny_checkpoint, data=rows, out_dir=out, head=head, mode="lora", lora_r=4, precision="32-true",
        train=TrainArgs(max_steps=3, epochs=None, global_batch_size=8, micro_batch_size=8, save_interval=None,
                        lr_warmup_steps=0),
        eval=EvalArgs(interval=1000, max_iters=1, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 5e-2}},
    )  # fmt: skip
    assert json.loads((out / "final" / "orm_config.json").read_text())["orm_prompt"] == TEXT_PROMPT
    export_hf(tiny_checkpoint, out_dir=tmp_path / "base")
    export_hf(out / "final", out_dir=tmp_path / "adapter", format="peft", base_model=str(tmp_path / "base"))
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and adapter["modules_to_save"] == ["score"]
    assert "AutoModelForSequenceClassification" in (tmp_path / "adapter" / "README.md").read_text()

    labels = 2 if head == "classifier" else 1
    base = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=labels, pad_token_id=0, dtype=torch.float32
    )
    model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    orm_score(out / "final", input=rows, output=tmp_path / "scored.jsonl", batch_size=4)
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    tok = Tokenizer(out / "final")
    for row in scored[:6]:
        ids = tok.encode(TEXT_PROMPT.format(**row), bos=None).unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        theirs = logits.softmax(-1)[0, 1] if labels == 2 else logits[0, 0].sigmoid()
        assert abs(float(theirs) - row["score"]) < 1e-4
