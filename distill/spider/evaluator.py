"""Spider's own evaluator (``evaluation.py``, ``process_sql.py``, ``exec_eval.py``, ``parse.py`` from the wheel), driven
one question at a time.

Spider's ``evaluate()`` reads two text files, writes ``incorrect.txt`` into the working directory and prints its table;
it has no per-question result. :func:`score` runs the body of its loop for one question with Spider's own functions
and constants — ``get_sql`` on the gold and the prediction (an unparsable prediction becomes Spider's empty query),
``Evaluator.eval_hardness``, ``eval_exec_match`` under ``func_timeout(TIMEOUT)`` for test-suite execution,
``rebuild_sql_val`` / ``rebuild_sql_col`` with the foreign-key map and ``eval_exact_match`` for exact-set-match, with
the script's defaults (values not compared, ``DISTINCT`` dropped, gold values not plugged in). A test checks that the
counts equal those ``evaluate()`` prints for the same files.

Two things are added around it, neither changing a score:

* the prediction first runs in the project's read-only sandbox (``distill/sql/sandbox.py``) on the first suite
  database: Spider's ``exec_eval`` opens the database writable, so a generated ``DROP TABLE`` would change the suite
  for every later question. A prediction the sandbox refuses (a write, a second statement, an error, a timeout) would
  fail Spider's check too and is scored 0 without reaching it;
* ``process_sql`` calls ``nltk.word_tokenize(text)``, which first splits sentences with Punkt — data NLTK downloads
  at run time (not on PyPI). The SQL it tokenizes has its string literals replaced by placeholders, so it has no
  sentences to split; the loader binds ``word_tokenize(text, preserve_line=True)``, the same tokenizer without the
  sentence splitter (checked on all 1,034 gold queries by the tests: no sentence break left for Punkt to find).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

from litgpt_ext.errors import UserError

LEVELS = ("easy", "medium", "hard", "extra")
_MODULES = ("parse", "process_sql", "exec_eval", "evaluation")
"""Load order: each of Spider's files imports the ones before it by their bare names."""


