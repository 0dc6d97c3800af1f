"""The release tarball and the shell scripts themselves (no containers needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPTS = ["install.sh", "scripts/bootstrap.sh", "scripts/make-release",
           "examples/role.d/50-ci-agent"]


def make_release(out: Path) -> Path:
    result = subprocess.run([str(REPO / "scripts/make-release"), "--out", str(out)],
                            capture_output=True, text=True, timeout=120, check=True)
    return Path(result.stdout.strip().splitlines()[-1])


def version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")


def test_tarball_holds_what_install_sh_needs_and_is_reproducible(tmp_path):
    tarball = make_release(tmp_path / "a")
    top = f"build-hive-{version()}"
    assert tarball.name == f"{top}.tar.gz"
    with tarfile.open(tarball) as archive:
        members = {m.name: m for m in archive.getmembers()}
    for needed in ("install.sh", "VERSION", "build_agent/__main__.py", "build_agent/cli.py",
                   "build_advisor/__main__.py", "build_advisor/policies/role_balance.py",
                   "systemd/build-agent.service", "systemd/build-advisor.service",
                   "scripts/bootstrap.sh", "scripts/cloud-init.yaml", "examples/role.d/50-ci-agent"):
        assert f"{top}/{needed}" in members, needed
    assert all(name == top or name.startswith(top + "/") for name in members)
    assert not [n for n in members if "__pycache__" in n or n.endswith(".pyc")]
    for script in ("install.sh", "scripts/bootstrap.sh", "examples/role.d/50-ci-agent"):
        assert members[f"{top}/{script}"].mode & 0o111 == 0o111
    assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}
    sha = (tarball.parent / f"{tarball.name}.sha256").read_text().split()
    assert sha[1] == tarball.name
    again = make_release(tmp_path / "b")
    assert again.read_bytes() == tarball.read_bytes(), "make-release is not reproducible"


def test_unpacked_tarball_passes_install_sh_source_check(tmp_path):
    """install.sh run from the unpacked tarball finds its files (it stops at the root check)."""
    tarball = make_release(tmp_path)
    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path / "x", filter="data")
    top = tmp_path / "x" / f"build-hive-{version()}"
    result = subprocess.run(["bash", str(top / "install.sh"), "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and "--uninstall" in result.stdout
    assert (top / "VERSION").read_text().strip() == version()


def test_install_sh_alone_says_what_it_needs(tmp_path):
    """The seed's old runbook fetched install.sh alone: it must say to use the release tarball
    (before any other check, and changing nothing)."""
    if os.geteuid() != 0:
        pytest.fail("run as root, as CI does (install.sh checks for root first)")
    shutil.copy(REPO / "install.sh", tmp_path / "install.sh")
    result = subprocess.run(["bash", str(tmp_path / "install.sh")], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.startswith(f"install.sh: missing {tmp_path}/build_agent/__init__.py: ")
    assert "release tarball" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_are_clean(script):
    path = REPO / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text and text.rstrip().endswith('main "$@"')
    assert "eval " not in text
    assert os.access(path, os.X_OK), f"{script} is not executable"
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is missing: apt-get install shellcheck (.ci/run installs it)")
    result = subprocess.run(["shellcheck", "-x", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
