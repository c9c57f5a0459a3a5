"""The SQL inside a model's generation: its last fenced ```sql block, else the text from the first SELECT/WITH."""

from __future__ import annotations

import re

_FENCED = re.compile(r"```[ \t]*sql[ \t]*\n(.*?)(?:```|\Z)", flags=re.DOTALL | re.IGNORECASE)
_START = re.compile(r"\b(SELECT|WITH)\b", flags=re.IGNORECASE)


def extract_sql(text: str | None) -> str:
    """The query a generation proposes, stripped of a trailing ``;`` and fence; ``""`` when there is none.

    A fenced ``sql`` block wins (the last one: models often show a draft first); an unclosed fence at the end of a
    cut-off generation still counts. Without one, the text from the first ``SELECT``/``WITH`` keyword to the end (a
    closing fence, if any, is cut off)."""
    if not text:
        return ""
    blocks = _FENCED.findall(text)
    if blocks:
        sql = blocks[-1]
    else:
        match = _START.search(text)
        if not match:
            return ""
        sql = text[match.start() :].split("```")[0]
    return sql.strip().rstrip(";").strip()


def normalize_sql(sql: str) -> str:
    """Whitespace-collapsed form: two candidates that differ only in spacing are one candidate."""
    return " ".join(sql.split())
