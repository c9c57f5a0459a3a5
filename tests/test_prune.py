"""``litgpt-ext prune``: the cuts are exact where they should be (the teacher's own shape, parts that carry nothing),
the scores find what carries nothing, the result is an ordinary litgpt checkpoint, and bad requests stop at start."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import DEMO, run_cli, tokenized_for


def _gpt(ckpt: Path):
    from litgpt.config import Config
    from litgpt.model import GPT

    model = GPT(Config.from_file(ckpt / "model_config.yaml"))
    state = torch.load(ckpt / "lit_model.pth", weights_only=True)
    model.load_state_dict(state.get("model", state))
    return model.eval()


def _logits(ckpt: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _gpt(ckpt)(ids)


def _prune(teacher: Path, out: Path, *flags, data: Path | None = None) -> dict:
    from litgpt_ext.prune.command import prune

    kwargs = dict(zip(flags[::2], flags[1::2], strict=True))
    prune(teacher, out_dir=out, data=data or DEMO / "corpus.txt", calibration_samples=8, max_seq_length=64, **kwargs)
    return json.loads((out / "prune_report.json").read_text())


def _edited(teacher: Path, out: Path, edit) -> Path:
    """A copy of ``teacher`` with ``edit(state)`` applied to its weights."""
    shutil.copytree(teacher, out)
    state = torch.load(out / "lit_model.pth", weights_only=True)
    with torch.no_grad():
        edit(state)
    torch.save(state, out / "lit_model.pth")
    return out


IDS = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(0))


def test_pruning_to_the_teachers_own_shape_is_the_identity(tiny_checkpoint, tmp_path):
    from litgpt.config import Config

    c = Config.from_file(tiny_checkpoint / "model_config.yaml")
    report = _prune(tiny_checkpoint, tmp_path / "same", "n_layer", c.n_layer, "intermediate_size", c.intermediate_size,
                    "n_embd", c.n_embd, "n_query_groups", c.n_query_groups)  # fmt: skip
    assert report["student"] == report["teacher"] and report["parameters"]["ratio"] == 1.0
    torch.testing.assert_close(_logits(tmp_path / "same", IDS), _logits(tiny_checkpoint, IDS), rtol=0, atol=1e-6)


def _silenced(teacher: Path, out: Path, block: int) -> Path:
    """A copy of ``teacher`` whose block ``block`` adds nothing to the residual stream (an identity)."""

    def silence(state):
        for key in ("attn.proj.weight", "mlp.proj.weight"):
            state[f"transformer.h.{block}.{key}"].zero_()

    return _edited(teacher, out, silence)


def test_a_block_that_does_nothing_scores_zero_and_is_dropped_first(tiny_factory, tmp_path):
    silent = _silenced(tiny_factory(n_layer=4), tmp_path / "silent", 2)
    report = _prune(silent, tmp_path / "pruned", "n_layer", 3)
    assert report["block_scores"][2] == pytest.approx(0.0, abs=1e-6)
    assert min(report["block_scores"][i] for i in (0, 1, 3)) > 1e-3
    assert report["kept"]["blocks"] == [0, 1, 3]
    torch.testing.assert_close(_logits(tmp_path / "pruned", IDS), _logits(silent, IDS), rtol=1e-5, atol=1e-5)


def test_width_pruning_removes_the_parts_that_carry_nothing_and_keeps_the_logits(tiny_checkpoint, tmp_path):
    """Zeroed MLP channels, a zeroed key/value group and zeroed residual channels are what width pruning removes;
    the logits do not change (RMSNorm: its weights rescaled for the narrower mean)."""
    from litgpt.config import Config

    c = Config.from_file(tiny_checkpoint / "model_config.yaml")
    hs, per_group = c.head_size, c.n_head // c.n_query_groups
    dead_channels, dead_group, dead_embedding = torch.tensor([3, 10, 40]), 1, torch.tensor([5, 17])

    def kill(state):
        for i in range(c.n_layer):
            h = f"transformer.h.{i}."
            state[h + "mlp.fc_2.weight"][dead_channels] = 0  # the channel's activation is 0
            v = (c.n_head + c.n_query_groups + dead_group) * hs  # the group's values: its heads output 0
            state[h + "attn.qkv.weight"][v : v + hs] = 0
            for key in ("attn.proj.weight", "mlp.proj.weight"):  # nothing writes into the dead residual channels
                state[h + key][dead_embedding] = 0
        state["transformer.wte.weight"][:, dead_embedding] = 0

    dead = _edited(tiny_checkpoint, tmp_path / "dead", kill)
    report = _prune(dead, tmp_path / "narrow", "intermediate_size", c.intermediate_size - 3,
                    "n_query_groups", c.n_query_groups - 1, "n_embd", c.n_embd - 2)  # fmt: skip
    assert report["kept"]["groups"] == [[g for g in range(c.n_query_groups) if g != dead_group]] * c.n_layer
    student = Config.from_file(tmp_path / "narrow" / "model_config.yaml")
    assert (student.n_embd, student.intermediate_size, student.n_query_groups, student.n_head, student.head_size) == (
        c.n_embd - 2, c.intermediate_size - 3, c.n_query_groups - 1, c.n_head - per_group, c.head_size)  # fmt: skip
    torch.testing.assert_close(_logits(tmp_path / "narrow", IDS), _logits(dead, IDS), rtol=1e-4, atol=1e-4)


def test_a_pruned_checkpoint_is_a_litgpt_checkpoint_that_exports_with_equal_logits(tiny_checkpoint, tmp_path):
    """Depth and width together, tied embeddings kept tied; transformers gives litgpt's logits on the export."""
    from transformers import AutoModelForCausalLM

    from litgpt_ext.export.command import export_hf
    from litgpt_ext.model.tied import checkpoint_is_tied

    def tie(state):
        state["lm_head.weight"] = state["transformer.wte.weight"].clone()

    tied = _edited(tiny_checkpoint, tmp_path / "tied", tie)
    _prune(tied, tmp_path / "small", "n_layer", 1, "n_embd", 48, "intermediate_size", 64, "n_head", 2)
    small = tmp_path / "small"
    assert checkpoint_is_tied(small)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "prune_scores.png"):
        assert (small / name).is_file(), name
    export_hf(small, out_dir=tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(IDS).logits, _logits(small, IDS), rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tie_word_embeddings"] is True


def test_prune_then_distill_from_the_command_line(tiny_checkpoint, tmp_path):
    """As a user runs it: prune on a Q/A file, then finetune_kd from the uncut teacher and generate_batch."""
    small = tmp_path / "student"
    done = run_cli("prune", tiny_checkpoint, "--out_dir", small, "--data", DEMO / "qa.json", "--data.prompt_style",
                   "default", "--n_layer", "1",
                   "--intermediate_size", "64", "--calibration_samples", "16")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "parameters:" in done.stdout and "n_layer 2 -> 1" in done.stdout
    kd = run_cli("finetune_kd", small, "--teacher", tiny_checkpoint, "--data", DEMO / "qa.json", "--out_dir",
                 tmp_path / "kd", "--mode", "full", "--precision", "32-true", "--train.max_steps", "2",
                 "--train.epochs", "null", "--train.global_batch_size", "2", "--train.micro_batch_size", "2",
                 "--eval.interval", "100", "--eval.final_validation", "false")  # fmt: skip
    assert kd.returncode == 0, kd.stderr[-2000:]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Who sells lamps?"}\n')
    gen = run_cli("generate_batch", tmp_path / "kd" / "final", "--input", prompts, "--output", tmp_path / "g.jsonl",
                  "--max_new_tokens", "4", "--precision", "32-true")  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-2000:]


