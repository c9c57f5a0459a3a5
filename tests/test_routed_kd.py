"""Several teachers in one run (finetune_kd --teachers, --data.route_field): the data carries each record's route;
a two-teacher step is exactly the position-weighted sum of the single-teacher steps on each part (loss and
gradient); a whole run logs per-teacher metrics; routing mistakes are one line with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from kd_helpers import _Fabric, _student, _train

from litgpt_ext.errors import UserError
from litgpt_ext.training.args import TrainArgs

ROUTES = ["a", "b", None, "a", "b", "a"]


@pytest.fixture(scope="module")
def routed_data(tmp_path_factory):
    """Six demo Q/A records as litgpt JSON, each naming its teacher in ``"teacher"`` (one names none)."""
    from conftest import DEMO

    qa = json.loads((DEMO / "qa.json").read_text())["train"]
    rows = []
    for i, route in enumerate(ROUTES):
        row = {"id": f"r{i}", "instruction": qa[i]["Question"], "output": " " + qa[i]["Answer"]}
        rows.append(row | ({"teacher": route} if route else {}))
    out = tmp_path_factory.mktemp("routed")
    (out / "train.json").write_text(json.dumps(rows[:4]))
    (out / "val.json").write_text(json.dumps(rows[4:]))
    return out


@pytest.fixture(scope="module")
def second_teacher(pair, tmp_path_factory):
    """Another teacher of the pair's tokenizer (so the two teachers' losses differ)."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    out = tmp_path_factory.mktemp("second-teacher") / "teacher"
    return make_tiny_checkpoint(out_dir=out, n_layer=1, n_embd=96, seed=11, tokenizer_from=pair[0])


def _data(student, path, **kw):
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.sft import SFTData

    data = SFTData(**({"path": path} if path else {}), **{"route_field": "teacher", **kw})
    data.connect(tokenizer=Tokenizer(student), batch_size=4)
    data.setup()
    return data


def test_the_data_carries_each_records_route_through_splits_and_chat_rows(pair, routed_data, tmp_path):
    data = _data(pair[1], routed_data)
    assert [data.train_dataset.route(i) for i in range(4)] == ROUTES[:4]
    assert [data.val_dataset.route(i) for i in range(2)] == ROUTES[4:]
    rows = json.loads((routed_data / "train.json").read_text()) + json.loads((routed_data / "val.json").read_text())
    single = tmp_path / "all.json"
    single.write_text(json.dumps(rows))  # validation split off by seed: each sample keeps its own record's route
    data = _data(pair[1], single, val_split_fraction=0.34)
    routes = dict(zip((r["id"] for r in rows), ROUTES, strict=True))
    for dataset in (data.train_dataset, data.val_dataset):
        assert [dataset.route(i) for i in range(len(dataset))] == [routes[dataset.ids[int(k)]] for k in dataset.index]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["instruction"]},
                                                     {"role": "assistant", "content": r["output"]}],
                                        **({"teacher": r["teacher"]} if "teacher" in r else {})}) + "\n"
                            for r in rows))  # fmt: skip
    data = _data(pair[1], chat, val_split_fraction=0.34, prompt_style="alpaca")
    seen = [data.train_dataset.route(i) for i in range(len(data.train_dataset))]
    assert sorted(seen + [data.val_dataset.route(i) for i in range(len(data.val_dataset))], key=str) == sorted(
        ROUTES, key=str
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([rows[0], {**rows[1], "teacher": 7}]))
    with pytest.raises(UserError, match=r"bad.json:record 2: teacher: must be a teacher's name .*got 7"):
        _data(pair[1], bad)
    with pytest.raises(UserError, match="route_field: a Q/A file's rows carry no other fields"):
        from conftest import DEMO

        _data(pair[1], DEMO / "qa.json")


