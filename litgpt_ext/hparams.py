"""``hyperparameters.yaml`` for extension commands, with litgpt's sub-command stripping done right and no secrets.

litgpt's ``save_hyperparameters`` re-parses ``sys.argv`` after removing a *litgpt* sub-command name; for a command it
does not know (``finetune_sft``) that parse fails. Here the CLI records which command ran and the arguments after
its name, and the same jsonargparse machinery re-parses exactly those. Called from Python (no CLI), the arguments the
function actually received are written instead. Either way, secrets are scrubbed before the file is written.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from litgpt_ext.cli import current_invocation
from litgpt_ext.io import atomic_write_text

SECRET_ENV_VARS = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
_SECRET_KEY = re.compile(r"(token|secret|password|api_key|apikey)$", re.IGNORECASE)
REDACTED = "<redacted>"


def redact(obj: Any) -> Any:
    """Return ``obj`` with secret-named fields nulled and any secret value from the environment masked."""
    values = [v for name in SECRET_ENV_VARS if (v := os.environ.get(name)) and len(v) >= 4]

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if key is not None and _SECRET_KEY.search(key) and node is not None:
            return REDACTED
        if isinstance(node, str):
            for v in values:
                node = node.replace(v, REDACTED)
        return node

    return walk(obj)


def _plain(value: Any) -> Any:
    """Turn dataclasses, paths and objects into YAML that jsonargparse can read back as ``--config``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        init_args = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        if type(value).__module__.startswith(("litgpt.args", "litgpt_ext.training.args")):
            return init_args
        return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}", "init_args": init_args}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def hyperparameters(function: Callable, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """The command's hyperparameters as a plain dict (secrets already scrubbed)."""
    invocation = current_invocation()
    if invocation is not None and invocation.function is function:
        from jsonargparse import capture_parser
        from litgpt.utils import CLI

        parser = capture_parser(lambda: CLI(function))
        config = parser.parse_args(list(invocation.args))
        data = yaml.safe_load(parser.dump(config, skip_none=False))
        data.pop("config", None)
    else:
        data = _plain(arguments or {})
    return redact(data)


def save_hyperparameters(function: Callable, checkpoint_dir: Path, arguments: dict[str, Any] | None = None) -> None:
    """Write ``checkpoint_dir/hyperparameters.yaml`` atomically (see module docstring)."""
    text = yaml.safe_dump(hyperparameters(function, arguments), sort_keys=False)
    atomic_write_text(Path(checkpoint_dir) / "hyperparameters.yaml", text)
