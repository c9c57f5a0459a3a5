"""Cross-tokenizer distillation: the loss equals TRL's GOLD ULD loss (plain and hybrid) on the same inputs, the
vocabulary map pairs special tokens by role, the CLI trains (loss falls) and refuses what it cannot do."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from litgpt_ext.kd.align import align
from litgpt_ext.kd.cross_teacher import _pieces, alignment_tensors, teacher_spans
from litgpt_ext.kd.token_bytes import ByteVocab, shared_tokens
from litgpt_ext.training.objectives.cross_tokenizer import CrossBatch, CrossSettings, SharedVocab, _CrossHead
from litgpt_ext.training.objectives.divergences import KDSettings
from tests.conftest import DEMO, run_cli, tokenized_for

ANSWERS = ["Paris is the capital of France, photosynthesis.", "Water boils at 100 degrees, at sea level; naïve café!"]


@pytest.fixture(scope="module")
def two_tokenizers(tiny_factory):
    """A teacher (512-token byte-level BPE) and a student with another, smaller BPE trained on the same corpus."""
    return tiny_factory(n_embd=128, seed=7), tiny_factory(n_layer=1, vocab_size=400)


def side(checkpoint, answer: str, prompt: str):
    """One side's sequence (prompt + answer + EOS), labels, and the byte offsets TRL takes for its answer."""
    from litgpt.tokenizer import Tokenizer

    vocab, eos = ByteVocab(checkpoint), Tokenizer(checkpoint).eos_id
    prompt_ids, answer_ids = vocab.encode(prompt), vocab.encode(answer)
    ids = prompt_ids + answer_ids + [eos]
    labels = [-100] * len(prompt_ids) + answer_ids + [eos]
    offsets, end = [(0, 0)] * len(prompt_ids), 0
    for i in answer_ids:
        offsets.append((end, end + len(vocab.bytes[i])))
        end += len(vocab.bytes[i])
    offsets.append((end, end))
    return vocab, torch.tensor([ids]), torch.tensor([labels]), torch.tensor([offsets]), answer_ids + [eos]


def ours(student_logits, teacher_logits, s, t, kd: KDSettings, cross: CrossSettings, shared: SharedVocab):
    """Our loss through the blockwise head (an identity head on given logits) and the teacher's span function."""
    s_vocab, _, s_labels, _, s_answer = s
    t_vocab, _, t_labels, _, t_answer = t
    groups = align(_pieces(s_vocab, s_answer), _pieces(t_vocab, t_answer))
    batch = alignment_tensors([groups], [len(s_answer)], [len(t_answer)])
    s_flat = torch.nonzero((s_labels[:, 1:] != -100).reshape(-1)).flatten()
    t_flat = torch.nonzero((t_labels[:, 1:] != -100).reshape(-1)).flatten()
    s_targets = s_labels[:, 1:].reshape(-1)[s_flat]
    t_targets = t_labels[:, 1:].reshape(-1)[t_flat]
    t_rows = teacher_logits[:, :-1].reshape(-1, teacher_logits.size(-1))[t_flat]
    spans = teacher_spans(t_rows, nn.Identity(), t_targets, batch, kd.temperature, teacher_logits.size(-1))
    head = _CrossHead(
        nn.Identity(), student_logits.size(-1), s_flat, s_targets, CrossBatch(batch), spans, kd, cross, shared, False
    )
    return head(student_logits[:, :-1]).sum(), groups


TRL_COMPARED = "1.16.0"
"""The TRL whose experimental GOLD ``ULDLoss`` (the ``bayesian`` merge, byte offsets: 1.16's options) these equalities
were established against; .ci/constraints.txt pins it. A newer TRL may change its experimental module: the test
then fails by name, not by a tolerance."""


def trl(student_logits, teacher_logits, s, t, s_dir, t_dir, ratio, mode, beta, temperature, shared_weight):
    import trl as trl_package
    from transformers import PreTrainedTokenizerFast

    assert trl_package.__version__ == TRL_COMPARED, (
        f"compared with TRL {TRL_COMPARED}'s GOLD ULDLoss; TRL {trl_package.__version__} is installed (pin it, or "
        "check the equality against the new one and move TRL_COMPARED and .ci/constraints.txt together)"
    )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gold.gold_trainer import ULDLoss

    config = SimpleNamespace(
        uld_crossentropy_weight=1 - ratio, uld_distillation_weight=ratio, uld_student_temperature=temperature,
        uld_teacher_temperature=temperature, uld_skip_student_eos=False, uld_skip_teacher_eos=False,
        use_extended_uld=True, uld_token_merge_strategy="bayesian", uld_use_hybrid_loss=mode == "align",
        uld_hybrid_matched_weight=shared_weight, beta=beta,
        uld_hybrid_unmatched_weight=None if shared_weight is None else 1 - shared_weight,
    )  # fmt: skip
    tokenizer = lambda d: PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))  # noqa: E731
    loss = ULDLoss(config, tokenizer(s_dir), tokenizer(t_dir))
    return loss(student_logits, teacher_logits, s[2], t[2], s[1], t[1], s[3], t[3])