def test_a_two_teacher_step_is_the_weighted_sum_of_single_teacher_steps(pair, second_teacher, routed_data):
    """Loss and every gradient of one routed step (teacher a, teacher b, and a record of none: CE only) equal the
    answer-position-weighted sum of each part computed alone through its single-teacher objective (1e-5)."""
    from litgpt_ext.data.indexed import IndexedSamples
    from litgpt_ext.kd.teacher import LocalTeacher
    from litgpt_ext.training.objectives.kd import KDObjective, KDSettings
    from litgpt_ext.training.objectives.routed_kd import RoutedKD
    from litgpt_ext.training.objectives.sft import answer_cross_entropy

    teacher_a, student_dir = pair
    model = _student(student_dir, lora=False)
    kd = KDSettings(beta=0.5, temperature=2.0, kd_ratio=0.7)
    teachers = {"a": LocalTeacher(teacher_a), "b": LocalTeacher(second_teacher)}
    for t in teachers.values():
        t.setup(_Fabric(), model, {})
    parts = {name: KDObjective(t, kd) for name, t in teachers.items()}
    routed = RoutedKD(parts)
    data = _data(student_dir, routed_data)
    samples = [IndexedSamples(data.train_dataset, "train")[i] for i in range(4)]
    params = [p for p in model.parameters() if p.requires_grad]

    loss, metrics = routed.compute(model, routed.collate(samples))
    grads = torch.autograd.grad(loss, params)
    want_loss, total, pieces = 0.0, 0, []
    for name in ("a", "b", None):
        group = [s for s in samples if s["kd_route"] == name]
        batch = parts[name].collate(group) if name else routed.collate(group)["parts"][""]
        part_loss = parts[name].compute(model, batch)[0] if name else answer_cross_entropy(model, batch)
        pieces.append((part_loss, len(batch["answer_index"])))
        total += len(batch["answer_index"])
    want_loss = sum(piece * n for piece, n in pieces) / total
    want = torch.autograd.grad(want_loss, params)
    assert abs(float(loss.detach()) - float(want_loss.detach())) < 1e-5
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    per_teacher = routed.step_stats(0.0)
    assert per_teacher["records_a"] == 2 and per_teacher["records_b"] == 1
    assert 0 <= per_teacher["top1_agreement_a"] <= 1 and per_teacher["kl_teacher_student_b"] > 0


def test_a_run_with_a_local_teacher_and_a_store_logs_each_teacher(pair, second_teacher, routed_data, tmp_path):
    from litgpt_ext.data.sft import SFTData
    from litgpt_ext.kd.logprobs import distill_logprobs
    from litgpt_ext.kd.teachers import NamedTeacher

    teacher_a, student_dir = pair
    data = SFTData(path=routed_data, route_field="teacher")
    distill_logprobs(second_teacher, data=data, out=tmp_path / "store", student=student_dir, top_k=8)
    teachers = [NamedTeacher("a", teacher=teacher_a), NamedTeacher("b", teacher_logprobs=tmp_path / "store")]
    rows = _train(pair, data, tmp_path / "run", steps=2, kd_ratio=0.5, teachers=teachers, teacher=None)
    train = [r for r in rows if "loss" in r]
    assert len(train) == 2 and all(r["records_a"] == 2 and r["records_b"] == 1 for r in train)
    assert all(0 < r["kl_teacher_student_a"] and 0 < r["kl_teacher_student_b"] for r in train)
    meta = json.loads((tmp_path / "run" / "kd_metadata.json").read_text())["method_config"]
    assert meta["teachers"]["a"]["kind"] == "local" and meta["teachers"]["b"]["kind"] == "stored"


def test_routing_mistakes_are_one_line_and_write_nothing(pair, second_teacher, routed_data, tmp_path):
    from litgpt_ext.data.sft import SFTData
    from litgpt_ext.kd.teachers import NamedTeacher

    teacher_a, _ = pair
    data = SFTData(path=routed_data, route_field="teacher")
    both = [NamedTeacher("a", teacher=teacher_a), NamedTeacher("b", teacher=second_teacher)]
    out = tmp_path / "never"
    cases = [
        (dict(teachers=both[:1]), r"data.route_field: train record r1 names 'b', not one of --teachers \(a\)"),
        (dict(teachers=both, unrouted="refuse"), r"data.route_field: train record r2 names no teacher"),
        (dict(teachers=both, data=routed_data), r"data: --teachers routes each record by a field of it or by its file"),
        (dict(teachers=[both[0], NamedTeacher("a", teacher=second_teacher)]), "teachers: two teachers are named 'a'"),
        (dict(teachers=[NamedTeacher("a", teacher=tmp_path / "nope")]), r"teachers\[a\]"),
        (dict(teachers=[NamedTeacher("a")]), r"teachers\[a\]\.teacher: pass one of --teacher DIR"),
        (dict(teachers=both, teacher=teacher_a), "teachers: names every teacher itself"),
    ]
    for kw, message in cases:
        with pytest.raises(UserError, match=message):
            _train(pair, kw.pop("data", data), out, **{"teacher": None, **kw})
        assert not out.exists(), kw


