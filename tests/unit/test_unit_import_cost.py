"""What a daemon at rest has imported: every module costs memory (its code stays loaded) and
start-up CPU, in each of the two daemons on every node.  Modules only needed when something runs
(a hook, an apt-get install, a task, a `hive` command) are imported where they are used, so a
fresh daemon does not carry them; this guards that."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from build_agent import capabilities, daemon

REPO = Path(__file__).resolve().parents[2]

# Imported only where a process is started (subprocess: hooks, provision, taskrun, readiness)
# or a file tree is copied/removed (shutil, and with it bz2, lzma); platform was replaced by
# os.uname().  None of them is needed by a daemon that is only keeping the hive.  hashlib (and
# _hashlib, OpenSSL: ~3.5 MB) neither: protocol.sha256 uses the built-in module.
NOT_AT_REST = ("subprocess", "shutil", "bz2", "lzma", "platform", "locale", "hashlib",
               "_hashlib")
# What argparse loads for a parser (gettext, locale; shutil for the help's width): the daemons'
# --config FILE is read without it.
NOT_AFTER_OPTIONS = ("argparse", "gettext", "locale", "shutil", "bz2", "lzma")


def modules_imported_by(module: str, then: str = "pass") -> set[str]:
    """The modules importing MODULE (what `python3 -m MODULE` runs first), then running THEN,
    adds, in a fresh interpreter without site (so only what our code imports counts)."""
    code = ("import json, sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); "
            f"import {module}; {then}; print(json.dumps(sorted(set(sys.modules) - before)))")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)],
                            capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("daemon", ["build_agent.__main__", "build_advisor.__main__"])
def test_a_daemon_at_rest_has_not_imported_what_only_running_something_needs(daemon):
    imported = modules_imported_by(daemon)
    assert daemon in imported  # the import did happen
    assert sorted(imported & set(NOT_AT_REST)) == []


@pytest.mark.parametrize("argv", [[], ["--config", "/etc/build/hive.toml"],
                                  ["--config=/etc/build/hive.toml"]])
def test_the_daemons_config_option_is_read_without_argparse(argv):
    expected = argv[-1].removeprefix("--config=") if argv else None
    then = (f"assert build_agent.daemon._config_option('build-agent', 'doc', {argv!r})"
            f" == {expected!r}")
    imported = modules_imported_by("build_agent.daemon", then)
    assert sorted(imported & set(NOT_AFTER_OPTIONS)) == []


def argparse_answer(argv: list[str]):
    """What the daemons' argparse parser made of argv before: the --config value, or the exit
    code and output of --help or an error."""
    import argparse
    import contextlib
    import io
    parser = argparse.ArgumentParser(prog="build-agent", description="doc")
    parser.add_argument("--config", default=None,
                        help="hive.toml (default /etc/build/hive.toml; missing means defaults)")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return parser.parse_args(argv).config
        except SystemExit as exc:
            return ("exit", exc.code, out.getvalue(), err.getvalue())


def our_answer(argv: list[str]):
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return daemon._config_option("build-agent", "doc", argv)
        except SystemExit as exc:
            return ("exit", exc.code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("argv", [
    [], ["--config", "/etc/build/hive.toml"], ["--config=/etc/build/hive.toml"],
    ["--config", "a b"],
    ["--config", "-x"], ["--config=-x"], ["--config="], ["--config"], ["--config", ""],
    ["--conf", "f"], ["--config", "a", "--config", "b"], ["--help"], ["-h"], ["f"], ["--other"],
    ["--config", "f", "extra"], ["--config=a", "--config=b"], ["--", "--config"],
])
def test_the_config_option_means_what_argparse_made_of_it(argv, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert our_answer(argv) == argparse_answer(argv)


def test_on_path_answers_as_shutil_which(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tool").write_text("#!/bin/sh\n")
    (bin_dir / "tool").chmod(0o755)
    (bin_dir / "plain").write_text("not executable\n")
    (bin_dir / "plain").chmod(0o644)
    (bin_dir / "folder").mkdir(mode=0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'missing'}{os.pathsep}{bin_dir}")
    for name in ("tool", "plain", "folder", "absent"):
        assert capabilities.on_path(name) == (shutil.which(name) is not None), name
    assert capabilities.on_path("tool") and not capabilities.on_path("plain")
    assert os.stat(bin_dir / "folder").st_mode & stat.S_IXUSR  # a directory is never a program
