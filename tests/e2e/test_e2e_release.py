"""The release files (tarball, one-file install.sh, Debian package) and the shell scripts
themselves (no containers needed)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPTS = ["install.sh", "scripts/bootstrap.sh", "scripts/make-release",
           "examples/role.d/50-ci-agent"]
DEB_CODE_DIR = "usr/lib/build-hive"


def make_release_files(out: Path, *args: str) -> dict[str, Path]:
    result = subprocess.run([str(REPO / "scripts/make-release"), "--out", str(out), *args],
                            capture_output=True, text=True, timeout=120, check=True)
    paths = [Path(line) for line in result.stdout.split()]
    assert [p.parent for p in paths] == [out.resolve()] * 3, result.stdout
    return {"install.sh": paths[0], "deb": paths[1], "tarball": paths[2]}


def make_release(out: Path) -> Path:
    return make_release_files(out)["tarball"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return make_release_files(tmp_path_factory.mktemp("release"))


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
                   "scripts/bootstrap.sh", "scripts/cloud-init.yaml", "packaging/layout.sh",
                   "packaging/hive.toml", "packaging/hive.1", "packaging/completion.py",
                   "examples/role.d/50-ci-agent"):
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


def test_every_release_file_is_reproducible_and_has_its_checksum(built, tmp_path):
    again = make_release_files(tmp_path)
    for kind, path in built.items():
        assert again[kind].read_bytes() == path.read_bytes(), f"{kind} is not reproducible"
        digest, name = (path.parent / f"{path.name}.sha256").read_text().split()
        assert (name, digest) == (path.name, hashlib.sha256(path.read_bytes()).hexdigest())
    assert built["deb"].name == f"build-hive_{version()}_all.deb"
    assert built["install.sh"].stat().st_mode & 0o111 == 0o111


# --- the one-file install.sh ---------------------------------------------------------------------

def embedded_payload(text: str) -> bytes:
    body = text.split("<<'BUILD_HIVE_PAYLOAD'\n", 1)[1].split("\nBUILD_HIVE_PAYLOAD\n", 1)[0]
    return base64.b64decode(body)


def run_bash(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(path), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(path.parent)})


def test_one_file_install_sh_embeds_the_tarball_with_its_checksum(built):
    text = built["install.sh"].read_text()
    assert embedded_payload(text) == built["tarball"].read_bytes()
    digest = hashlib.sha256(built["tarball"].read_bytes()).hexdigest()
    assert f"PAYLOAD_SHA256='{digest}'" in text and f"VERSION='{version()}'" in text
    assert (built["tarball"].parent / f"{built['tarball'].name}.sha256").read_text().split()[0] \
        == digest
    # It runs the installer inside: --help is that installer's (checked, unpacked, cleaned up).
    result = run_bash(built["install.sh"], "--help")
    assert result.returncode == 0 and "--uninstall" in result.stdout, result.stderr
    assert not list(built["install.sh"].parent.glob("build-hive.*")), "temporary directory left"


def test_the_shell_of_the_one_file_install_sh_is_clean(built):
    path = built["install.sh"]
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and text.rstrip().endswith('main "$@"')
    assert "set -euo pipefail" in text and "eval " not in text.split("BUILD_HIVE_PAYLOAD")[0]
    result = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def damaged(built: Path, out: Path, change) -> Path:
    lines = built.read_text().split("\n")
    start = lines.index("    cat <<'BUILD_HIVE_PAYLOAD'") + 1
    middle = start + (lines.index("BUILD_HIVE_PAYLOAD") - start) // 2
    out.write_text("\n".join(change(lines, middle)))
    return out


def test_a_damaged_one_file_install_sh_installs_nothing(built, tmp_path):
    """One changed character of the embedded code: refused in one line before anything else,
    even --help (so nothing of a damaged download ever runs); a truncated download does not run
    at all (bash reads the whole file first)."""
    def flip(lines, i):
        line = lines[i]
        lines[i] = line[:10] + ("B" if line[10] == "A" else "A") + line[11:]
        return lines
    for args in ((), ("--help",), ("--uninstall", "--purge")):
        result = run_bash(damaged(built["install.sh"], tmp_path / "flipped.sh", flip), *args)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == ("install.sh: the code embedded in this file is damaged (its SHA-256 "
                                 "does not match): download install.sh again; nothing was installed\n")
    truncated = damaged(built["install.sh"], tmp_path / "truncated.sh", lambda lines, i: lines[:i])
    result = run_bash(truncated, "--help")
    assert result.returncode != 0 and result.stdout == "", result.stdout
    assert not list(tmp_path.glob("build-hive.*"))


# --- the Debian package --------------------------------------------------------------------------

def deb_files(deb: Path) -> dict[str, bytes]:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name.removeprefix("./"): archive.extractfile(m).read()
                for m in archive.getmembers() if m.isfile()}


def deb_control(deb: Path, tmp_path: Path) -> Path:
    out = tmp_path / "DEBIAN"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(out)], check=True)
    return out


def test_the_package_holds_the_same_units_code_and_config_as_install_sh(built, tmp_path):
    files = deb_files(built["deb"])
    for unit in ("build-agent.service", "build-advisor.service"):
        ours = (REPO / "systemd" / unit).read_text()
        packaged = files[f"lib/systemd/system/{unit}"].decode()
        assert packaged == ours.replace("/opt/build-agent", f"/{DEB_CODE_DIR}"), unit
        assert f"PYTHONPATH=/{DEB_CODE_DIR} " in packaged
    for source in [p for p in (REPO / "build_agent").rglob("*.py")] + \
            [p for p in (REPO / "build_advisor").rglob("*.py")]:
        assert files[f"{DEB_CODE_DIR}/{source.relative_to(REPO)}"] == source.read_bytes()
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]
    assert files[f"{DEB_CODE_DIR}/bootstrap.sh"] == (REPO / "scripts/bootstrap.sh").read_bytes()
    assert files[f"{DEB_CODE_DIR}/VERSION"] == f"{version()}\n".encode()
    hook = "examples/role.d/50-ci-agent"
    assert files[f"{DEB_CODE_DIR}/{hook}"] == (REPO / hook).read_bytes()
    assert files["etc/build/hive.toml"] == (REPO / "packaging/hive.toml").read_bytes()
    assert b"/usr/lib/build-hive" in files["usr/bin/hive"]
    assert b"complete -F _hive hive" in files["usr/share/bash-completion/completions/hive"]
    control = deb_control(built["deb"], tmp_path)
    assert (control / "conffiles").read_text() == "/etc/build/hive.toml\n"
    fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", (control / "control").read_text(), re.M))
    assert fields["Depends"].startswith("python3 (>= 3.11), arping | iputils-arping, jq, iproute2")
    assert (fields["Package"], fields["Version"], fields["Architecture"]) == \
        ("build-hive", version(), "all")
    for script in ("preinst", "postinst", "prerm", "postrm"):
        text = (control / script).read_text()
        assert not re.search(r"@[A-Z_]+@", text), f"{script} has an unfilled @VALUE@"
        assert 'UNITS="build-agent.service build-advisor.service"' in text or script == "preinst"
        result = subprocess.run(["shellcheck", "-s", "sh", str(control / script)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_both_install_paths_ship_the_readme_with_the_docs_pages_it_links_to(built):
    """README.md is installed beside the code (the units' Documentation=) and links to docs/*.md:
    the tarball (so install.sh) and the package carry every page, so those links work where it
    is installed; docs/incoming/ (sections not placed yet) is not shipped."""
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    linked = sorted(set(re.findall(r"\]\(docs/([\w.-]+\.md)(?:#[\w-]*)?\)",
                                   (REPO / "README.md").read_text())))
    assert linked and set(linked) <= set(pages), linked
    top = f"build-hive-{version()}"
    with tarfile.open(built["tarball"]) as archive:
        names = set(archive.getnames())
    files = deb_files(built["deb"])
    assert f"{top}/README.md" in names and f"{DEB_CODE_DIR}/README.md" in files
    for page in pages:
        assert f"{top}/docs/{page}" in names, page
        assert files[f"{DEB_CODE_DIR}/docs/{page}"] == (REPO / "docs" / page).read_bytes(), page
    assert not [n for n in names if "/docs/incoming" in n]
    assert not [n for n in files if "/docs/incoming" in n]


def test_the_package_is_lintian_clean(built):
    """Debian's lintian at every level (errors to pedantic and experimental), apart from the
    overrides in packaging/debian/lintian-overrides (each with its reason; an override that no
    longer matches is reported too)."""
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing: apt-get install lintian (.ci/run installs it)")
    result = subprocess.run(
        ["lintian", "--fail-on", "error,warning,info,pedantic,experimental", "--display-info",
         "--pedantic", "--display-experimental", "--color", "never", str(built["deb"])],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


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
