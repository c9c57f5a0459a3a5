"""``serve_batch`` as a real process for the tests: started on a free port, its output read as it comes (the port it
listens on, one line per request), stopped with SIGTERM as a user's Ctrl-C or a job scheduler would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    def __init__(self, checkpoint: Path, *flags: str, env: dict | None = None, model_name: str = "teacher") -> None:
        self.args = [sys.executable, "-m", "litgpt_ext", "serve_batch", str(checkpoint), "--port", "0",
                     "--model_name", model_name, *map(str, flags)]  # fmt: skip
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def start(self, timeout: float = 120) -> ServerProcess:
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [m for line in list(self.lines) if (m := re.search(r"at (http://\S+/v1)", line))]
            if found:
                self.base_url = found[0].group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("serve_batch did not start:\n" + "".join(self.lines[-30:]))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=kw.pop("api_key", "sk-unused"), max_retries=0, **kw)

    def async_client(self, **kw):
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=kw.pop("api_key", "sk-unused"), max_retries=0, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
