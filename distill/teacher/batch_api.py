"""Batch mode: the OpenAI Batch API (half price, 24h window), crash-safe across reruns.

A state file beside the output (``<out>.batches.json``, rewritten atomically after every step) records each input
file's keys, its uploaded file id and its batch id. A rerun therefore polls the batches it already created instead
of submitting again; if a crash fell between creating a batch and recording its id, the batch is found again by its
``input_file_id`` in the server's batch list. Finished batches are downloaded (output and error files; output order
is not input order, lines are matched by ``custom_id`` = request key) and merged into the same cache as live mode.
After expiry or cancellation the completed part is kept and only the rest is submitted again.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import openai
from tqdm import tqdm

from distill.teacher.cache import ResponseCache
from distill.teacher.live import FatalAPIError, refuses_logprobs
from distill.teacher.requests import ChatRequest
from distill.teacher.results import check_logprobs, failure_row, result_row
from litgpt_ext.io import atomic_write_json, atomic_write_text

TERMINAL = {"completed", "expired", "failed", "cancelled"}
ENDPOINT = "/v1/chat/completions"


@dataclass
class BatchEntry:
    part: str
    keys: list[str]
    input_file_id: str | None = None
    batch_id: str | None = None
    status: str = "prepared"
    merged: bool = False


@dataclass
class BatchState:
    path: Path
    entries: list[BatchEntry] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> BatchState:
        if not path.is_file():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(path, [BatchEntry(**e) for e in data["entries"]])

    def save(self) -> None:
        atomic_write_json(self.path, {"version": 1, "entries": [asdict(e) for e in self.entries]})

    def active_keys(self) -> set[str]:
        return {k for e in self.entries if not e.merged for k in e.keys}


def request_line(req: ChatRequest) -> str:
    return (
        json.dumps({"custom_id": req.key, "method": "POST", "url": ENDPOINT, "body": req.body}, ensure_ascii=False)
        + "\n"
    )


def split_into_files(requests: list[ChatRequest], max_requests: int, max_bytes: int) -> list[list[ChatRequest]]:
    """Chunks of at most ``max_requests`` lines and ``max_bytes`` bytes, one model per chunk."""
    chunks: list[list[ChatRequest]] = []
    by_model: dict[str, list[ChatRequest]] = {}
    for req in requests:
        by_model.setdefault(req.body["model"], []).append(req)
    for reqs in by_model.values():
        current, size = [], 0
        for req in reqs:
            n = len(request_line(req).encode())
            if current and (len(current) >= max_requests or size + n > max_bytes):
                chunks.append(current)
                current, size = [], 0
            current.append(req)
            size += n
        if current:
            chunks.append(current)
    return chunks


class BatchRunner:
    def __init__(
        self,
        client: openai.OpenAI,
        cache: ResponseCache,
        out: Path,
        max_requests: int = 50_000,
        max_bytes: int = 200_000_000,
        poll_interval: float = 30.0,
        wait: bool = True,
    ) -> None:
        self.client, self.cache, self.out = client, cache, Path(out)
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.poll_interval, self.wait = poll_interval, wait
        self.state = BatchState.load(self.out.with_name(self.out.name + ".batches.json"))
        self.inputs_dir = self.out.with_name(self.out.name + ".batch-inputs")
        self.submitted = 0

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise FatalAPIError(
                f"the API refused the request ({err.status_code}); check the API key variable", field="api_key"
            ) from None

    # -- submit ---------------------------------------------------------------------------------------------------
    def _submit(self, entry: BatchEntry) -> None:
        if entry.input_file_id is None:
            with open(self.inputs_dir / entry.part, "rb") as fh:
                uploaded = self._call(
                    self.client.files.create, file=(entry.part, io.BytesIO(fh.read())), purpose="batch"
                )
            entry.input_file_id = uploaded.id
            self.state.save()
        if entry.batch_id is None:
            existing = self._find_batch_for(entry.input_file_id)
            batch = existing or self._call(
                self.client.batches.create,
                input_file_id=entry.input_file_id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={"source": "litgpt-ext distill_query", "part": entry.part},
            )
            self.submitted += existing is None
            entry.batch_id, entry.status = batch.id, batch.status
            self.state.save()

    def _find_batch_for(self, input_file_id: str):
        """A batch created just before a crash, before its id reached the state file."""
        for batch in self._call(self.client.batches.list, limit=100):
            if batch.input_file_id == input_file_id:
                return batch
        return None

    def submit_pending(self, pending: list[ChatRequest]) -> None:
        in_flight = self.state.active_keys()
        todo = [r for r in pending if r.key not in in_flight]
        if not todo:
            return
        self.inputs_dir.mkdir(parents=True, exist_ok=True)
        start = len(self.state.entries)
        for i, chunk in enumerate(split_into_files(todo, self.max_requests, self.max_bytes)):
            part = f"part-{start + i:05d}.jsonl"
            atomic_write_text(self.inputs_dir / part, "".join(request_line(r) for r in chunk))
            self.state.entries.append(BatchEntry(part=part, keys=[r.key for r in chunk]))
        self.state.save()

    # -- poll and merge -------------------------------------------------------------------------------------------
    def _merge(self, entry: BatchEntry, batch, requests: dict[str, ChatRequest]) -> int:
        merged, refused = 0, None
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            text = self._call(self.client.files.content, file_id).text
            for line in text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                req = requests.get(row.get("custom_id"))
                if req is None or (self.cache.results.get(req.key) or {}).get("status") == "ok":
                    continue
                response = row.get("response") or {}
                if response.get("status_code") == 200:
                    try:
                        check_logprobs(response["body"])
                        self.cache.add_result(result_row(req, response["body"], 1, "batch"))
                    except (ValueError, TypeError, KeyError, AttributeError) as err:
                        detail = f"{type(err).__name__}: {err}"
                        self.cache.add_result(failure_row(req, "invalid_response_body", detail, 1, "batch"))
                else:
                    error = row.get("error") or (response.get("body") or {}).get("error") or {}
                    message = str(error.get("message", error))
                    status = response.get("status_code", "error")
                    if status == 400 and refuses_logprobs(req.body, message):
                        refused = message
                    self.cache.add_result(failure_row(req, f"http_{status}", message, 1, "batch"))
                merged += 1
        entry.merged, entry.status = True, batch.status
        self.state.save()
        if refused is not None:
            raise FatalAPIError(f"the endpoint refused the log-probs request (400): {refused}", field="logprobs")
        return merged

    def run(self, requests: list[ChatRequest], retry_failed: bool = False) -> dict:
        by_key = {r.key: r for r in requests}
        pending = [r for r in requests if not self.cache.done(r.key, retry_failed)]
        for entry in self.state.entries:  # submissions interrupted by a crash
            if not entry.merged and entry.batch_id is None:
                self._submit(entry)
        self.submit_pending(pending)
        for entry in self.state.entries:
            if not entry.merged and entry.batch_id is None:
                self._submit(entry)
        total = sum(len(e.keys) for e in self.state.entries if not e.merged)
        bar = tqdm(total=total, unit="req", desc="batches", dynamic_ncols=True)
        resubmit = False
        while True:
            active = [e for e in self.state.entries if not e.merged]
            for entry in active:
                batch = self._call(self.client.batches.retrieve, entry.batch_id)
                entry.status = batch.status
                if batch.status in TERMINAL:
                    bar.update(self._merge(entry, batch, by_key))
                    resubmit |= batch.status != "completed"
            self.state.save()
            active = [e for e in self.state.entries if not e.merged]
            if not active and resubmit:
                # an expired / cancelled / failed batch: keep what completed, submit only the rest again
                resubmit = False
                rest = [r for r in requests if not self.cache.done(r.key, retry_failed=False)]
                self.submit_pending(rest)
                for entry in self.state.entries:
                    if not entry.merged and entry.batch_id is None:
                        self._submit(entry)
                continue
            if not active or not self.wait:
                break
            bar.set_postfix(batches=len(active), status=",".join(sorted({e.status for e in active})), refresh=True)
            time.sleep(self.poll_interval)
        bar.close()
        return {
            "active_batches": len([e for e in self.state.entries if not e.merged]),
            "submitted_batches": self.submitted,
        }
