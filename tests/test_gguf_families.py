"""``convert_gguf`` on every family it takes, from tiny GGUF files written the way llama.cpp writes them
(tests/gguf_helpers.py): the converted checkpoint gives back the source model's logits, and its tokenizer splits text
as the family's own ``tokenizer.json`` does; a file that contradicts itself is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from tests.gguf_helpers import PRE, reference_model, reference_tokenizer, write_gguf

TEXTS = [
    "SELECT name, COUNT(*) FROM singer WHERE age > 30 GROUP BY name;",
    "def f(x):\n    return x ** 2  # 12345 + 678",
    "Unicode: héllo wörld, 日本語, emoji 🙂, e\u0301 (a combining accent)",
    "<|im_start|>user\nHow many singers?<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces, tabs\tand\nnew lines\n\n",
]


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def converted(request, corpus, tmp_path_factory):
    from litgpt_ext.gguf.command import convert_gguf

    family = request.param
    tmp = tmp_path_factory.mktemp(f"gguf-{family}")
    tokenizer = reference_tokenizer(corpus, PRE[family])
    model = reference_model(family, tokenizer.get_vocab_size())
    path = write_gguf(tmp / f"tiny-{family}.gguf", family, model, tokenizer)
    out = convert_gguf(path, out_dir=tmp / "ckpt")
    return family, model, tokenizer, out


def test_converted_model_gives_back_the_source_logits(converted):
    from litgpt.config import Config
    from litgpt.model import GPT

    family, model, _, out = converted
    config = Config.from_file(out / "model_config.yaml")
    gpt = GPT(config)
    gpt.load_state_dict(torch.load(out / "lit_model.pth", weights_only=True))
    ids = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids), model(ids).logits, atol=1e-4, rtol=0)
    stamp = json.loads((out / "convert_gguf.json").read_text())
    assert stamp["architecture"] == family and (out / "chat_template.jinja").is_file()


def test_converted_tokenizer_splits_as_the_familys_own(converted):
    from litgpt.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    from litgpt_ext.data.encode import encode_text

    _, _, reference, out = converted
    lit, hf = Tokenizer(out), AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        ids = reference.encode(text).ids
        assert encode_text(lit, text, bos=False) == ids, text
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf.decode(ids) == reference.decode(ids, skip_special_tokens=False), text
    assert (hf.eos_token, hf.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_sentencepiece_files_split_as_sentencepiece_does(corpus, tmp_path):
    """A ``llama`` file with a SentencePiece BPE (Llama 2, TinyLlama, Mistral): the converted tokenizer gives
    SentencePiece's own ids (BOS first, byte fallback for characters it never saw) and decodes them back."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.gguf.command import convert_gguf
    from tests.gguf_helpers import sentencepiece_fields

    fields, sp = sentencepiece_fields(corpus, tmp_path)
    model = reference_model("llama", len(fields["tokens"]))
    out = convert_gguf(write_gguf(tmp_path / "sp.gguf", "llama", model, fields), out_dir=tmp_path / "ckpt")
    lit = Tokenizer(out)
    for text in [t for t in TEXTS if "<|" not in t]:
        ids = sp.encode(text)
        assert lit.encode(text, bos=True).tolist() == [1, *ids], text
        assert lit.decode(torch.tensor(ids)) == sp.decode(ids), text
    assert any(sp.is_byte(i) for i in sp.encode(TEXTS[2]))  # (the byte fallback was exercised)


@pytest.mark.parametrize("lie", ["shape", "tokenizer"])
def test_a_file_that_contradicts_itself_is_refused_in_one_line(lie, corpus, tmp_path):
    from litgpt_ext.errors import UserError
    from litgpt_ext.gguf.command import convert_gguf

    tokenizer = reference_tokenizer(corpus, "qwen2")
    model = reference_model("qwen2", tokenizer.get_vocab_size())
    path = write_gguf(tmp_path / "bad.gguf", "qwen2", model, tokenizer, shape_lie=lie == "shape",
                      tokenizer_model="gpt2" if lie == "shape" else "bert")  # fmt: skip
    message = {"shape": r"tensor blk.0.ffn_gate.weight is \(96, 64\) but the file's metadata makes it \(128, 64\)",
               "tokenizer": "tokenizer model 'bert' is not supported"}[lie]  # fmt: skip
    with pytest.raises(UserError, match=message):
        convert_gguf(path, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
