"""--train.group_by_length: Hugging Face's length-grouped order — every sample once per epoch, similar lengths
together, the mega-batch order still shuffled, resumable like the plain order."""

from __future__ import annotations

import json
import random

from litgpt_ext.training.sampler import MEGA_BATCHES, ResumableBatchSampler


def _padding(batches, lengths) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_grouped_order_visits_each_sample_once_sorts_mega_batches_and_pads_less():
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(1000)]
    plain = list(ResumableBatchSampler(1000, 4, seed=3))
    grouped_sampler = ResumableBatchSampler(1000, 4, seed=3, lengths=lengths)
    grouped = list(grouped_sampler)
    assert sorted(i for b in grouped for i in b) == list(range(1000))
    mega = MEGA_BATCHES * 4
    flat = [i for b in grouped for i in b]
    for start in range(0, 1000, mega):  # each mega-batch is sorted, longest first
        chunk = [lengths[i] for i in flat[start : start + mega]]
        assert chunk == sorted(chunk, reverse=True)
    assert _padding(grouped, lengths) < 0.1 * _padding(plain, lengths)
    # the same shuffled samples form each mega-batch as in the plain order (only their order inside changes)
    plain_flat = [i for b in plain for i in b]
    assert set(flat[:mega]) == set(plain_flat[:mega])
    # another epoch is another order; a resumed sampler continues with the same next batch
    grouped_sampler.set_position(1)
    assert list(grouped_sampler) != grouped
    grouped_sampler.set_position(0, skip_batches=7)
    assert list(grouped_sampler) == grouped[7:]
    # two ranks split each mega-batch between them and together see every sample
    ranks = [list(ResumableBatchSampler(1000, 4, seed=3, rank=r, world_size=2, lengths=lengths)) for r in (0, 1)]
    assert sorted(i for rank in ranks for b in rank for i in b) == list(range(1000))


def test_finetune_sft_takes_the_flag_and_records_it(tiny_checkpoint, tmp_path):
    from tests.conftest import run_cli

    rows = [{"instruction": "word " * (i % 9 + 1), "output": f"answer {i}"} for i in range(24)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    result = run_cli(
        "finetune_sft", tiny_checkpoint, "--data", tmp_path / "d.json", "--out_dir", tmp_path / "out",
        "--train.group_by_length", "true", "--train.max_steps", "3", "--train.epochs", "null",
        "--train.micro_batch_size", "4", "--train.global_batch_size", "4", "--precision", "32-true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "group_by_length: true" in (tmp_path / "out" / "final" / "hyperparameters.yaml").read_text()
