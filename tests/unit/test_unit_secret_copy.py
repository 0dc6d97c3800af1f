"""build_agent.secret_copy: the root step that hands build-advisor its copy of the secret.

Run as systemd runs it (`python3 -m build_agent.secret_copy`, a separate process); the tests run
as root, like the unit's `+` commands, so the copy really changes owner.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from build_agent.config import load_secrets

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
OLD, NEW = "old-secret-0123456789abcdef", "new-secret-0123456789abcdef"


def run_copy(config: Path, target: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "build_agent.secret_copy", "--config",
                           str(config), "--to", str(target), *extra],
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.fixture
def setup(tmp_path):
    """A secret file and hive.toml naming it; a runtime directory owned by another user."""
    secret = tmp_path / "shared_secret"
    secret.write_text(f"{NEW}\n\n  {OLD}  \n")
    secret.chmod(0o600)
    config = tmp_path / "hive.toml"
    config.write_text(f'secret_file = "{secret}"\n')
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, NOBODY, NOBODY)
    return {"secret": secret, "config": config, "runtime": runtime,
            "target": runtime / "shared_secret"}


def test_copies_the_secrets_for_the_directory_owner(setup):
    if os.geteuid() != 0:
        pytest.fail("run the unit tests as root (the copy changes owner, as under systemd)")
    result = run_copy(setup["config"], setup["target"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    info = os.lstat(setup["target"])
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o400
    assert (info.st_uid, info.st_gid) == (NOBODY, NOBODY)
    assert load_secrets(str(setup["target"])) == load_secrets(str(setup["secret"])) \
        == [NEW.encode(), OLD.encode()]
    assert os.listdir(setup["runtime"]) == ["shared_secret"]  # no temporary file left


def test_a_second_copy_replaces_the_first(setup):
    assert run_copy(setup["config"], setup["target"]).returncode == 0
    setup["secret"].write_text(f"{NEW}\n")
    result = run_copy(setup["config"], setup["target"], "--reload")
    assert (result.returncode, result.stderr) == (0, "")
    assert load_secrets(str(setup["target"])) == [NEW.encode()]
    assert os.listdir(setup["runtime"]) == ["shared_secret"]


def test_a_planted_symlink_is_replaced_not_followed(setup, tmp_path):
    """The directory's owner (the advisor) cannot make the root step write or chown elsewhere."""
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    setup["target"].symlink_to(victim)
    assert run_copy(setup["config"], setup["target"]).returncode == 0
    assert victim.read_text() == "untouched\n" and os.stat(victim).st_uid == os.geteuid()
    assert not setup["target"].is_symlink()
    assert load_secrets(str(setup["target"]))[0] == NEW.encode()


@pytest.mark.parametrize("text, mode, expected", [
    (f"{NEW}\n", 0o644, "has mode 0644 (group or others may read it): run 'chmod 0600 "),
    ("short\n", 0o600, "is shorter than 16 characters"),
    ("\n", 0o600, "is empty"),
    (None, None, "no shared secret at "),
])
@pytest.mark.parametrize("reload", [False, True])
def test_an_unusable_secret_fails_in_one_line_and_keeps_the_copy(setup, text, mode, expected,
                                                                 reload):
    assert run_copy(setup["config"], setup["target"]).returncode == 0
    before = setup["target"].read_bytes()
    if text is None:
        setup["secret"].unlink()
    else:
        setup["secret"].write_text(text)
        setup["secret"].chmod(mode)
    result = run_copy(setup["config"], setup["target"], *(["--reload"] if reload else []))
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    prefix = "Reload failed, keeping the old secret: " if reload else "build-advisor: "
    assert prefix in lines[0]
    assert setup["target"].read_bytes() == before
    assert os.listdir(setup["runtime"]) == ["shared_secret"]


def test_a_bad_config_fails_in_one_line(setup):
    setup["config"].write_text("bogus = 1\n")
    result = run_copy(setup["config"], setup["target"])
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "unknown key(s)" in result.stderr
    assert not setup["target"].exists()


def test_a_missing_directory_fails_in_one_line(setup, tmp_path):
    result = run_copy(setup["config"], tmp_path / "nowhere" / "shared_secret")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "cannot write the secret's copy" in result.stderr and "No such file" in result.stderr


def test_the_secret_is_never_printed(setup):
    setup["secret"].write_text(f"{NEW}\nshort\n")
    result = run_copy(setup["config"], setup["target"])
    assert result.returncode == 1
    assert NEW not in result.stdout + result.stderr and "short\n" not in result.stderr
