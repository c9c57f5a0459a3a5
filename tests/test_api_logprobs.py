"""Teacher log-probs from an OpenAI-compatible endpoint: distill_query --logprobs K (live and Batch API) against the
stand-in server speaking them in a tokenizer's vocabulary, over real HTTP with the real openai client; distill_convert
--logprobs mapping them to the student's ids by bytes; finetune_kd training on the result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from teacher_helpers import write_records

from conftest import run_cli
from distill.convert import distill_convert
from distill.convert_logprobs import TAIL_FLOOR
from distill.query import distill_query
from distill.teacher.fake_logprobs import ALTERNATIVE_DECAY, ALTERNATIVE_P, ANSWER_P
from distill.teacher.fake_server import FakeOpenAI, ServerConfig
from litgpt_ext.errors import UserError
from litgpt_ext.kd.token_bytes import ByteVocab

PROMPT = "Title: {title}\nBody: {body}\nWrite three search queries."


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def _query(server, records, out, **kw) -> int:
    try:
        distill_query(records=records, prompt=PROMPT, out=out, base_url=server.base_url, concurrency=4, **kw)
    except SystemExit as stop:
        return stop.code
    return 0


def _results(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "status" in r]


@pytest.fixture(scope="module")
def answered(tmp_path_factory, tiny_factory):
    """30 records answered with top-5 log-probs in the tiny BPE student's vocabulary."""
    student = tiny_factory()
    tmp = tmp_path_factory.mktemp("api-logprobs")
    records = write_records(tmp / "records.jsonl", 30)
    out = tmp / "responses.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", "sk-test")
    with FakeOpenAI(ServerConfig(tokenizer=str(student))) as server:
        assert _query(server, records, out, logprobs=5) == 0
    mp.undo()
    return student, records, out


def test_answers_keep_each_tokens_bytes_logprob_and_alternatives_in_the_cache(answered):
    student, _, out = answered
    vocab = ByteVocab(student)
    rows = _results(out)
    assert len(rows) == 30 and all(r["status"] == "ok" for r in rows)
    choice = rows[0]["choices"][0]
    tokens = choice["logprobs"]
    assert b"".join(bytes(t["bytes"]) for t in tokens).decode() == choice["content"]
    assert [vocab.id_of[bytes(t["bytes"])] for t in tokens] == vocab.encode(choice["content"])
    first = tokens[0]
    assert len(first["top_logprobs"]) == 5 and math.isclose(first["logprob"], math.log(ANSWER_P))
    assert [round(math.exp(a["logprob"]), 6) for a in first["top_logprobs"][1:]] == [
        round(ALTERNATIVE_P * ALTERNATIVE_DECAY**j, 6) for j in range(4)
    ]


def test_logprobs_are_part_of_the_request_key(tmp_path, api_key, answered):
    student, records, out = answered
    plain = tmp_path / "plain.jsonl"
    with FakeOpenAI(ServerConfig(tokenizer=str(student))) as server:
        assert _query(server, records, plain) == 0
    assert not {r["key"] for r in _results(plain)} & {r["key"] for r in _results(out)}
    assert "logprobs" not in _results(plain)[0]["choices"][0]


def test_top_logprobs_over_the_endpoint_limit_stops_once_with_its_message(tmp_path, api_key, tiny_checkpoint, capsys):
    records = write_records(tmp_path / "records.jsonl", 20)
    for mode in ("live", "batch"):
        out = tmp_path / f"{mode}.jsonl"
        with FakeOpenAI(ServerConfig(tokenizer=str(tiny_checkpoint))) as server:
            with pytest.raises(UserError, match=r"refused the log-probs request \(400\).*<= 20, but got 25") as err:
                _query(server, records, out, logprobs=25, mode=mode, poll_interval=0.05)
            assert err.value.field == "logprobs"
            if mode == "live":
                assert server.state.received <= 4  # the in-flight ones, not one per record
                assert not out.exists() or not _results(out)


def test_an_endpoint_without_logprobs_is_a_located_quarantine_reason(tmp_path, api_key):
    records = write_records(tmp_path / "records.jsonl", 6)
    out = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig()) as server:  # no tokenizer: answers carry "logprobs": null
        assert _query(server, records, out, logprobs=5) == 3
    quarantine = [json.loads(line) for line in (tmp_path / "responses.quarantine.jsonl").read_text().splitlines()]
    assert len(quarantine) == 6 and {q["reason"] for q in quarantine} == {"no_logprobs"}
    assert all(q["ids"] for q in quarantine)