@pytest.mark.parametrize(
    "mode,beta,temperature,shared_weight,answer",
    [("uld", 0.0, 1.0, None, 0), ("uld", 0.0, 2.0, None, 1), ("align", 0.0, 1.0, None, 1),
     ("align", 0.5, 1.0, 0.7, 0), ("align", 1.0, 2.0, None, 1)],
)  # fmt: skip
def test_loss_and_gradient_equal_trl_gold(two_tokenizers, mode, beta, temperature, shared_weight, answer):
    t_dir, s_dir = two_tokenizers
    s = side(s_dir, ANSWERS[answer], "Question: where?\nAnswer: ")
    t = side(t_dir, ANSWERS[answer], "<s>Q: where?\nA: ")
    torch.manual_seed(answer)
    s_vocab, t_vocab = 448, 512
    student_logits = (3 * torch.randn(1, s[1].size(1), s_vocab)).requires_grad_(True)
    teacher_logits = 3 * torch.randn(1, t[1].size(1), t_vocab)
    kd = KDSettings(beta=beta, temperature=temperature, kd_ratio=0.6, scale_by_t2=False)
    shared = SharedVocab(shared_tokens(s[0], t[0]), t_vocab, s_vocab)
    loss, groups = ours(student_logits, teacher_logits, s, t, kd, CrossSettings(mode, shared_weight), shared)
    (grad,) = torch.autograd.grad(loss, student_logits)
    reference = trl(student_logits, teacher_logits, s, t, s_dir, t_dir, 0.6, mode, beta, temperature, shared_weight)
    (grad_ref,) = torch.autograd.grad(reference, student_logits)
    assert any(not g.exact for g in groups) and any(g.exact for g in groups)  # splits and one-to-one spans both
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-4)


def test_shared_tokens_pair_special_tokens_by_role(smollm2, tiny_checkpoint):
    """SmolLM2's end of turn <|im_end|> (its EOS) is the plain student's </s>; ordinary tokens pair by their bytes."""
    teacher, student = ByteVocab(smollm2), ByteVocab(tiny_checkpoint)
    pairs = shared_tokens(student, teacher)
    assert pairs[teacher.special["<|im_end|>"]] == student.special["</s>"]
    the = teacher.encode(" the")
    assert len(the) == 1 and pairs[the[0]] == student.id_of[b" the"]
    assert len(set(pairs.values())) == len(pairs)  # one teacher token per student token


