"""Command lines as people type them, and parser errors of at most two lines: every registered command is walked
with the usual mistakes (an unknown flag, a wrong choice, a word for a number) and the forms that must work (one
path for a list, 1/0 for a boolean, --data PATH with --data.* options)."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from litgpt_ext.cli import extension_entry_points, main
from litgpt_ext.cli_args import _is_bool, _list_item, _plain, flag_types

COMMANDS = {ep.name: ep.load() for ep in extension_entry_points()}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def _positionals(function) -> list[str]:
    params = inspect.signature(function).parameters.values()
    return ["x" for p in params if p.default is inspect.Parameter.empty]


def _flags(function, kind) -> list[tuple[str, object]]:
    return [(name, hint) for name, hint in flag_types(function).items() if kind(hint)]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_answers_mistakes_in_at_most_two_lines(name, capsys):
    function = COMMANDS[name]
    head = [name, *_positionals(function)]
    code, _, err = _run(capsys, *head, "--no_such_flag", "1")
    assert code == 2 and len(err.strip().splitlines()) <= 2 and "--no_such_flag" in err, err
    for flag, hint in _flags(function, lambda h: typing.get_origin(_plain(h)) is typing.Literal):
        code, _, err = _run(capsys, *head, f"--{flag}", "not-a-choice")
        choices = typing.get_args(_plain(hint))
        assert code == 2 and len(err.strip().splitlines()) <= 2, (flag, err)
        assert f"--{flag}" in err and all(str(c) in err for c in choices), (flag, err)
    for flag, _hint in _flags(function, lambda h: _plain(h) in (int, float)):
        code, _, err = _run(capsys, *head, f"--{flag}", "many")
        assert code == 2 and len(err.strip().splitlines()) <= 2 and f"--{flag}: cannot take 'many'" in err, err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_one_value_for_a_list_and_1_or_0_for_a_boolean_parse(name, capsys):
    function = COMMANDS[name]
    head = [name, *_positionals(function)]
    for flag, hint in _flags(function, lambda h: _list_item(h) is not None):
        item = _list_item(hint)
        value = "0" if item is int else '{"name": "a"}' if dataclasses.is_dataclass(item) else "a.jsonl"
        code, out, err = _run(capsys, *head, f"--{flag}", value, "--print_config")
        assert code == 0, (flag, err)
    bools = _flags(function, _is_bool)
    if bools:
        args = [a for i, (flag, _) in enumerate(bools) for a in (f"--{flag}", ["1", "0", "yes", "no"][i % 4])]
        code, out, err = _run(capsys, *head, *args, "--print_config")
        assert code == 0, err


def test_the_normalized_values_are_the_ones_meant(capsys):
    import yaml

    code, out, _ = _run(capsys, "distill_report", "--records", "r.jsonl", "--print_config")
    assert code == 0 and yaml.safe_load(out)["records"] == ["r.jsonl"]
    code, out, _ = _run(capsys, "finetune_sft", "ck", "--lora_query", "0", "--lora_mlp", "yes", "--print_config")
    config = yaml.safe_load(out)
    assert code == 0 and config["lora_query"] is False and config["lora_mlp"] is True
    code, out, err = _run(
        capsys, "finetune_dpo", "ck", "--data", "pairs.jsonl", "--data.val_path", "val.jsonl", "--print_config"
    )
    data = yaml.safe_load(out)["data"]
    assert code == 0, err
    assert data["class_path"].endswith("PreferenceData") and data["init_args"]["path"] == "pairs.jsonl"
    assert data["init_args"]["val_path"] == "val.jsonl"
    code, out, err = _run(capsys, "finetune_kd", "ck", "--data.route_files", '{"sql": "s.jsonl", "chat": "c.json"}',
                          "--data.seed", "3", "--print_config")  # fmt: skip
    data = yaml.safe_load(out)["data"]  # --data.* alone: options of the command's own DataModule
    assert code == 0, err
    assert data["class_path"].endswith("SFTData") and data["init_args"]["route_files"] == {"sql": "s.jsonl",
                                                                                           "chat": "c.json"}  # fmt: skip
    assert data["init_args"]["seed"] == 3


def test_a_shell_glob_after_a_list_of_paths_flag_is_the_list(tmp_path, capsys):
    import yaml

    shards = [tmp_path / f"g.shard-{i}.jsonl" for i in range(3)]
    for shard in shards:
        shard.write_text("")
    code, out, err = _run(
        capsys, "generate_merge", "--inputs", *map(str, shards), "--output", "o.jsonl", "--print_config"
    )
    assert code == 0, err
    assert yaml.safe_load(out)["inputs"] == [str(s) for s in shards]


def test_a_litgpt_command_without_network_ends_in_one_line(tmp_path):
    """The task template's student rule runs `litgpt download`; offline it is one line, not 90 of httpx."""
    from conftest import run_cli

    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"}
    result = run_cli("download", "meta-llama/Llama-3.2-1B", "--checkpoint_dir", tmp_path, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert (
        errors
        and errors[-1].startswith("error: download: cannot reach the network")
        and "Traceback" not in result.stderr
    )