def test_a_mixture_is_the_weighted_average_of_its_teachers_and_trains(pair, second_teacher, routed_data, tmp_path):
    """The mixture's distribution at the loss's temperature is 0.25 p_a + 0.75 p_b (computed by hand from the two
    teachers' logits); a run routing some records to the mixture trains and logs it; bad mixtures are one line."""
    import torch.nn.functional as F

    from litgpt_ext.api.prompt_scores import ServerArgs
    from litgpt_ext.data.sft import SFTData
    from litgpt_ext.kd.logprobs import distill_logprobs
    from litgpt_ext.kd.teachers import NamedTeacher, routed_teachers
    from litgpt_ext.model.heads import output_head
    from litgpt_ext.training.objectives.kd import KDSettings

    teacher_a, student_dir = pair
    kd = KDSettings(temperature=2.0)
    named = [NamedTeacher("a", teacher=teacher_a), NamedTeacher("b", teacher=second_teacher),
             NamedTeacher("both", mixture={"a": 1.0, "b": 3.0})]  # fmt: skip
    teachers = routed_teachers(student_dir, named, kd, ServerArgs())
    model = _student(student_dir, lora=False)
    for name in ("a", "b", "both"):
        teachers[name].max_seq_length = 64
        teachers[name].setup(_Fabric(), model, {})
    assert teachers["both"].members["a"] is teachers["a"]  # one model per teacher
    ids = torch.randint(4, 200, (2, 9), generator=torch.Generator().manual_seed(1))
    flat = torch.arange(0, 16, 3)
    block = teachers["both"].blocks({}, ids, flat)(0, len(flat))
    mixed = F.log_softmax(block.logits / 2.0, dim=-1).exp()
    want = 0
    for name, w in (("a", 0.25), ("b", 0.75)):
        t = teachers[name]
        logits = output_head(t.model)(t.hidden_rows(ids, flat)).float()[:, : t.vocab]
        want = want + w * F.softmax(logits / 2.0, dim=-1)
    torch.testing.assert_close(mixed, want, atol=1e-6, rtol=1e-5)

    data = SFTData(path=routed_data, route_field="teacher")
    rows = json.loads((routed_data / "train.json").read_text())
    mixed_dir = tmp_path / "mixed"
    mixed_dir.mkdir()
    (mixed_dir / "train.json").write_text(json.dumps([{**r, "teacher": "both"} if r["id"] == "r1" else r
                                                      for r in rows]))  # fmt: skip
    (mixed_dir / "val.json").write_text((routed_data / "val.json").read_text())
    run = _train(pair, SFTData(path=mixed_dir, route_field="teacher"), tmp_path / "run", steps=1, teacher=None,
                 teachers=named)  # fmt: skip
    assert run[0]["records_both"] == 1 and run[0]["kl_teacher_student_both"] > 0
    distill_logprobs(second_teacher, data=data, out=tmp_path / "store", student=student_dir, top_k=8)
    cases = [
        (
            [
                named[0],
                NamedTeacher("s", teacher_logprobs=tmp_path / "store"),
                NamedTeacher("m", mixture={"a": 1, "s": 1}),
            ],
            r"teachers\[m\].mixture: averages whole distributions: 's' must be a local checkpoint",
        ),
        ([named[0], NamedTeacher("m", mixture={"a": 1, "x": 1})], r"'x' is not one of the listed teachers \(a\)"),
        ([*named[:2], NamedTeacher("m", mixture={"a": 1, "b": 0})], "weights must be > 0, got 0 for 'b'"),
        ([named[0], NamedTeacher("m", mixture={"a": 1})], "mixes at least two teachers"),
    ]
    for teachers_flag, message in cases:
        with pytest.raises(UserError, match=message):
            _train(pair, data, tmp_path / "never", teacher=None, teachers=teachers_flag)
        assert not (tmp_path / "never").exists()