def kd_cli(student, teacher, data, out, *extra):
    return run_cli(
        "finetune_kd", student, "--teacher", teacher, "--data", data, "--out_dir", out, "--mode", "full",
        "--train.max_steps", "12", "--train.micro_batch_size", "2", "--train.global_batch_size", "2",
        "--train.lr_warmup_steps", "0", "--optimizer.lr", "0.01", "--eval.interval", "6", "--eval.max_iters", "2",
        *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sp_student(tiny_factory):
    return tiny_factory(n_layer=1, tokenizer="sentencepiece", vocab_size=400)


@pytest.fixture(scope="module")
def fit_data(tmp_path_factory):
    """Eight answers, validated on themselves: the student should come to match the teacher on them."""
    qa = json.loads((DEMO / "qa.json").read_text())
    rows = [{"instruction": r["Question"], "output": r["Answer"]} for r in qa["train"][:8]]
    out = tmp_path_factory.mktemp("xtok-data")
    (out / "train.json").write_text(json.dumps(rows))
    (out / "val.json").write_text(json.dumps(rows))
    return out


@pytest.fixture(scope="module")
def taught(two_tokenizers, fit_data, tmp_path_factory):
    """The BPE teacher after SFT on the answers: peaked distributions worth distilling (a random one is near uniform)."""
    out = tmp_path_factory.mktemp("xtok-teacher")
    done = run_cli("finetune_sft", two_tokenizers[0], "--data", fit_data, "--out_dir", out, "--mode", "full",
                   "--train.max_steps", "40", "--train.epochs", "100", "--train.micro_batch_size", "4",
                   "--train.global_batch_size", "4", "--train.lr_warmup_steps", "0", "--optimizer.lr", "0.01",
                   "--eval.interval", "1000")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "final"


@pytest.mark.parametrize("mode", ["uld", "align"])
def test_cli_trains_a_sentencepiece_student_from_a_bpe_teacher(taught, sp_student, fit_data, tmp_path, mode):
    teacher = taught
    done = kd_cli(sp_student, teacher, fit_data, tmp_path / "out", "--cross_tokenizer", mode, "--kd_ratio", "1",
                  "--train.max_steps", "24", "--train.epochs", "100", "--eval.interval", "12",
                  "--eval.initial_validation", "true")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Cross-tokenizer alignment" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    kd = [r["val_kd_loss"] for r in rows if "val_kd_loss" in r]
    assert len(kd) >= 3 and kd[-1] < 0.8 * kd[0], kd
    config = json.loads((tmp_path / "out" / "kd_metadata.json").read_text())["method_config"]
    assert config["cross_tokenizer"] == mode and 0 < config["teacher"]["exact_groups"] < config["teacher"]["groups"]


def test_same_tokenizer_align_is_forward_kl(pair, data_dir, tmp_path):
    """With the student's own tokenizer every span is one token and every token shared: ``align`` with the shared
    weight 1 is the plain KD loss (forward KL), the first step's loss equal to finetune_kd's."""
    teacher, student = pair
    plain = kd_cli(student, teacher, data_dir, tmp_path / "plain", "--train.max_steps", "1")
    cross = kd_cli(student, teacher, data_dir, tmp_path / "cross", "--train.max_steps", "1", "--cross_tokenizer",
                   "align", "--cross_shared_weight", "1")  # fmt: skip
    assert plain.returncode == 0 and cross.returncode == 0, cross.stderr[-3000:]
    first = lambda d: json.loads((d / "metrics.jsonl").read_text().splitlines()[0])  # noqa: E731
    a, b = first(tmp_path / "plain"), first(tmp_path / "cross")
    assert b["top1_agreement"] == pytest.approx(a["top1_agreement"])
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--cross_tokenizer", "uld", "--divergence", "skew_kl"], "--divergence and --beta apply to"),
        (["--cross_tokenizer", "uld", "--lmbda", "0.5"], "drop --lmbda"),
        (["--cross_tokenizer", "uld", "--cross_shared_weight", "0.5"], "align's shared tokens only"),
        (["--cross_tokenizer", "align", "--cross_shared_weight", "1.5"], "cross_shared_weight"),
        (["--cross_tokenizer", "align", "--topk_tail", "false"], "topk_tail: applies to a top-k teacher"),
        ([], "--cross_tokenizer uld|align"),
    ],
)
def test_bad_flags_are_one_line(two_tokenizers, sp_student, data_dir, tmp_path, extra, message):
    teacher, _ = two_tokenizers
    done = kd_cli(sp_student, teacher, data_dir, tmp_path / "out", *extra)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_pretokenized_data_and_unalignable_texts_are_refused(two_tokenizers, sp_student, tmp_path):
    """Pre-tokenized data has no text to render for the teacher; a SentencePiece normalizer that rewrites "\ufb01"
    (a ligature) as "fi" leaves two answers that are not the same text: one line naming the sample, exit 2."""
    teacher, _ = two_tokenizers
    done = kd_cli(sp_student, teacher, tokenized_for(sp_student, tmp_path / "pt"), tmp_path / "out1", "--cross_tokenizer",
                  "uld")  # fmt: skip
    assert done.returncode == 2 and "not pre-tokenized" in done.stderr and "Traceback" not in done.stderr
    data = tmp_path / "text"
    data.mkdir()
    rows = [{"instruction": "Say it", "output": f"A \ufb01ne answer {i}"} for i in range(4)]
    (data / "train.json").write_text(json.dumps(rows))
    (data / "val.json").write_text(json.dumps(rows[:1]))
    done = kd_cli(sp_student, teacher, data, tmp_path / "out2", "--cross_tokenizer", "uld")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "train sample 0" in done.stderr and "cannot be aligned" in done.stderr
    assert not (tmp_path / "out2").exists()


