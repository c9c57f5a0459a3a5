"""SFT data: answer-only labels, truncation policy, formats, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from litgpt.tokenizer import Tokenizer

from conftest import DEMO, run_cli
from litgpt_ext.data.batches import pad_collate
from litgpt_ext.data.encode import encode_prompt_response
from litgpt_ext.data.sft import SFTData
from litgpt_ext.errors import UserError
from litgpt_ext.training.objectives.sft import SFTObjective


def test_encode_masks_prompt_and_appends_eos():
    enc = encode_prompt_response([1, 10, 11, 12], [20, 21], eos_id=2, bos_id=1)
    assert enc.input_ids.tolist() == [1, 10, 11, 12, 20, 21, 2]
    assert enc.labels.tolist() == [-100, -100, -100, -100, 20, 21, 2]


def test_prompt_is_truncated_first_keeping_bos_and_template_tail():
    prompt = [1] + list(range(100, 120))  # BOS + 20 prompt tokens; the tail is the template's answer cue
    enc = encode_prompt_response(prompt, [50, 51, 52], eos_id=2, bos_id=1, max_seq_length=12)
    assert len(enc.input_ids) == 12 and enc.prompt_truncated and not enc.response_truncated
    assert enc.input_ids.tolist() == [1, 113, 114, 115, 116, 117, 118, 119, 50, 51, 52, 2]
    assert (enc.labels != -100).sum() == 4  # the whole answer and EOS are kept


def test_response_cut_only_when_it_cannot_fit():
    enc = encode_prompt_response([1] + [9] * 20, list(range(30, 60)), eos_id=2, bos_id=1, max_seq_length=16)
    assert len(enc.input_ids) == 16 and enc.response_truncated
    assert enc.input_ids[:8].tolist()[0] == 1 and enc.input_ids[-1].item() != 2  # a cut answer has no EOS


def test_padding_and_prompt_labels_are_ignored_on_a_hand_made_batch(tiny_checkpoint):
    from litgpt.config import Config
    from litgpt.model import GPT

    torch.manual_seed(0)
    model = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml"))
    model.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth"))
    samples = [
        {"input_ids": torch.tensor([1, 40, 41, 42, 60, 61, 2]), "labels": torch.tensor([-100] * 4 + [60, 61, 2])},
        {"input_ids": torch.tensor([1, 43, 62, 2]), "labels": torch.tensor([-100, -100, 62, 2])},
    ]
    batch = pad_collate(samples, pad_id=0)
    assert batch["labels"][1, 4:].tolist() == [-100, -100, -100]  # padding labels ignored, never EOS
    objective = SFTObjective()
    loss, _ = objective.compute(model, batch)

    # reference: full-vocabulary logits, cross-entropy only over answer positions, per sequence without padding
    terms = []
    for s in samples:
        logits = model(s["input_ids"][None])[0, :-1]
        target = s["labels"][1:]
        keep = target != -100
        terms.append(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none"))
    expected = torch.cat(terms).mean()
    assert torch.allclose(loss, expected, atol=1e-6)

    # changing what sits in padded or prompt-label positions of the *labels* cannot change the loss
    other = dict(batch, input_ids=batch["input_ids"].clone())
    other["input_ids"][1, 4:] = 7  # different padding token ids
    assert torch.allclose(objective.compute(model, other)[0], loss, atol=1e-6)


def _setup(path, tokenizer, **kw):
    data = SFTData(path=path, **kw)
    data.connect(tokenizer=tokenizer, batch_size=2, max_seq_length=64)
    data.setup()
    return data


def test_formats_qa_litgpt_json_jsonl_dir_and_pretokenized(tiny_checkpoint, tmp_path):
    tok = Tokenizer(tiny_checkpoint)
    qa = _setup(DEMO / "qa.json", tok)
    assert type(qa.prompt_style).__name__ == "QA" and len(qa.val_dataset) == 8
    first = qa.train_dataset[0]
    start = int((first["labels"] != -100).nonzero()[0])
    assert tok.decode(first["input_ids"][:start]).startswith("Question: ")
    assert tok.decode(first["input_ids"][:start]).endswith("\nAnswer:")
    assert first["input_ids"][-1].item() == tok.eos_id

    rows = [{"instruction": f"Q{i}?", "input": "", "output": f"A{i}."} for i in range(10)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(_setup(tmp_path / "d.json", tok).train_dataset) == 9
    assert len(_setup(tmp_path / "d.jsonl", tok, val_split_fraction=0.2).val_dataset) == 2

    split_dir = tmp_path / "split"
    split_dir.mkdir()
    (split_dir / "train.json").write_text(json.dumps(rows[:7]))
    (split_dir / "val.json").write_text(json.dumps(rows[7:]))
    d = _setup(split_dir, tok)
    assert (len(d.train_dataset), len(d.val_dataset)) == (7, 3)

    pt_dir = tmp_path / "pt"
    pt_dir.mkdir()
    torch.save(
        [{"input_ids": s["input_ids"].tolist(), "labels": s["labels"].tolist()} for s in d.train_dataset],
        pt_dir / "train.pt",
    )
    torch.save(list(d.val_dataset), pt_dir / "val.pt")
    p = _setup(pt_dir, tok)
    assert torch.equal(p.train_dataset[3]["labels"], d.train_dataset[3]["labels"])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[{"instruction": "a", "output": "b"}, {"output": "c"}]', "d.json:record 2: instruction: missing"),
        ('[{"instruction": "a", "output": "  "}]', "d.json:record 1: output: empty"),
        ('{"train": [{"Question": "q", "Answer": ""}]}', "d.json:train[1]: Answer: empty"),
        ('{"rows": []}', "d.json:top level: expected a list of records"),
        ('[{"instruction": "a", "output": 3}]', "d.json:record 1: output: expected a string, got int"),
        (b'[{"instruction": "caf\xe9", "output": "b"}]', "d.json:line 1: not valid UTF-8"),
        ('[{"instruction": "a", "output": "b"},', "d.json:line 1: invalid JSON"),
    ],
)
def test_bad_data_is_a_located_user_error(tiny_checkpoint, tmp_path, content, expected):
    path = tmp_path / "d.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError) as err:
        _setup(path, Tokenizer(tiny_checkpoint))
    assert str(err.value).startswith(str(tmp_path) + "/" + expected)


def test_bad_pretokenized_record_is_a_located_user_error(tiny_checkpoint, tmp_path):
    torch.save(
        [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [1, 2], "labels": [1]}], tmp_path / "train.pt"
    )
    with pytest.raises(UserError, match=r"train\.pt:record 2: labels: length differs from input_ids"):
        _setup(tmp_path, Tokenizer(tiny_checkpoint))


def test_cli_bad_data_exits_2_with_one_line(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    result = run_cli(
        "finetune_sft", tiny_checkpoint, "--data", bad, "--out_dir", tmp_path / "out", "--precision", "32-true"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {bad}:line 2: output: missing"
    assert not (tmp_path / "out" / "final").exists()