def test_evaluate_kd_scores_each_record_against_its_own_teacher(pair, second_teacher, routed_data, tmp_path):
    """With --teachers, evaluate_kd's per-teacher rows equal evaluate_kd run with that one teacher on that
    teacher's records alone, and the totals are their position-weighted means."""
    from litgpt_ext.data.sft import SFTData
    from litgpt_ext.kd.evaluate import evaluate_kd
    from litgpt_ext.kd.teachers import NamedTeacher

    teacher_a, student_dir = pair
    named = [NamedTeacher("a", teacher=teacher_a), NamedTeacher("b", teacher=second_teacher)]
    both = evaluate_kd(student_dir, teachers=named, data=SFTData(path=routed_data, route_field="teacher"),
                       precision="32-true", output=tmp_path / "kd.json")  # fmt: skip
    rows = [json.loads(p.read_text()) for p in (routed_data / "train.json", routed_data / "val.json")]
    for name, checkpoint in (("a", teacher_a), ("b", second_teacher)):
        alone = tmp_path / name
        alone.mkdir()
        (alone / "train.json").write_text(json.dumps([r for r in rows[0] if r.get("teacher") == name]))
        (alone / "val.json").write_text(json.dumps([r for r in rows[1] if r.get("teacher") == name]))
        want = evaluate_kd(student_dir, teacher=checkpoint, data=alone, precision="32-true")
        got = both["per_teacher"][name]
        assert got["positions"] == want["positions"]
        for key in ("forward_kl", "reverse_kl", "top1_agreement", "teacher_ce", "student_ce"):
            assert abs(got[key] - want[key]) < 1e-5, (name, key)
    total = sum(both["per_teacher"][n]["positions"] for n in "ab")
    assert both["positions"] == total  # the unrouted record is not scored
    mean = sum(both["per_teacher"][n]["forward_kl"] * both["per_teacher"][n]["positions"] for n in "ab") / total
    assert abs(both["forward_kl"] - mean) < 1e-6
    assert json.loads((tmp_path / "kd.json").read_text())["per_teacher"]["b"]["teacher"]["kind"] == "local"


