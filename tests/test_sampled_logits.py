"""Sampled sparse logits (distill_logprobs --sampling sample): the stored target is an unbiased estimate of the
teacher's distribution and its forward-KL gradient the full one in expectation — statistical tests with stated
tolerances — while top-k's is biased; the store is seeded, resumable and sharded like a top-k one; finetune_kd
trains from it; and the options it cannot honour are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from kd_helpers import _train

from litgpt_ext.errors import UserError
from litgpt_ext.kd.sampled import Sampled, dense_target, sample_rows
from litgpt_ext.training.objectives.divergences import KDSettings, sampled_forward_kl
from litgpt_ext.training.objectives.kd import TeacherBlock, block_losses

V, ROWS, SEEDS = 40, 3, 3000
Z = 5.0
"""A mean is within Z standard errors of what it estimates (per token; a false alarm somewhere among the V × ROWS
entries of a test has probability ≈ 1e-4)."""


def _teacher(seed: int = 0) -> torch.Tensor:
    """Peaked teachers with long tails, as language models' next-token distributions are."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(ROWS, V, generator=g) * 2.5


def _draws(logits: torch.Tensor, samples: int, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(SEEDS, ROWS, V) dense targets and (SEEDS, ROWS) ids/weights rows, each seed its own draw."""
    dense, rows = [], []
    for seed in range(SEEDS):
        g = torch.Generator().manual_seed(seed)
        r = sample_rows(logits, torch.zeros(ROWS, dtype=torch.long), samples, tau, g)
        ids, p_hat = _padded(r, samples)
        dense.append(dense_target(ids, p_hat, V))
        rows.append((ids, p_hat, r["entropy"]))
    return torch.stack(dense), rows


def _padded(r: dict, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = r["width"].long()
    widest = int(width.max())
    ids = torch.full((len(width), widest), -1, dtype=torch.long)
    p_hat = torch.zeros(len(width), widest)
    start = 0
    for i, w in enumerate(width.tolist()):
        ids[i, :w] = r["ids"][start : start + w].long()
        p_hat[i, :w] = r["weights"][start : start + w] / samples
        start += w
    return ids, p_hat


def _within(mean: torch.Tensor, want: torch.Tensor, spread: torch.Tensor, floor: torch.Tensor) -> None:
    """Within Z standard errors: the empirical one, or the estimator's own where that is larger (a token so rare
    that no seed drew it has an empirical spread of 0 and a mean of 0, off by its probability)."""
    se = torch.maximum(spread / SEEDS**0.5, floor)
    gap = (mean - want).abs()
    assert bool((gap <= Z * se).all()), f"worst gap {float((gap / se).max()):.1f} standard errors"


def _p_hat_se(logits: torch.Tensor, samples: int, tau: float) -> torch.Tensor:
    """The standard error of the mean of ``p̂_i`` over the seeds: one draw contributes ``(p_i / q_i) · [x = i]``,
    of variance ``p_i² / q_i − p_i²``."""
    p, q = F.softmax(logits, dim=-1).double(), F.softmax(logits * tau, dim=-1).double()
    return ((p * p / q - p * p) / samples / SEEDS).sqrt().float()


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_the_sampled_target_is_unbiased_for_every_token_and_top_k_is_not(tau):
    logits = _teacher()
    p = F.softmax(logits, dim=-1)
    dense, _ = _draws(logits, samples=8, tau=tau)
    _within(dense.mean(0), p, dense.std(0), _p_hat_se(logits, 8, tau))
    if tau == 1:  # counts: every row sums to exactly 1
        torch.testing.assert_close(dense.sum(-1), torch.ones(SEEDS, ROWS))
    # top-k at equal storage: the tail has no mass at all; renormalised over k, the head is inflated
    top = p.topk(8, dim=-1)
    topk = torch.zeros_like(p).scatter(1, top.indices, top.values / top.values.sum(-1, keepdim=True))
    assert float((topk - p).abs().max()) > 0.01


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_the_expected_gradient_is_the_full_distributions_and_top_ks_is_not(tau):
    """The gradient of the stored target's loss in the student's logits, averaged over seeds, equals the full
    forward-KL gradient within its standard error (and its value the KL); top-k with the tail bucket (what
    finetune_kd does with a top-k store) differs by many standard errors on the tail."""
    logits = _teacher(1)
    p = F.softmax(logits, dim=-1)
    student = (torch.randn(ROWS, V, generator=torch.Generator().manual_seed(9)) * 1.5).requires_grad_(True)
    full = F.kl_div(F.log_softmax(student, -1), p, reduction="none").sum(-1)
    (want,) = torch.autograd.grad(full.sum(), student)
    _, rows = _draws(logits, samples=8, tau=tau)
    grads, values = [], []
    for ids, p_hat, entropy in rows:
        value = sampled_forward_kl(F.log_softmax(student, -1), ids, p_hat, entropy)
        grads.append(torch.autograd.grad(value.sum(), student)[0])
        values.append(value.detach())
    grads, values = torch.stack(grads), torch.stack(values)
    _within(grads.mean(0), want, grads.std(0), _p_hat_se(logits, 8, tau))
    _within(values.mean(0), full.detach(), values.std(0), torch.zeros(ROWS))
    kd = KDSettings(kd_ratio=1.0)
    top = F.log_softmax(logits, -1).topk(8, dim=-1)
    tail = torch.log1p(-top.values.exp().sum(-1))
    loss, _ = block_losses(student, TeacherBlock(ids=top.indices, logps=top.values, tail=tail,
                                                 target_logps=top.values[:, 0]), torch.zeros(ROWS, dtype=torch.long),
                           kd)  # fmt: skip
    (topk_grad,) = torch.autograd.grad(loss.sum(), student)
    se = grads.std(0) / SEEDS**0.5
    assert float(((topk_grad - want).abs() / (se + 1e-9)).max()) > 20


def test_block_losses_on_sampled_rows_is_the_estimate_mixed_with_ce():
    logits, targets = _teacher(2), torch.tensor([1, 2, 3])
    r = sample_rows(logits, targets, 16, 1.0, torch.Generator().manual_seed(0))
    ids, p_hat = _padded(r, 16)
    student = torch.randn(ROWS, V, generator=torch.Generator().manual_seed(4))
    block = TeacherBlock(ids=ids, p_hat=p_hat, entropy=r["entropy"], top=r["top"].long(), target_logps=r["target"])
    loss, metrics = block_losses(student, block, targets, KDSettings(kd_ratio=0.3))
    s = F.log_softmax(student, -1)
    kl = sampled_forward_kl(s, ids, p_hat, r["entropy"])
    ce = -s.gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(loss, 0.7 * ce + 0.3 * kl)
    torch.testing.assert_close(metrics["teacher_ce"], -F.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0])
    assert torch.equal(r["top"].long(), logits.argmax(-1))


# -- the store, through the commands -------------------------------------------------------------------------------
def _store(pair, data_dir, out, **kw):
    from litgpt_ext.kd.logprobs import distill_logprobs

    teacher_dir, student_dir = pair
    distill_logprobs(teacher_dir, data=data_dir, out=out, student=student_dir, sampling="sample",
                     **{"samples": 16, "window": 1, "batch_size": 2, **kw})  # fmt: skip
    return json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else None


def test_a_sampled_store_is_seeded_sharded_and_trains_a_student(pair, data_dir, tmp_path):
    from litgpt.tokenizer import Tokenizer

    manifest = _store(pair, data_dir, tmp_path / "one")
    assert manifest["sampling"] == "sample" and manifest["samples"] == 16 and "k" not in manifest
    assert (tmp_path / "one" / "train.sampled.pt").is_file() and not (tmp_path / "one" / "train.topk.pt").exists()
    assert manifest["bytes"]["train"] == (tmp_path / "one" / "train.sampled.pt").stat().st_size
    train = Sampled(tmp_path / "one" / "train.sampled.pt", 16)
    rows = train.gather(list(range(len(train))))
    assert len(rows["t_ids"]) == manifest["positions"]["train"]
    torch.testing.assert_close(rows["t_p"].sum(-1), torch.ones(len(rows["t_p"])))  # counts / N
    assert int(rows["t_ids"].max()) < Tokenizer(pair[1]).vocab_size + 64
    assert manifest["entries"]["train"] < 16 * manifest["positions"]["train"]  # distinct tokens only
    # two shards draw exactly the tokens one run draws (each window its own seeded stream)
    _store(pair, data_dir, tmp_path / "two", shard="0/2")
    _store(pair, data_dir, tmp_path / "two", shard="1/2")
    for split in ("train", "val"):
        a = torch.load(tmp_path / "one" / f"{split}.sampled.pt", weights_only=True)
        b = torch.load(tmp_path / "two" / f"{split}.sampled.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in ("ids", "weights", "width", "entropy", "top", "target"))
    other = _store(pair, data_dir, tmp_path / "seed2", seed=2)
    assert other["entries"] != manifest["entries"] or not torch.equal(
        torch.load(tmp_path / "seed2" / "train.sampled.pt", weights_only=True)["ids"],
        torch.load(tmp_path / "one" / "train.sampled.pt", weights_only=True)["ids"],
    )
    steps = _train(pair, data_dir, tmp_path / "student", steps=3, kd_ratio=1.0, teacher_logprobs=tmp_path / "one")
    losses = [r["loss"] for r in steps if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    meta = json.loads((tmp_path / "student" / "kd_metadata.json").read_text())
    assert meta["method_config"]["teacher"]["sampling"] == "sample"


def test_many_draws_give_the_online_first_step(pair, data_dir, tmp_path):
    """With 2,048 draws per position the first step's KL estimate is the online teacher's to a few percent (its
    standard error over ~40 positions), and its loss likewise."""
    _store(pair, data_dir, tmp_path / "store", samples=2048, window=4)
    online = _train(pair, data_dir, tmp_path / "on", steps=1, kd_ratio=1.0)[0]
    sampled = _train(pair, data_dir, tmp_path / "off", steps=1, kd_ratio=1.0, teacher_logprobs=tmp_path / "store")[0]
    assert abs(sampled["kl_teacher_student"] - online["kl_teacher_student"]) < 0.03 * online["kl_teacher_student"]
    assert abs(sampled["top1_agreement"] - online["top1_agreement"]) < 1e-6


def test_what_a_sampled_store_cannot_do_is_refused_in_one_line(pair, data_dir, tmp_path):
    from litgpt_ext.kd.evaluate import evaluate_kd
    from litgpt_ext.kd.logprobs import distill_logprobs

    teacher_dir, student_dir = pair
    with pytest.raises(UserError, match="samples: must be >= 1"):
        _store(pair, data_dir, tmp_path / "zero", samples=0)
    with pytest.raises(UserError, match="samples: counts above 2048 are not exact in float16"):
        _store(pair, data_dir, tmp_path / "big", samples=4096)
    with pytest.raises(UserError, match="temperature: draws at temperature 1"):
        _store(pair, data_dir, tmp_path / "hot", temperature=2.0)
    assert not any((tmp_path / name).exists() for name in ("zero", "big", "hot"))
    _store(pair, data_dir, tmp_path / "store")
    for kw, message in [
        (dict(topk_tail=False), "topk_tail: renormalises over a top-k"),
        (dict(beta=0.5), "divergence: a sampled store estimates forward KL only"),
        (dict(divergence="akl"), "divergence: a sampled store estimates forward KL only"),
        (dict(temperature=2.0), "temperature: a sampled store's draws are at temperature 1"),
    ]:
        with pytest.raises(UserError, match=message):
            _train(pair, data_dir, tmp_path / "never", teacher_logprobs=tmp_path / "store", **kw)
    assert not (tmp_path / "never").exists()
    with pytest.raises(UserError, match="teacher_logprobs: holds tokens drawn from the teacher"):
        evaluate_kd(student_dir, teacher_logprobs=tmp_path / "store", data=data_dir)
    # one store, one scheme: a top-k run into a sampled store's directory is another run
    with pytest.raises(UserError, match="holds parts of another distill_logprobs run .*sampling"):
        distill_logprobs(teacher_dir, data=data_dir, out=tmp_path / "store", student=student_dir, top_k=5, window=1)
    (tmp_path / "store" / "train.sampled.pt").rename(tmp_path / "store" / "train.topk.pt")
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    (tmp_path / "store" / "manifest.json").write_text(json.dumps({**manifest, "sampling": "topk", "k": 5}))
    with pytest.raises(UserError, match="not a litgpt_ext.topk/v1 file .a store mixes two --sampling schemes"):
        _train(pair, data_dir, tmp_path / "never", teacher_logprobs=tmp_path / "store")