def load(evaluator_dir: Path) -> dict[str, ModuleType]:
    """Spider's four modules, loaded from ``evaluator_dir`` under private names (their bare names — ``parse``,
    ``evaluation`` — are registered only while they import each other, then ``sys.modules`` and ``sys.path`` are
    put back as they were)."""
    evaluator_dir = Path(evaluator_dir)
    missing = [n for n in _MODULES if not (evaluator_dir / f"{n}.py").is_file()]
    if missing:
        raise UserError(f"Spider's evaluator is incomplete (no {', '.join(missing)}.py): run make spider-data",
                        path=evaluator_dir)  # fmt: skip
    try:
        import func_timeout  # noqa: F401
        import nltk
        import sqlparse  # noqa: F401
    except ImportError as err:
        raise UserError(f"Spider's evaluator needs {err.name}: pip install '.[spider]'") from None
    saved = {name: sys.modules.get(name) for name in _MODULES}
    saved_path = list(sys.path)
    modules: dict[str, ModuleType] = {}
    try:
        for name in _MODULES:
            spec = importlib.util.spec_from_file_location(f"spider_evaluator_{name}", evaluator_dir / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            modules[name] = module
            if name == "process_sql":
                module.word_tokenize = partial(nltk.word_tokenize, preserve_line=True)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        sys.path[:] = saved_path
    return modules


@dataclass
class Score:
    hardness: str
    exact: int
    execution: int
    parsed: bool
    """Whether Spider's parser read the prediction (else it was scored as Spider's empty query)."""
    note: str = ""
    """Why execution failed before Spider's check (the sandbox's reason), or ""."""


class SpiderEvaluator:
    """Scores predictions question by question with Spider's code (see the module docstring)."""

    def __init__(self, evaluator_dir: Path, tables: Path, schema_dir: Path, suite_dir: Path | None) -> None:
        self.m = load(evaluator_dir)
        self.kmaps = self.m["evaluation"].build_foreign_key_map_from_json(str(tables))
        self.schema_dir, self.suite_dir = Path(schema_dir), Path(suite_dir) if suite_dir else None
        self._schemas: dict[str, object] = {}
        self._gold: dict[tuple[str, str], tuple[dict, str]] = {}

    def _schema(self, db_id: str):
        if db_id not in self._schemas:
            path = self.schema_dir / db_id / f"{db_id}.sqlite"
            if not path.is_file():
                raise UserError("database not found: run make spider-data", path=path, field="db_id")
            process_sql = self.m["process_sql"]
            self._schemas[db_id] = process_sql.Schema(process_sql.get_schema(str(path)))
        return self._schemas[db_id]

    def gold(self, db_id: str, gold_sql: str, path: Path | None = None, line: int | str | None = None):
        """Spider's parse of a gold query and its hardness; a gold query Spider cannot parse is a user error (``path``
        and ``line`` name where the question is)."""
        if (db_id, gold_sql) in self._gold:  # evaluate_spider reads every gold first, then scores: parsed once
            return self._gold[db_id, gold_sql]
        if db_id not in self.kmaps:
            raise UserError(f"db_id {db_id!r} is not in tables.json", path=path, line=line, field="db_id")
        try:
            sql = self.m["process_sql"].get_sql(self._schema(db_id), gold_sql)
        except UserError:
            raise
        except Exception as err:  # Spider's parser asserts and raises KeyError on what it cannot read
            raise UserError(f"Spider's parser cannot read the gold query ({type(err).__name__}: {err}): {gold_sql}",
                            path=path, line=line, field="gold_sql") from None  # fmt: skip
        self._gold[db_id, gold_sql] = sql, self.m["evaluation"].Evaluator().eval_hardness(sql)
        return self._gold[db_id, gold_sql]

    def score(self, db_id: str, gold_sql: str, predicted: str) -> Score:
        ev, process_sql = self.m["evaluation"], self.m["process_sql"]
        g_sql, hardness = self.gold(db_id, gold_sql)
        g_sql = copy.deepcopy(g_sql)  # Spider's rebuild_sql_* rewrite the parse in place; the cached one stays whole
        p_str = predicted.replace("value", "1")  # as Spider's loop does
        schema = self._schema(db_id)
        try:
            p_sql, parsed = process_sql.get_sql(schema, p_str), True
        except Exception:  # Spider's rule: an unreadable prediction is compared as the empty query
            p_sql, parsed = _empty_sql(), False

        execution, note = 0, ""
        if self.suite_dir is not None:
            execution, note = self._execution(db_id, p_str, gold_sql)

        kmap = self.kmaps[db_id]
        g_valid = ev.build_valid_col_units(g_sql["from"]["table_units"], schema)
        g_sql = ev.rebuild_sql_col(g_valid, ev.rebuild_sql_val(g_sql), kmap)
        p_valid = ev.build_valid_col_units(p_sql["from"]["table_units"], schema)
        p_sql = ev.rebuild_sql_col(p_valid, ev.rebuild_sql_val(p_sql), kmap)
        exact = int(bool(ev.Evaluator().eval_exact_match(p_sql, g_sql)))
        return Score(hardness, exact, execution, parsed, note)

    def _execution(self, db_id: str, p_str: str, g_str: str) -> tuple[int, str]:
        from distill.sql.sandbox import open_readonly, run_query

        db = self.suite_dir / db_id / f"{db_id}.sqlite"
        if not db.is_file():
            raise UserError("test-suite database not found: run make spider-data", path=db, field="db_id")
        exec_eval = self.m["exec_eval"]
        conn = open_readonly(db)
        try:  # the text Spider's check would run (its `> =` repair, its current-year rewrite)
            checked = run_query(conn, exec_eval.replace_cur_year(exec_eval.postprocess(p_str)), 10.0, max_rows=1)
        finally:
            conn.close()
        if not checked["ok"]:
            return 0, str(checked["error"])[:200]
        ev = self.m["evaluation"]
        try:
            result = ev.func_timeout(ev.TIMEOUT, exec_eval.eval_exec_match,
                                     kwargs={"db": str(db), "p_str": p_str, "g_str": g_str, "plug_value": False,
                                             "keep_distinct": False, "progress_bar_for_each_datapoint": False})  # fmt: skip
        except ev.FunctionTimedOut:
            return 0, "timed out"
        except AssertionError as err:  # Spider asserts that the gold runs on every database of the suite
            raise UserError(f"the gold query fails on the test suite ({err})", field="gold_sql") from None
        return int(bool(result)), ""


def _empty_sql() -> dict:
    """Spider's stand-in for a prediction its parser cannot read (as in its ``evaluate()``)."""
    return {
        "except": None,
        "from": {"conds": [], "table_units": []},
        "groupBy": [],
        "having": [],
        "intersect": None,
        "limit": None,
        "orderBy": [],
        "select": [False, []],
        "union": None,
        "where": [],
    }