def test_ppl_depth_metric_scores_a_block_by_the_loss_without_it(tiny_factory, tmp_path):
    """Skipping a block that does nothing leaves the calibration loss as it is; skipping the others changes it."""
    silent = _silenced(tiny_factory(n_layer=4), tmp_path / "silent", 0)
    report = _prune(silent, tmp_path / "pruned", "n_layer", 3, "depth_metric", "ppl")
    scores, loss = report["block_scores"], report["calibration"]["teacher_loss"]
    assert report["depth_metric"] == "ppl" and scores[0] == pytest.approx(loss, abs=1e-4)
    assert all(abs(scores[i] - loss) > 1e-3 for i in (1, 2, 3))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--n_layer", "9"], "at most the teacher's 2"),
        (["--n_head", "3"], "multiple of the teacher's 2 query heads per group"),
        (["--n_head", "2", "--n_query_groups", "2"], "disagree"),
        ([], "give a size to prune to"),
    ],
)
def test_bad_requests_are_refused_in_one_line_and_write_nothing(tiny_checkpoint, tmp_path, flags, message):
    out = tmp_path / "out"
    r = run_cli("prune", tiny_checkpoint, "--out_dir", out, "--data", DEMO / "corpus.txt", *flags)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert message in r.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_an_moe_mlp_and_data_of_another_tokenizer_are_refused(tiny_factory, tmp_path):
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    moe = make_tiny_checkpoint(out_dir=tmp_path / "moe", like="Qwen3-30B-A3B")
    r = run_cli("prune", moe, "--out_dir", tmp_path / "o1", "--data", DEMO / "corpus.txt", "--intermediate_size", "8")
    assert r.returncode == 2 and "LLaMAMoE" in r.stderr and "Traceback" not in r.stderr
    other, teacher = tiny_factory(vocab_size=1024), tiny_factory()
    data = tokenized_for(other, tmp_path / "data")
    r = run_cli("prune", teacher, "--out_dir", tmp_path / "o2", "--data", data, "--n_layer", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_a_lora_merged_student_prunes_like_any_checkpoint(tiny_checkpoint, tmp_path):
    """finetune_sft --mode lora writes the merged weights to final/: prune takes them as it takes any checkpoint."""
    sft = run_cli("finetune_sft", tiny_checkpoint, "--data", DEMO / "qa.json", "--out_dir", tmp_path / "lora",
                  "--precision", "32-true", "--train.max_steps", "1", "--train.epochs", "null",
                  "--train.global_batch_size", "2", "--train.micro_batch_size", "2", "--eval.interval", "100",
                  "--eval.final_validation", "false")  # fmt: skip
    assert sft.returncode == 0, sft.stderr[-2000:]
    merged = tmp_path / "lora" / "final"
    report = _prune(merged, tmp_path / "small", "n_head", 2)
    assert report["student"]["n_head"] == 2 and report["student"]["n_query_groups"] == 1
    assert _logits(tmp_path / "small", IDS).shape == _logits(merged, IDS).shape