def test_broken_logprobs_in_a_200_are_retried_like_any_bad_body(tmp_path, api_key, tiny_checkpoint):
    records = write_records(tmp_path / "records.jsonl", 30)
    out = tmp_path / "responses.jsonl"
    config = ServerConfig(tokenizer=str(tiny_checkpoint), fault_rate=0.3, faults=("bad_logprobs", "500"), seed=3)
    with FakeOpenAI(config) as server:
        assert _query(server, records, out, logprobs=3, max_attempts=10) == 0
        assert server.state.faults_injected > 0 and server.state.duplicates() == 0
    rows = _results(out)
    assert len(rows) == 30 and all(isinstance(t["logprob"], float) for r in rows for t in r["choices"][0]["logprobs"])


def test_batch_api_answers_keep_their_logprobs(tmp_path, api_key, tiny_checkpoint):
    records = write_records(tmp_path / "records.jsonl", 8)
    out = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig(tokenizer=str(tiny_checkpoint))) as server:
        assert _query(server, records, out, logprobs=4, mode="batch", poll_interval=0.05) == 0
    rows = _results(out)
    assert len(rows) == 8 and all(len(r["choices"][0]["logprobs"][0]["top_logprobs"]) == 4 for r in rows)


def test_convert_writes_the_teachers_own_tokens_and_their_top_k_store(answered, tmp_path):
    student, records, responses = answered
    out = tmp_path / "data"
    distill_convert(records=records, responses=responses, out_dir=out, instruction="Queries for: {title}",
                    logprobs=True, tokenizer=student, val_fraction=0.2)  # fmt: skip
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.kd.store import TopK, load_store

    manifest = load_store(out / "teacher_logprobs")
    assert manifest["k"] == 5 and manifest["mapped_share"] == 1.0
    train = torch.load(out / "train.pt", weights_only=True)
    text = json.loads((out / "train.json").read_text())
    assert len(train["ids"]) == len(text) > 0
    tok = Tokenizer(student)
    by_id = {r["ids"][0]: r for r in _results(responses)}
    store = TopK(out / "teacher_logprobs" / "train.topk.pt")
    for i in range(3):
        start, end = int(train["offsets"][i]), int(train["offsets"][i + 1])
        labels = train["labels"][start:end]
        answer = labels[labels != -100].tolist()
        tokens = by_id[train["ids"][i]]["choices"][0]["logprobs"]
        vocab = ByteVocab(student)
        assert answer == [vocab.id_of[bytes(t["bytes"])] for t in tokens] + [tok.eos_id]
        rows = store.rows(i)
        assert rows.stop - rows.start == len(answer)
        ids, logps, tail = store.ids[rows], store.logps[rows].float(), store.tail[rows]
        assert ids[:-1, 0].tolist() == answer[:-1]  # the answer token is the most likely
        kept = logps[0].exp().sum()
        assert math.isclose(float(tail[0].exp()), 1 - float(kept), rel_tol=1e-5)
        assert (
            ids[-1, 0] == tok.eos_id
            and (ids[-1, 1:] == -1).all()
            and math.isclose(float(tail[-1].exp()), TAIL_FLOOR, rel_tol=1e-5)
        )


def test_finetune_kd_learns_from_the_api_teacher_store(answered, tmp_path):
    student, records, responses = answered
    data = tmp_path / "data"
    distill_convert(records=records, responses=responses, out_dir=data, instruction="Queries for: {title}",
                    logprobs=True, tokenizer=student, val_fraction=0.2)  # fmt: skip
    out = tmp_path / "kd"
    r = run_cli("finetune_kd", student, "--data", data, "--teacher_logprobs", data / "teacher_logprobs",
                "--out_dir", out, "--mode", "full", "--beta", "1", "--train.max_steps", "12",
                "--train.global_batch_size", "4", "--train.micro_batch_size", "4", "--eval.interval", "100",
                "--eval.initial_validation", "true", "--optimizer.lr", "0.01")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    vals = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in m]
    assert all(math.isfinite(m["val_kd_loss"]) for m in vals)
    assert vals[-1]["val_kl_teacher_student"] < 0.8 * vals[0]["val_kl_teacher_student"]


