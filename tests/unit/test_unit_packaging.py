"""What both install paths install beside the daemons: `man hive`, the bash completion of `hive`
(generated from build_agent/cli.py's parser), the `hive` wrapper and the units as
packaging/layout.sh renders them."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from build_agent.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
MAN_PAGE = REPO / "packaging/hive.1"
_spec = importlib.util.spec_from_file_location("hive_completion", REPO / "packaging/completion.py")
completion = sys.modules["hive_completion"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(completion)


def command_levels(parser=None):
    return completion.levels(parser or build_parser())


# --- man hive ------------------------------------------------------------------------------------

def test_man_page_renders_without_warnings():
    if shutil.which("man") is None:
        pytest.fail("man is missing: apt-get install man-db (.ci/run installs it)")
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(MAN_PAGE)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = result.stdout
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "EXIT STATUS",
                    "FILES", "SEE ALSO"):
        assert re.search(rf"^{heading}$", text, re.M), heading


def test_man_page_describes_every_command_and_option_of_the_parser():
    """A subcommand or option added to build_agent/cli.py must be added to packaging/hive.1."""
    source = MAN_PAGE.read_text()
    synopsis = source.split(".SH SYNOPSIS", 1)[1].split(".SH ", 1)[0]
    commands = source.split(".SH COMMANDS", 1)[1].split(".SH ", 1)[0]
    missing = []
    for level in command_levels():
        if level.path:
            if not re.search(rf"^\.B (sudo )?hive {re.escape(level.path)}\b", synopsis, re.M):
                missing.append(f"SYNOPSIS: .B hive {level.path}")
            last = level.path.split()[-1]
            if not re.search(rf"^\.B {re.escape(last)}$", commands, re.M):
                missing.append(f"COMMANDS: .TP / .B {last}")
        for option in level.options:
            if option.replace("-", "\\-") not in source:
                missing.append(f"option {option} of 'hive {level.path}'".replace("  ", " "))
    assert not missing, "packaging/hive.1 lacks: " + "; ".join(missing)


def test_man_page_check_fails_for_an_undocumented_command(monkeypatch):
    """The check above really follows the parser: a new subcommand fails it."""
    real = build_parser

    def parser_with_more():
        parser = real()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.add_parser("frobnicate", help="a command nobody documented")
        return parser
    monkeypatch.setattr(sys.modules[__name__], "build_parser", parser_with_more)
    with pytest.raises(AssertionError, match="frobnicate"):
        test_man_page_describes_every_command_and_option_of_the_parser()


# --- bash completion -----------------------------------------------------------------------------

def complete(script: str, *words: str) -> list[str]:
    """What `hive WORDS...<TAB>` offers with SCRIPT loaded in a plain bash (no bash-completion)."""
    driver = (script + '\nCOMP_WORDS=(hive "$@"); COMP_CWORD=$#\n_hive\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "-c", driver, "complete", *words], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout.split()


@pytest.fixture(scope="module")
def generated() -> str:
    """The completion as install.sh and the package generate it (packaging/layout.sh)."""
    return subprocess.run(
        ["bash", "-c", 'source packaging/layout.sh && hive_render_completion "$PWD" python3'],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60).stdout


def test_completion_offers_every_command_and_option_of_the_parser(generated):
    for level in command_levels():
        words = level.path.split()
        assert sorted(complete(generated, *words, "")) == sorted(level.commands), level.path
        assert sorted(complete(generated, *words, "-")) == sorted(level.options), level.path
    assert complete(generated, "st") == ["status"]
    assert complete(generated, "--json", "wa") == ["watch"]
    assert complete(generated, "watch", "--count", "3", "--s") == ["--seconds"]


def test_completion_completes_file_names_after_config(generated, tmp_path):
    config = tmp_path / "hive-e2e.toml"
    config.write_text("")
    prefix = str(tmp_path / "hive-e")
    assert complete(generated, "status", "--config", prefix) == [str(config)]
    assert complete(generated, "--config", "=", prefix) == [str(config)]     # --config=<TAB>
    assert complete(generated, "status", "--config", str(config), "--j") == ["--json"]


def test_completion_follows_a_new_subcommand_without_anyone_editing_it():
    """A subcommand added to the parser (here a nested one with choices) is completed as soon as
    the completion is generated again, which install.sh and the package do at every install."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    task = sub.add_parser("task", help="tasks")
    task_sub = task.add_subparsers(dest="task_command")
    add = task_sub.add_parser("add")
    add.add_argument("--priority", choices=["low", "high"])
    add.add_argument("kind", choices=["build", "test"])
    task_sub.add_parser("list")
    script = completion.render(parser)
    assert "task" in complete(script, "")
    assert sorted(complete(script, "task", "")) == ["add", "list"]
    assert sorted(complete(script, "task", "add", "--priority", "")) == ["high", "low"]
    assert sorted(complete(script, "task", "add", "")) == ["build", "test"]
    assert "--priority" in complete(script, "task", "add", "--")


# --- layout.sh: the units and the hive command ---------------------------------------------------

def layout(call: str, *args: str) -> str:
    return subprocess.run(["bash", "-c", f'source packaging/layout.sh && {call} "$@"', "layout",
                           *args], cwd=REPO, capture_output=True, text=True, check=True,
                          timeout=30).stdout


@pytest.mark.parametrize("unit", ["build-agent.service", "build-advisor.service"])
def test_units_are_rendered_for_each_code_dir(unit):
    source = (REPO / "systemd" / unit).read_text()
    assert layout("hive_render_unit", str(REPO), unit, "/opt/build-agent") == source
    packaged = layout("hive_render_unit", str(REPO), unit, "/usr/lib/build-hive")
    changed = [(a, b) for a, b in zip(source.splitlines(), packaged.splitlines()) if a != b]
    assert changed and all(a.replace("/opt/build-agent", "/usr/lib/build-hive") == b
                           for a, b in changed)
    assert "Environment=PYTHONPATH=/usr/lib/build-hive " in packaged


def test_hive_wrapper_runs_the_installed_code_not_the_current_directorys(tmp_path):
    wrapper = tmp_path / "hive"
    wrapper.write_text(layout("hive_render_cli", str(REPO), sys.executable, "a test"))
    wrapper.chmod(0o755)
    decoy = tmp_path / "cwd" / "build_agent"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    (decoy / "cli.py").write_text("print('the decoy ran')\n")
    result = subprocess.run([str(wrapper), "--help"], cwd=tmp_path / "cwd", capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and "the decoy ran" not in result.stdout
    assert result.stdout.startswith("usage: hive ")