def test_a_teacher_of_another_tokenizer_takes_its_route(pair, routed_data, tiny_factory, tmp_path):
    """Route ``b`` to a teacher of another tokenizer (ULD, aligned on the answers' bytes) and ``a`` to one of the
    student's: the first step's loss is the answer-position-weighted sum of the single-teacher runs' first losses on
    each route's records (and cross-entropy alone on the unrouted one); per-teacher rows name both."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.sft import SFTData
    from litgpt_ext.kd.teachers import NamedTeacher

    teacher_a, student_dir = pair
    other = tiny_factory(n_layer=1, vocab_size=400, seed=5)  # its own BPE
    named = [NamedTeacher("a", teacher=teacher_a), NamedTeacher("b", teacher=other, cross_tokenizer="uld")]
    one = TrainArgs(max_steps=1, epochs=None, global_batch_size=4, micro_batch_size=4, save_interval=None,
                    lr_warmup_steps=0, log_interval=1)  # fmt: skip
    both = _train(pair, SFTData(path=routed_data, route_field="teacher"), tmp_path / "both", steps=1, teacher=None,
                  teachers=named, train=one)[0]  # fmt: skip
    assert both["records_b"] == 1 and "kd_loss_b" in both and "kl_teacher_student_b" not in both
    rows = json.loads((routed_data / "train.json").read_text())
    val = json.loads((routed_data / "val.json").read_text())
    tok = Tokenizer(student_dir)
    weighted, total = 0.0, 0
    for route, kw in (("a", dict(teacher=teacher_a)), ("b", dict(teacher=other, cross_tokenizer="uld")),
                      (None, dict(teacher=teacher_a, kd_ratio=0.0))):  # fmt: skip
        alone = tmp_path / f"only-{route}"
        alone.mkdir()
        mine = [r for r in rows if r.get("teacher") == route]
        (alone / "train.json").write_text(json.dumps(mine))
        (alone / "val.json").write_text(json.dumps([r for r in val if r.get("teacher") == route] or mine))
        loss = _train(pair, alone, tmp_path / f"run-{route}", steps=1, train=one, **{"kd_ratio": 0.5, **kw})[0]["loss"]
        data = SFTData(path=alone)
        data.connect(tokenizer=tok, batch_size=4)
        data.setup()
        n = sum(int((data.train_dataset[i]["labels"][1:] != -100).sum()) for i in range(len(data.train_dataset)))
        weighted += loss * n
        total += n
    assert abs(both["loss"] - weighted / total) < 1e-5
    mix = [*named, NamedTeacher("m", mixture={"a": 1, "b": 1})]
    with pytest.raises(UserError, match=r"teachers\[m\].mixture: averages distributions over one vocabulary: 'b'"):
        _train(pair, SFTData(path=routed_data, route_field="teacher"), tmp_path / "never", teacher=None, teachers=mix)
    assert not (tmp_path / "never").exists()


def test_records_routed_by_their_file_train_as_records_routed_by_a_field(pair, second_teacher, routed_data, tmp_path):
    """``--data.route_files {a: DIR, b: DIR}``: each file's samples as it gives them alone, routed to its name,
    in the order given; a run's first step has the loss of the same records routed by a field (1e-5); a
    pre-tokenized file routes too (not for a teacher of another tokenizer, which renders text); mistakes are one
    line with nothing written."""
    from litgpt_ext.data.pretokenized import pack
    from litgpt_ext.data.sft import SFTData
    from litgpt_ext.kd.cross_teacher import teacher_rendering
    from litgpt_ext.kd.teachers import NamedTeacher

    teacher_a, student_dir = pair
    splits = {s: json.loads((routed_data / f"{s}.json").read_text()) for s in ("train", "val")}
    dirs = {}
    for route in ("a", "b"):
        dirs[route] = tmp_path / f"file-{route}"
        dirs[route].mkdir()
        for split, rows in splits.items():
            mine = [{k: v for k, v in r.items() if k != "teacher"} for r in rows if r.get("teacher") == route]
            (dirs[route] / f"{split}.json").write_text(json.dumps(mine))
    merged = tmp_path / "merged"
    merged.mkdir()
    for split, rows in splits.items():
        (merged / f"{split}.json").write_text(json.dumps([r for r in rows if r.get("teacher")]))

    data = _data(student_dir, None, route_field=None, route_files={"b": dirs["b"], "a": dirs["a"]})
    alone = {route: _data(student_dir, dirs[route], route_field=None) for route in ("a", "b")}
    for split in ("train", "val"):
        joined = getattr(data, f"{split}_dataset")
        want = [(route, s) for route in ("b", "a") for s in getattr(alone[route], f"{split}_dataset")]
        assert [joined.route(i) for i in range(len(joined))] == [route for route, _ in want]
        for i, (_, sample) in enumerate(want):
            assert torch.equal(joined[i]["input_ids"], sample["input_ids"])
            assert torch.equal(joined[i]["labels"], sample["labels"])

    named = [NamedTeacher("a", teacher=teacher_a), NamedTeacher("b", teacher=second_teacher)]
    whole = TrainArgs(max_steps=1, epochs=None, global_batch_size=3, micro_batch_size=3, save_interval=None,
                      lr_warmup_steps=0, log_interval=1)  # fmt: skip
    by_file = _train(pair, SFTData(route_files={"a": dirs["a"], "b": dirs["b"]}), tmp_path / "by-file", steps=1,
                     teacher=None, teachers=named, train=whole)[0]  # fmt: skip
    by_field = _train(pair, SFTData(path=merged, route_field="teacher"), tmp_path / "by-field", steps=1,
                      teacher=None, teachers=named, train=whole)[0]  # fmt: skip
    assert by_file["records_a"] == 2 and by_file["records_b"] == 1
    assert abs(by_file["loss"] - by_field["loss"]) < 1e-5

    packed = tmp_path / "packed-b"  # file b pre-tokenized: the same samples, routed by its file alone
    packed.mkdir()
    for split in ("train", "val"):
        samples = list(getattr(alone["b"], f"{split}_dataset"))
        torch.save(pack(samples), packed / f"{split}.pt")
    mixed = _data(student_dir, None, route_field=None, route_files={"a": dirs["a"], "b": packed})
    assert [mixed.train_dataset.route(i) for i in range(len(mixed.train_dataset))] == ["a", "a", "b"]
    assert torch.equal(mixed.train_dataset[2]["input_ids"], alone["b"].train_dataset[0]["input_ids"])
    with pytest.raises(UserError, match="data: --cross_tokenizer renders each record for both tokenizers"):
        teacher_rendering(SFTData(route_files={"a": dirs["a"], "b": packed}), teacher_a)

    from conftest import DEMO

    with pytest.raises(UserError, match=r"data.route_files: the files render with different prompt styles \(a: "):
        _data(student_dir, None, route_field=None, route_files={"a": dirs["a"], "q": DEMO / "qa.json"})
    out = tmp_path / "never"
    cases = [
        (SFTData(route_files={"a": dirs["a"], "c": dirs["b"]}),
         r"data.route_files: 'c' \(the records of .*file-b\) is not one of --teachers \(a, b\)"),
        (SFTData(route_files={"a": dirs["a"]}, route_field="teacher"), "data.route_files: routes by a record field or "
                                                                        "by file, not both"),
        (SFTData(route_files={}), r"data.route_files: names no file"),
        (SFTData(route_files={"a": tmp_path / "missing.json"}), "missing.json: data.path: no such file"),
    ]  # fmt: skip
    for bad, message in cases:
        with pytest.raises(UserError, match=message):
            _train(pair, bad, out, teacher=None, teachers=named)
        assert not out.exists(), message
