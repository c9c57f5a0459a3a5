"""The ``litgpt-ext`` CLI: litgpt's commands plus entry-point extensions, clashes refused, plugins discovered."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import yaml

from conftest import run_cli
from litgpt_ext.cli import command_table, litgpt_commands


def test_help_lists_litgpt_and_extension_commands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in litgpt_commands():
        assert name in result.stdout, name
    assert "make_tiny_checkpoint" in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("litgpt-ext")
    assert script.exists() or shutil.which("litgpt-ext")


def test_litgpt_commands_are_the_same_functions():
    table = command_table()
    for name, function in litgpt_commands().items():
        assert table[name] is function


def _write_plugin(root: Path, command: str, target: str = "hello") -> Path:
    """A third-party package with its own dist-info on sys.path: exactly what `pip install plugin` leaves behind."""
    pkg = root / "myplugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            '''
            from pathlib import Path

            from litgpt_ext.hparams import save_hyperparameters


            def hello(out_dir: Path = Path("out"), name: str = "world", access_token: str | None = None, times: int = 1):
                """Say hello from a plugin.

                Args:
                    out_dir: Where to write.
                    name: Who to greet.
                    access_token: A secret that must never be written.
                    times: How often.
                """
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "greeting.txt").write_text(f"hello {name}\\n" * times)
                save_hyperparameters(hello, out_dir, locals())
            '''
        )
    )
    dist = root / "myplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[litgpt_ext.commands]\n{command} = myplugin:{target}\n")
    return root


def test_third_party_plugin_appears_runs_and_saves_clean_hyperparameters(tmp_path):
    root = _write_plugin(tmp_path / "site", "say_hello")
    env = {"PYTHONPATH": str(root), "HF_TOKEN": "hf_supersecretvalue123"}
    help_result = run_cli("--help", env=env)
    assert "say_hello" in help_result.stdout

    out = tmp_path / "out"
    result = run_cli(
        "say_hello",
        "--out_dir",
        out,
        "--name",
        "fabric",
        "--times",
        "2",
        "--access_token",
        "hf_supersecretvalue123",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "greeting.txt").read_text() == "hello fabric\nhello fabric\n"
    text = (out / "hyperparameters.yaml").read_text()
    hparams = yaml.safe_load(text)
    # sub-command stripped: the file parses as the function's own config and can be fed back with --config
    assert hparams["name"] == "fabric" and hparams["times"] == 2 and hparams["out_dir"] == str(out)
    assert "hf_supersecretvalue123" not in text
    again = run_cli("say_hello", "--config", out / "hyperparameters.yaml", "--out_dir", tmp_path / "again", env=env)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "greeting.txt").read_text() == "hello fabric\nhello fabric\n"


def test_plugin_shadowing_a_litgpt_command_is_a_clear_error(tmp_path):
    root = _write_plugin(tmp_path / "site", "generate")
    result = run_cli("--help", env={"PYTHONPATH": str(root)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "'generate'" in lines[0] and "clashes with a litgpt command" in lines[0]


def test_python_dash_m_and_litgpt_command_runs(tiny_checkpoint):
    result = run_cli(
        "generate",
        tiny_checkpoint,
        "--prompt",
        "What does Ivel sell?",
        "--max_new_tokens",
        "4",
        "--precision",
        "32-true",
    )
    assert result.returncode == 0, result.stderr
    assert "What does Ivel sell?" in result.stdout


def test_an_extension_command_starts_without_importing_litgpt_unless_it_needs_it():
    """`litgpt-ext evaluate_generations ...` loads only that command's module: no litgpt, no Lightning (seconds of
    imports); litgpt's names are read from its source, and match its command table."""
    import subprocess
    import sys

    from litgpt_ext.cli import litgpt_command_names, litgpt_commands

    assert litgpt_command_names() == set(litgpt_commands())
    code = (
        "import sys\nfrom litgpt_ext.cli import main\n"
        "try:\n    main(['evaluate_generations', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('litgpt', 'lightning', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--reference_field" in out and out.strip().splitlines()[-1] == "[]"


def test_a_plugin_shadowing_or_registered_twice_is_refused_when_run_by_name(tmp_path):
    """The fast path never runs a command whose name is contested: by a litgpt command or by a second plugin."""
    shadow = _write_plugin(tmp_path / "shadow", "generate")
    result = run_cli("generate", "--help", env={"PYTHONPATH": str(shadow)})
    assert result.returncode == 2 and "clashes with a litgpt command" in result.stderr

    one, two = _write_plugin(tmp_path / "one", "say_hello"), _write_plugin(tmp_path / "two", "say_hello")
    (two / "myplugin").rename(two / "otherplugin")  # a second package registering the same command name
    dist = two / "otherplugin-0.1.dist-info"
    (two / "myplugin-0.1.dist-info").rename(dist)
    (dist / "METADATA").write_text((dist / "METADATA").read_text().replace("myplugin", "otherplugin"))
    (dist / "entry_points.txt").write_text("[litgpt_ext.commands]\nsay_hello = otherplugin:hello\n")
    result = run_cli("say_hello", "--help", env={"PYTHONPATH": f"{one}:{two}"})
    assert result.returncode == 2 and "already registered by" in result.stderr