def test_offline_store_of_the_whole_vocabulary_gives_the_online_loss(taught, sp_student, fit_data, tmp_path):
    """distill_logprobs --cross_tokenizer keeps the teacher's top-k in its own vocabulary with its answer tokens and
    tokenizer; with k the whole vocabulary (float32), finetune_kd's first loss from the store is the online one."""
    store = tmp_path / "store"
    done = run_cli("distill_logprobs", taught, "--student", sp_student, "--data", fit_data, "--out", store,
                   "--cross_tokenizer", "true", "--top_k", "512", "--dtype", "float32")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (store / "teacher_tokenizer" / "tokenizer.json").is_file()
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["cross_tokenizer"] and manifest["teacher_vocab"] == 512
    online = kd_cli(sp_student, taught, fit_data, tmp_path / "online", "--cross_tokenizer", "uld",
                    "--train.max_steps", "1")  # fmt: skip
    offline = run_cli(
        "finetune_kd", sp_student, "--teacher_logprobs", store, "--data", fit_data, "--out_dir", tmp_path / "offline",
        "--mode", "full", "--cross_tokenizer", "uld", "--train.max_steps", "1", "--train.micro_batch_size", "2",
        "--train.global_batch_size", "2", "--train.lr_warmup_steps", "0", "--optimizer.lr", "0.01",
        "--eval.interval", "6", "--eval.max_iters", "2",
    )  # fmt: skip
    assert online.returncode == 0 and offline.returncode == 0, offline.stderr[-3000:]
    first = lambda d: json.loads((d / "metrics.jsonl").read_text().splitlines()[0])  # noqa: E731
    a, b = first(tmp_path / "online"), first(tmp_path / "offline")
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["uld"] == pytest.approx(a["uld"], rel=1e-5)

    # a cross store read as a same-tokenizer one, align from a store, and a store without --cross_tokenizer
    for extra, message in (
        ([], "pass --cross_tokenizer uld"),
        (["--cross_tokenizer", "align"], "use --cross_tokenizer uld"),
    ):
        done = run_cli("finetune_kd", sp_student, "--teacher_logprobs", store, "--data", fit_data, "--out_dir",
                       tmp_path / "bad", *extra)  # fmt: skip
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    done = run_cli("distill_logprobs", taught, "--student", sp_student, "--data", fit_data, "--out", tmp_path / "t2",
                   "--cross_tokenizer", "true", "--temperature", "2")  # fmt: skip
    assert done.returncode == 2 and "temperature 1 only" in done.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "t2").exists()


def test_frozen_head_path_gives_autograd_gradients(two_tokenizers):
    """A frozen head (LoRA) takes the fused path, which computes each block's gradient in the forward; a group's
    value couples several rows, which stays exact because the loss sums the values: hidden-row gradients equal
    plain autograd's."""
    t_dir, s_dir = two_tokenizers
    s = side(s_dir, ANSWERS[1], "Question: where?\nAnswer: ")
    t = side(t_dir, ANSWERS[1], "<s>Q: where?\nA: ")
    groups = align(_pieces(s[0], s[4]), _pieces(t[0], t[4]))
    batch = alignment_tensors([groups], [len(s[4])], [len(t[4])])
    torch.manual_seed(0)
    head = nn.Linear(32, 448, bias=False).requires_grad_(False)
    hidden = torch.randn(1, s[1].size(1) - 1, 32, requires_grad=True)
    teacher_logits = 3 * torch.randn(1, t[1].size(1), 512)
    s_flat = torch.nonzero((s[2][:, 1:] != -100).reshape(-1)).flatten()
    t_flat = torch.nonzero((t[2][:, 1:] != -100).reshape(-1)).flatten()
    t_rows = teacher_logits[:, :-1].reshape(-1, 512)[t_flat]
    kd, cross = KDSettings(temperature=2.0, kd_ratio=0.6), CrossSettings("align")
    shared = SharedVocab(shared_tokens(s[0], t[0]), 512, 448)
    grads = []
    for fused in (True, False):
        spans = teacher_spans(t_rows, nn.Identity(), t[2][:, 1:].reshape(-1)[t_flat], batch, 2.0, 512)
        cross_head = _CrossHead(head, 448, s_flat, s[2][:, 1:].reshape(-1)[s_flat], CrossBatch(batch), spans, kd,
                                cross, shared, fused)  # fmt: skip
        cross_head.spans = lambda n, step, h=cross_head: _CrossHead.spans(h, n, 4)  # several blocks, cut between groups
        (grad,) = torch.autograd.grad(cross_head(hidden).sum(), hidden)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