def test_mapping_shares_quarantine_and_the_other_family_stop(answered, tmp_path, tiny_factory):
    student, records, responses = answered
    rows = [json.loads(line) for line in responses.read_text().splitlines()]
    alien = {"token": "\u4e00", "bytes": list("\u4e00".encode()), "logprob": -4.0}
    for row in rows[:3]:  # an alternative the student lacks at every position: share 5/6
        for t in row["choices"][0]["logprobs"]:
            t["top_logprobs"][-1] = alien
    for t in rows[3]["choices"][0]["logprobs"][:1]:  # an answer token the student lacks
        t.update(alien)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "data"
    distill_convert(records=records, responses=edited, out_dir=out, logprobs=True, tokenizer=student)
    dropped = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    reasons = sorted(d["reason"] for d in dropped)
    assert reasons == ["low_mapped"] * 3 + ["unmapped_answer"]
    assert all(0.8 < d["mapped_share"] < 0.9 for d in dropped if d["reason"] == "low_mapped")
    distill_convert(records=records, responses=edited, out_dir=tmp_path / "lenient", logprobs=True,
                    tokenizer=student, min_mapped=0.8)  # fmt: skip
    lenient = [json.loads(line)["reason"] for line in (tmp_path / "lenient" / "quarantine.jsonl").open()]
    assert lenient == ["unmapped_answer"]

    other = tiny_factory(tokenizer="sentencepiece")
    r = run_cli("distill_convert", "--records", records, "--responses", responses, "--out_dir", tmp_path / "sp",
                "--logprobs", "true", "--tokenizer", other)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "tokenizer family" in line and "SFT" in line and str(responses) in line
    assert not (tmp_path / "sp").exists()
    r = run_cli("distill_convert", "--records", records, "--responses", responses, "--out_dir", tmp_path / "x",
                "--logprobs", "true", "--tokenizer", student, "--parser", "lines")  # fmt: skip
    assert r.returncode == 2 and "--parser raw" in r.stderr


def test_special_tokens_map_by_name_then_by_role(answered, tmp_path, smollm2):
    """Real servers (vLLM) return EOS among top_logprobs: the student's own special token of that name, else the
    student's token of that role (another family's end of text is the student's EOS); ordinary text never does."""
    student, records, responses = answered
    tiny = ByteVocab(student)  # <s> 1, </s> 2 (and <pad> 0)
    assert [tiny.id_for(t.encode()) for t in ("</s>", "<s>", "<pad>")] == [2, 1, 0]
    assert [tiny.id_for(t.encode()) for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|begin_of_text|>")] == [
        2, 2, 2, 1]  # fmt: skip
    assert tiny.id_for(b"<|unknown_marker|>") is None
    real = ByteVocab(smollm2)  # <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2; EOS <|im_end|>, BOS <|im_start|>
    assert [real.id_for(t.encode()) for t in ("<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>", "<s>")] == [
        0, 2, 2, 2, 1]  # fmt: skip
    assert real.id_for(b" Paris") == real.encode(" Paris")[0]

    rows = [json.loads(line) for line in responses.read_text().splitlines()]
    eos = {"token": "</s>", "bytes": list(b"</s>"), "logprob": math.log(0.01)}
    for row in rows:  # the teacher would have ended after the last answer token with p = 0.01 (vLLM's shape)
        tokens = row["choices"][0].get("logprobs") if row.get("choices") else None
        if tokens:
            tokens[-1]["top_logprobs"][-1] = eos
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "data"
    distill_convert(records=records, responses=edited, out_dir=out, logprobs=True, tokenizer=student)
    from litgpt_ext.kd.store import TopK, load_store

    assert load_store(out / "teacher_logprobs")["mapped_share"] == 1.0  # was < 1 when specials had no bytes
    quarantine = out / "quarantine.jsonl"
    reasons = {json.loads(line)["reason"] for line in quarantine.open()} if quarantine.exists() else set()
    assert not reasons & {"low_mapped", "unmapped_answer"}, reasons
    train = torch.load(out / "train.pt", weights_only=True)
    store = TopK(out / "teacher_logprobs" / "train.topk.pt")
    rows = store.rows(0)
    last_answer = store.ids[rows][-2]  # the row before the EOS (hard-label) row
    assert 2 in last_answer.tolist()
    assert math.isclose(float(store.logps[rows][-2][last_answer.tolist().index(2)].float().exp()), 0.01, rel_tol=1e-2)
    assert len(train["ids"]) == len(json.loads((out / "train.json").read_text()))
