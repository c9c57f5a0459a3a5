"""finetune_kd and distill_logprobs: the divergences equal TRL's, the blockwise / fused heads give autograd's
gradients, stored top-k with k = vocabulary equals the online loss, the first step equals TRL's GKDTrainer, resume is
exact, and bad input is one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from kd_helpers import _batch, _Fabric, _student, _train

from litgpt_ext.errors import UserError
from litgpt_ext.finetune import kd as finetune_kd
from litgpt_ext.kd.teacher import LocalTeacher, TeacherBlock
from litgpt_ext.model import blockwise_head
from litgpt_ext.model.patches import FastPaths, patched
from litgpt_ext.training.args import TrainArgs
from litgpt_ext.training.objectives.divergences import jsd_loss
from litgpt_ext.training.objectives.kd import KDSettings, block_losses, kd_forward


# -- the divergence ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_divergence_equals_trls_generalized_jsd_loss(beta, temperature):
    from trl.experimental.gkd import GKDTrainer

    torch.manual_seed(0)
    student, teacher = torch.randn(3, 7, 50) * 3, torch.randn(3, 7, 50) * 3
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :4] = -100  # a prompt
    labels[2, 5:] = -100  # padding
    theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    ours = jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    assert abs(float(ours) - float(theirs)) < 1e-6


def test_top_k_buckets_keep_the_rest_of_the_mass_and_k_equal_vocab_is_the_full_loss():
    torch.manual_seed(1)
    s_logits, t_logits = torch.randn(5, 40), torch.randn(5, 40)
    targets = torch.randint(0, 40, (5,))
    full_t = TeacherBlock(logits=t_logits)
    t_logps = torch.log_softmax(t_logits, -1)
    for k in (40, 7):
        top, ids = t_logps.topk(k, -1)
        tail = torch.logsumexp(t_logps.scatter(1, ids, float("-inf")), -1)
        stored = TeacherBlock(ids=ids, logps=top, tail=tail, target_logps=t_logps.gather(1, targets[:, None])[:, 0])
        for beta in (0.0, 0.5, 1.0):
            kd = KDSettings(beta=beta, kd_ratio=1.0)
            full, _ = block_losses(s_logits, full_t, targets, kd)
            bucketed, metrics = block_losses(s_logits, stored, targets, kd)
            if k == 40:
                torch.testing.assert_close(bucketed, full, atol=1e-6, rtol=0)
            else:  # merging tokens into one bucket can only lose divergence (data processing inequality)
                assert bool((bucketed <= full + 1e-6).all())
            assert torch.allclose(metrics["teacher_ce"], -t_logps.gather(1, targets[:, None])[:, 0])


# -- the blockwise heads -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize(
    "divergence, beta", [("gjsd", 0.0), ("gjsd", 0.5), ("gjsd", 1.0), ("skew_kl", 0.0), ("skew_rkl", 0.0), ("akl", 0.0)]
)
def test_blockwise_and_fused_heads_give_autograds_gradients(pair, monkeypatch, lora, divergence, beta):
    """The frozen-head path (LoRA without lora_head: backward done in the forward) and the trainable-head path
    (checkpointed blocks) against a plain full-logits implementation: same loss, same gradients."""
    teacher_dir, student_dir = pair
    teacher = LocalTeacher(teacher_dir)
    kd = KDSettings(beta=beta, temperature=2.0, kd_ratio=0.3, divergence=divergence)
    batch = _batch(student_dir)
    index = batch["answer_index"]
    targets = batch["labels"][:, 1:].reshape(-1).index_select(0, index)
    input_ids = batch["input_ids"][:, :-1]

    def run(fused: bool, chunk: int):
        monkeypatch.setattr(blockwise_head, "HEAD_CHUNK_ELEMENTS", chunk)
        model = _student(student_dir, lora)
        teacher.setup(_Fabric(), model, {})
        with patched(model, "training", FastPaths(forwards=False, frozen_head=fused)):
            loss, metrics = kd_forward(model, input_ids, index, targets, teacher.blocks(batch, input_ids, index), kd)
            loss.backward()
        return loss.detach(), metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def plain():
        model = _student(student_dir, lora)
        teacher.setup(_Fabric(), model, {})
        with torch.no_grad():
            t_logits = teacher.model(input_ids).reshape(-1, teacher.vocab)[index]
        logits = model(input_ids).reshape(-1, model.config.padded_vocab_size)[index].float()
        losses, _ = block_losses(logits, TeacherBlock(logits=t_logits), targets, kd)
        losses.mean().backward()
        return losses.mean().detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want_loss, want = plain()
    vocab = 512
    for fused, chunk in ((True, 3 * vocab), (False, 3 * vocab), (False, 2**21)):
        loss, metrics, grads = run(fused, chunk)
        assert abs(float(loss) - float(want_loss)) < 1e-5
        assert grads.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(grads[name], want[name], atol=2e-6, rtol=1e-4)
        assert set(metrics) == {"kd", "ce", "kl_teacher_student", "top1", "teacher_ce"}


# -- whole runs ----------------------------------------------------------------------------------------------------
def test_offline_top_k_with_k_equal_vocab_equals_the_online_loss(pair, data_dir, tmp_path):
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.kd.logprobs import distill_logprobs

    teacher_dir, student_dir = pair
    vocab = Tokenizer(student_dir).vocab_size
    distill_logprobs(teacher_dir, data=data_dir, out=tmp_path / "store", student=student_dir, top_k=vocab,
                     dtype="float32", window=3, batch_size=2)  # fmt: skip
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["k"] == vocab and manifest["data"]["train"]["samples"] == 4
    for beta in (0.0, 1.0):
        online = _train(pair, data_dir, tmp_path / f"on{beta}", kd_ratio=1.0, beta=beta)
        offline = _train(pair, data_dir, tmp_path / f"off{beta}", kd_ratio=1.0, beta=beta,
                         teacher_logprobs=tmp_path / "store")  # fmt: skip
        for a, b in zip(online, offline, strict=True):
            assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["kl_teacher_student"] - b["kl_teacher_student"]) < 1e-5
    meta = json.loads((tmp_path / "off0.0" / "kd_metadata.json").read_text())
    assert meta["method_config"]["teacher"]["kind"] == "stored" and (tmp_path / "off0.0" / "kd.png").is_file()


def test_first_step_loss_equals_trls_gkd_trainer(pair, data_dir, tmp_path):
    """On the same exported weights and the same four samples: finetune_kd's first loss (alpha 1, online, full
    vocabulary) equals GKDTrainer.compute_loss (lmbda 0, seq_kd false)."""
    from litgpt.tokenizer import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from litgpt_ext.data.batches import pad_collate
    from litgpt_ext.data.sft import SFTData
    from litgpt_ext.export.command import export_hf

    teacher_dir, student_dir = pair
    for name, ckpt in (("teacher", teacher_dir), ("student", student_dir)):
        export_hf(ckpt, out_dir=tmp_path / name, dtype="fp32")
    data = SFTData(path=data_dir)
    data.connect(tokenizer=Tokenizer(student_dir), batch_size=4)
    data.setup()
    samples = [data.train_dataset[i] for i in range(4)]
    batch = pad_collate(samples)
    lengths = batch["lengths"]
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": (torch.arange(batch["input_ids"].size(1)) < lengths[:, None]).long(),
        "labels": batch["labels"],
    }
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher", dtype=torch.float32)
    from datasets import Dataset

    for beta in (0.0, 0.5):
        args = GKDConfig(output_dir=str(tmp_path / "trl"), lmbda=0.0, beta=beta, seq_kd=False, report_to=[],
                         per_device_train_batch_size=4, use_cpu=True)  # fmt: skip
        trainer = GKDTrainer(
            model=student, teacher_model=teacher, args=args, data_collator=lambda rows: rows,
            train_dataset=Dataset.from_list([{"x": 0}]), processing_class=AutoTokenizer.from_pretrained(tmp_path / "student"),
        )  # fmt: skip
        with torch.no_grad():
            theirs = float(trainer.compute_loss(trainer.model, inputs))
        ours = _train(pair, data_dir, tmp_path / f"ours{beta}", steps=1, kd_ratio=1.0, beta=beta)[0]["loss"]
        assert abs(ours - theirs) < 1e-5, (beta, ours, theirs)


def test_resume_reproduces_the_steps_exactly(pair, data_dir, tmp_path):
    args = dict(max_steps=4, epochs=None, global_batch_size=4, micro_batch_size=2, save_interval=2, lr_warmup_steps=0,
                log_interval=1)  # fmt: skip
    kw = dict(kd_ratio=0.5, beta=0.5, temperature=2.0, train=TrainArgs(**args))
    a = _train(pair, data_dir, tmp_path / "c", **kw)
    shutil.rmtree(tmp_path / "c" / "step-000004")
    b = _train(pair, data_dir, tmp_path / "c", resume=tmp_path / "c" / "step-000002", **kw)
    la = {r["step"]: r["loss"] for r in a if "loss" in r}
    lb = {r["step"]: r["loss"] for r in b if "loss" in r}
    assert la.keys() == lb.keys() == {1, 2, 3, 4} and all(abs(la[s] - lb[s]) < 1e-6 for s in la)


def test_bad_input_is_one_line_and_writes_nothing(pair, data_dir, tmp_path, tiny_factory):
    teacher_dir, student_dir = pair
    out = tmp_path / "never"
    cases = [
        (dict(beta=1.5), "beta: must be in"),
        (dict(temperature=0.0), "temperature: must be > 0"),
        (dict(kd_ratio=-0.1), "kd_ratio: must be in"),
        (dict(teacher=tmp_path / "nope"), "not a checkpoint directory"),
        (dict(teacher=None), "pass one of --teacher DIR"),
        (dict(teacher_logprobs=tmp_path / "nostore"), "not a directory"),
    ]
    for kw, message in cases:
        with pytest.raises(UserError, match=message):
            _train(pair, data_dir, out, **kw)
    other = tiny_factory(vocab_size=300)  # another tokenizer
    with pytest.raises(UserError, match=r"teacher: the teacher's tokenizer differs from the student's on [\d,]+ of"):
        finetune_kd.setup(student_dir, teacher=other, data=data_dir, out_dir=out)
    assert not out.exists()


def test_a_store_from_other_data_or_settings_is_refused(pair, data_dir, tmp_path):
    from litgpt_ext.kd.logprobs import distill_logprobs

    teacher_dir, student_dir = pair
    store = tmp_path / "store"
    distill_logprobs(teacher_dir, data=data_dir, out=store, student=student_dir, top_k=5)
    with pytest.raises(UserError, match="was made from other train data"):
        _train(pair, data_dir, tmp_path / "o", teacher_logprobs=store, train=TrainArgs(max_seq_length=12, max_steps=1))
    with pytest.raises(UserError, match="stores log-probs at temperature 1, but --temperature is 2"):
        _train(pair, data_dir, tmp_path / "o", teacher_logprobs=store, temperature=2.0)
    with pytest.raises(UserError, match="top_k: must be <= the vocabulary size"):
        distill_logprobs(teacher_dir, data=data_dir, out=tmp_path / "s2", student=student_dir, top_k=10**6)
    with pytest.raises(UserError, match="holds parts of another distill_logprobs run"):
        shutil.rmtree(store / "parts")
        (store / "parts").mkdir()
        (store / "parts" / "settings.json").write_text(json.dumps({"k": 3}))
        distill_logprobs(teacher_dir, data=data_dir, out=store, student=student_dir, top_k=5)


def test_distill_logprobs_resumes_missing_windows_and_shards_pack_the_same_store(pair, data_dir, tmp_path):
    """Each finished window is a part file: a rerun computes only the missing ones (a run killed with kill -9 leaves
    exactly that state), and two shards give the store one run gives."""
    from litgpt_ext.kd.logprobs import distill_logprobs

    teacher_dir, student_dir = pair
    common = dict(data=data_dir, student=student_dir, top_k=5, window=1, batch_size=2)
    distill_logprobs(teacher_dir, out=tmp_path / "one", **common)
    parts = sorted((tmp_path / "one" / "parts").glob("*.pt"))
    assert len(parts) == 6  # 4 train + 2 val windows of one sample
    kept = {p.name: p.stat().st_mtime_ns for p in parts[1:]}
    parts[0].unlink()
    for name in ("manifest.json", "train.topk.pt", "val.topk.pt"):
        (tmp_path / "one" / name).unlink()
    distill_logprobs(teacher_dir, out=tmp_path / "one", **common)
    assert {p.name: p.stat().st_mtime_ns for p in sorted((tmp_path / "one" / "parts").glob("*.pt"))[1:]} == kept
    distill_logprobs(teacher_dir, out=tmp_path / "two", shard="0/2", **common)
    assert not (tmp_path / "two" / "manifest.json").exists()  # the other shard's windows are missing
    distill_logprobs(teacher_dir, out=tmp_path / "two", shard="1/2", **common)
    for split in ("train", "val"):
        a = torch.load(tmp_path / "one" / f"{split}.topk.pt", weights_only=True)
        b = torch.load(tmp_path / "two" / f"{split}.topk.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in ("ids", "logps", "tail", "target", "offsets"))
    with pytest.raises(UserError, match="top_k: must be >= 1"):
        distill_logprobs(teacher_dir, out=tmp_path / "three", **{**common, "top_k": 0})


def test_tokens_count_every_step_whatever_the_log_interval(pair, data_dir, tmp_path):
    """tokens (and tokens/s, performance.json) cover every step, not only the logged ones."""
    runs = {}
    for every in (1, 3):
        train = TrainArgs(max_steps=6, epochs=None, global_batch_size=2, micro_batch_size=2, save_interval=None,
                          lr_warmup_steps=0, log_interval=every)  # fmt: skip
        rows = _train(pair, data_dir, tmp_path / f"log{every}", train=train)
        runs[every] = [r for r in rows if "tokens" in r][-1]["tokens"]
        perf = json.loads((tmp_path / f"log{every}" / "performance.json").read_text())
        assert perf["tokens"] == runs[every]
    assert runs[1] == runs[3] > 0


def test_evaluate_kd_and_distill_logprobs_read_chat_template_data(tiny_instruct, data_dir, tmp_path):
    """Chat-template data renders with the student's own template in every command that reads it, not only in the
    finetune commands (evaluate_kd once refused it: "chat_template needs the student checkpoint")."""
    from litgpt_ext.data.sft import SFTData
    from litgpt_ext.kd.evaluate import evaluate_kd
    from litgpt_ext.kd.logprobs import distill_logprobs

    def chat_data():
        return SFTData(path=data_dir, prompt_style="chat_template")

    result = evaluate_kd(tiny_instruct, teacher=tiny_instruct, data=chat_data(), split="val")
    assert result["forward_kl"] == pytest.approx(0.0, abs=1e-5) and result["top1_agreement"] == 1.0
    distill_logprobs(tiny_instruct, data=chat_data(), out=tmp_path / "store", top_k=4)
    assert (tmp_path / "store" / "manifest.json").is_file()
