"""The skew and adaptive divergences of finetune_kd (``--divergence``): each equals its paper's formula written out
on hand-made distributions, reduces to forward / reverse KL at its limit, works on stored top-k buckets (padding
included) without NaN gradients, trains in a whole run, and refuses bad numbers in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from kd_helpers import _train

from litgpt_ext.errors import UserError
from litgpt_ext.training.objectives.divergences import adaptive_kl, generalized_jsd, skew_kl, skew_reverse_kl
from litgpt_ext.training.objectives.kd import KDSettings, TeacherBlock, block_losses


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


P = [0.6, 0.2, 0.1, 0.1]  # the teacher
Q = [0.3, 0.3, 0.25, 0.15]  # the student


def logs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.9])
def test_skew_divergences_equal_distillms_formulas(alpha):
    s, t = logs(Q), logs(P)
    mix = [alpha * p + (1 - alpha) * q for p, q in zip(P, Q, strict=True)]
    assert float(skew_kl(s, t, alpha)[0]) == pytest.approx(kl(P, mix), abs=1e-12)
    rmix = [alpha * q + (1 - alpha) * p for p, q in zip(P, Q, strict=True)]
    assert float(skew_reverse_kl(s, t, alpha)[0]) == pytest.approx(kl(Q, rmix), abs=1e-12)


def test_skew_divergences_reduce_to_forward_and_reverse_kl():
    torch.manual_seed(0)
    s, t = torch.randn(6, 30).log_softmax(-1), torch.randn(6, 30).log_softmax(-1)
    torch.testing.assert_close(skew_kl(s, t, 0.0), generalized_jsd(s, t, 0.0))
    torch.testing.assert_close(skew_reverse_kl(s, t, 0.0), generalized_jsd(s, t, 1.0))
    for fn in (skew_kl, skew_reverse_kl):  # a mixture that is the distribution itself: nothing to pay
        assert float(fn(s, t, 1.0).abs().max()) < 1e-6
        assert bool((fn(s, t, 0.5) < fn(s, t, 0.0)).all())  # and skewing bounds the ratio: smaller than plain KL


def test_adaptive_kl_weights_forward_and_reverse_kl_by_the_head_and_tail_gaps():
    s, t = logs(Q), logs(P)
    # mu 0.5: the head is the top token only (0.6 crosses 0.5; the top token is always head), gaps |p - q|
    gaps = [abs(p - q) for p, q in zip(P, Q, strict=True)]
    w_head = gaps[0] / sum(gaps)
    want = w_head * kl(P, Q) + (1 - w_head) * kl(Q, P)
    assert float(adaptive_kl(s, t, 0.5)[0]) == pytest.approx(want, abs=1e-12)
    # mu 0.85: the head is the two most likely tokens (cumulative 0.6, 0.8)
    w_head = (gaps[0] + gaps[1]) / sum(gaps)
    want = w_head * kl(P, Q) + (1 - w_head) * kl(Q, P)
    assert float(adaptive_kl(s, t, 0.85)[0]) == pytest.approx(want, abs=1e-12)
    # a student wrong only in the tail is fitted by reverse KL alone, one wrong only in the head by forward KL alone
    tail_only = [0.6, 0.1, 0.2, 0.1]
    assert float(adaptive_kl(logs(tail_only), t, 0.5)[0]) == pytest.approx(kl(tail_only, P), abs=1e-12)
    head_only = [0.7, 0.1, 0.1, 0.1]
    assert float(adaptive_kl(logs(head_only), t, 0.85)[0]) == pytest.approx(kl(P, head_only), abs=1e-12)
    assert float(adaptive_kl(t, t, 0.5)[0]) == 0.0  # equal distributions: 0, not 0/0


def test_adaptive_kl_gradient_treats_the_weights_as_constants():
    torch.manual_seed(1)
    logits = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 12, dtype=torch.float64).log_softmax(-1)
    s = logits.log_softmax(-1)
    adaptive_kl(s, t, 0.5).sum().backward()
    with torch.no_grad():  # the same weights, taken from the function's own split
        forward, reverse = generalized_jsd(s, t, 0.0), generalized_jsd(s, t, 1.0)
        total = adaptive_kl(s, t, 0.5)
        w_head = (total - reverse) / (forward - reverse)
    expected = torch.autograd.grad((w_head * generalized_jsd(logits.log_softmax(-1), t, 0.0)
                                    + (1 - w_head) * generalized_jsd(logits.log_softmax(-1), t, 1.0)).sum(), logits)[0]  # fmt: skip
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize("divergence", ["skew_kl", "skew_rkl", "akl"])
def test_stored_top_k_with_padding_gives_finite_gradients_and_k_equal_vocab_is_exact(divergence):
    torch.manual_seed(2)
    s_logits, t_logits = torch.randn(5, 40), torch.randn(5, 40)
    targets = torch.randint(0, 40, (5,))
    t_logps = t_logits.log_softmax(-1)
    kd = KDSettings(kd_ratio=1.0, divergence=divergence, skew_alpha=0.2)
    full, _ = block_losses(s_logits, TeacherBlock(logits=t_logits), targets, kd)
    for k in (40, 7):
        top, ids = t_logps.topk(k, -1)
        tail = torch.logsumexp(t_logps.scatter(1, ids, float("-inf")), -1)
        if k == 7:  # an API teacher's short row: two unknown alternatives (id -1), their mass in the tail
            ids, top = ids.clone(), top.clone()
            ids[0, 5:], top[0, 5:] = -1, float("-inf")
            tail[0] = torch.logsumexp(t_logps[0].scatter(0, ids[0, :5], float("-inf")), -1)
        logits = s_logits.clone().requires_grad_(True)
        stored = TeacherBlock(ids=ids, logps=top, tail=tail, target_logps=t_logps.gather(1, targets[:, None])[:, 0])
        losses, _ = block_losses(logits, stored, targets, kd)
        losses.sum().backward()
        assert bool(torch.isfinite(losses).all()) and bool(torch.isfinite(logits.grad).all())
        if k == 40:
            torch.testing.assert_close(losses, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("divergence", ["skew_kl", "skew_rkl", "akl"])
def test_a_whole_run_with_each_divergence_learns_and_records_it(pair, data_dir, tmp_path, divergence):
    rows = _train(pair, data_dir, tmp_path / divergence, steps=6, kd_ratio=1.0, divergence=divergence)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0], losses
    meta = json.loads((tmp_path / divergence / "kd_metadata.json").read_text())["method_config"]
    assert meta["divergence"] == divergence
    assert ("skew_alpha" in meta) == divergence.startswith("skew") and ("akl_mu" in meta) == (divergence == "akl")


def test_bad_divergence_settings_are_one_line_and_write_nothing(pair, data_dir, tmp_path):
    out = tmp_path / "never"
    cases = [
        (dict(divergence="skew_kl", skew_alpha=0.0), r"skew_alpha: must be in \(0, 1\), got 0.0"),
        (dict(divergence="skew_rkl", skew_alpha=1.0), r"skew_alpha: must be in \(0, 1\), got 1.0"),
        (dict(divergence="akl", akl_mu=0.0), r"akl_mu: must be in \(0.0, 1.0\], got 0.0"),
        (dict(divergence="skew_kl", beta=0.5), "beta: chooses within --divergence gjsd only"),
        (dict(divergence="tvd"), "divergence: must be one of gjsd, skew_kl, skew_rkl, akl"),
    ]
    for kw, message in cases:
        with pytest.raises(UserError, match=message):
            _train(pair, data_dir, out, **kw)
    assert not out.exists()
