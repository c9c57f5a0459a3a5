"""Task prompt templates from ``prompts/``: Markdown with ``{field}`` placeholders filled from a record.

A template may start with YAML front matter holding a system prompt::

    ---
    system: You are a careful annotator.
    ---
    Title: {title}
    ...

``{{`` and ``}}`` are literal braces. Lists render as ``- item`` lines, objects as JSON. Template mistakes and
records that lack a field are reported as ``path:line: field: problem`` before any request is sent.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from litgpt_ext.data.records import read_text
from litgpt_ext.errors import UserError

_FORMATTER = string.Formatter()


@dataclass
class Template:
    text: str
    fields: list[str]
    system: str | None = None
    path: Path | None = None
    body_line: int = 1

    def render(self, record: dict, where: tuple[Path, int] | None = None) -> str:
        values = {}
        for name in self.fields:
            if name not in record or record[name] is None:
                used_by = f" (used by {self.path})" if self.path else ""
                raise UserError(
                    f"missing{used_by}", path=where[0] if where else None, line=where[1] if where else None, field=name
                )
            values[name] = render_value(record[name])
        return self.text.format(**values)


def render_value(value) -> str:
    if isinstance(value, list):
        return "\n".join(f"- {render_value(v)}" for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def parse_template(text: str, path: Path | None = None, first_line: int = 1) -> Template:
    """Check placeholders line by line so a mistake is reported with its line number."""
    fields: list[str] = []
    for offset, line in enumerate(text.splitlines()):
        try:
            parts = list(_FORMATTER.parse(line))
        except ValueError as err:
            raise UserError(str(err), path=path, line=first_line + offset, field="template") from None
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise UserError(
                    f"placeholder {{{name}}} must be a plain field name",
                    path=path,
                    line=first_line + offset,
                    field="template",
                )
            if name not in fields:
                fields.append(name)
    return Template(text=text, fields=fields, path=path, body_line=first_line)


def load_template(path: Path) -> Template:
    path = Path(path)
    text = read_text(path)
    system, first_line = None, 1
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end < 0:
            raise UserError("front matter opened with --- but never closed", path=path, line=1, field="template")
        try:
            meta = yaml.safe_load(text[4:end]) or {}
        except yaml.YAMLError as err:
            raise UserError(f"front matter is not YAML: {err}", path=path, line=1, field="template") from None
        if not isinstance(meta, dict):
            raise UserError("front matter must be a mapping", path=path, line=1, field="template")
        system = meta.get("system")
        first_line = text[: end + 5].count("\n") + 1
        text = text[end + 5 :]
    template = parse_template(text.strip("\n"), path, first_line)
    template.system = system
    if not template.text.strip():
        raise UserError("template is empty", path=path, field="template")
    return template


def template_or_text(value: str | Path | None, what: str) -> Template | None:
    """A CLI value that is either a path to a template file or the template text itself."""
    if value is None:
        return None
    candidate = Path(str(value))
    if candidate.suffix in (".md", ".txt") or candidate.is_file():
        return load_template(candidate)
    return parse_template(str(value), path=Path(f"<{what}>"))
