"""Fixtures for the end-to-end tests: booted Debian hosts (systemd-nspawn) on a private bridge.

Each test module gets a `lab` per Debian release (bookworm: systemd 252, Python 3.11; trixie:
systemd 257, Python 3.13; Ubuntu 24.04's 255/3.12 sit between them): a bridge on 10.78.K.0/24,
a file server at .250 (the release tarball and a tiny apt repository) and containers created with
`lab.hosts(...)`.  Everything is torn down when the module's tests are done, also on failure.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import e2e_harness as hx
import e2e_rootfs

RELEASES = os.environ.get("BUILD_HIVE_E2E_RELEASES", "bookworm trixie").split()
DATA = Path(__file__).resolve().parent / "data"
# Stand-ins for the default policy's packages, so the walkthrough really provisions its roles,
# and the test policy's own packages.
DEFAULT_POLICY_PACKAGES = ("ansible", "git", "openjdk-17-jdk", "maven", "build-essential",
                           "python3-pytest", "nodejs", "npm")
TEST_POLICY_PACKAGES = ("hive-e2e-tool", "hive-e2e-lib")
# For the provisioning tests: a package whose postinst takes a while (an agent restart lands in
# the middle of it; markers in /run say when it started and finished), and one that conflicts
# with an installed package (installing it would remove jq).
SLOW_PACKAGE = "hive-e2e-slow"
SLOW_POSTINST_SECONDS = 8
SLOW_POSTINST = f"""#!/bin/sh
set -e
if [ "$1" = configure ]; then
    touch /run/{SLOW_PACKAGE}.started
    sleep {SLOW_POSTINST_SECONDS}
    touch /run/{SLOW_PACKAGE}.configured
fi
"""
CONFLICTING_PACKAGE = "hive-e2e-breaker"
# Real packages (from the rootfs's debootstrap cache) that a test removes for install.sh (or
# cloud-init's `packages:`) to bring back.
PREREQ_DEBS = ("jq", "arping", "curl")
# The version of the "newer build" the upgrade tests install over the current one.
NEXT_VERSION_SUFFIX = "+e2e2"
MEASUREMENTS: dict[str, dict] = {}
# Lab numbers (bridge hve2eN, subnet 10.78.N) start at an offset taken from our PID, so two e2e
# runs at once (two checkouts) do not tear down each other's labs.
_lab_numbers = itertools.count(1 + (os.getpid() % 40) * 6)


def measure(release: str, key: str, value) -> None:
    """Keep a measured number for the summary at the end of the run."""
    MEASUREMENTS.setdefault(release, {})[key] = value


def pytest_terminal_summary(terminalreporter):
    if not MEASUREMENTS:
        return
    terminalreporter.section("build-hive e2e measurements")
    for release, values in sorted(MEASUREMENTS.items()):
        for key, value in sorted(values.items()):
            terminalreporter.write_line(f"{release:9s} {key}: {value}")
    out = Path(os.environ.get("BUILD_HIVE_E2E_RESULTS", "/var/tmp/build-hive-e2e-results.json"))
    try:
        out.write_text(json.dumps(MEASUREMENTS, indent=2, sort_keys=True) + "\n")
        terminalreporter.write_line(f"(also in {out})")
    except OSError:
        pass


@pytest.fixture(scope="session")
def e2e_dir():
    if os.geteuid() != 0:
        pytest.fail("the e2e tests boot systemd containers and need root: run them as root, as CI does")
    for tool in ("systemd-nspawn", "nsenter", "ip", "debootstrap", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.fail(f"the e2e tests need '{tool}' (apt-get install systemd-container "
                        f"debootstrap iproute2 util-linux dpkg)")
    hx.cleanup_stale_runs()
    path = hx.RUN_ROOT / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    (path / "www").mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_release(out: Path, *args: str) -> dict[str, Path]:
    """scripts/make-release into OUT: {"tarball": ..., "install.sh": ..., "deb": ...}."""
    printed = subprocess.run([str(hx.REPO / "scripts/make-release"), "--out", str(out), *args],
                             capture_output=True, text=True, timeout=180, check=True).stdout
    paths = [Path(line) for line in printed.split()]
    return {"tarball": next(p for p in paths if p.name.endswith(".tar.gz")),
            "install.sh": next(p for p in paths if p.name == "install.sh"),
            "deb": next(p for p in paths if p.name.endswith(".deb"))}


@pytest.fixture(scope="session")
def release(e2e_dir) -> dict[str, Path]:
    """scripts/make-release's files (tarball, one-file install.sh, .deb), served by every lab's
    file server under /."""
    return make_release(e2e_dir / "www")


@pytest.fixture(scope="session")
def release_tarball(release) -> Path:
    return release["tarball"]


@pytest.fixture(scope="session")
def next_release(e2e_dir, release) -> dict[str, Path]:
    """A newer build of the same tree (version + NEXT_VERSION_SUFFIX), served under /next/."""
    version = release["deb"].name.split("_")[1]
    return make_release(e2e_dir / "www" / "next", "--version", version + NEXT_VERSION_SUFFIX)


@pytest.fixture(scope="session")
def standin_debs(e2e_dir) -> list[Path]:
    """Tiny .debs named like the default policy's and the test policy's packages, and the
    provisioning tests' slow and conflicting ones."""
    out = e2e_dir / "debs"
    out.mkdir()
    return [hx.build_deb(name, out) for name in DEFAULT_POLICY_PACKAGES + TEST_POLICY_PACKAGES] + [
        hx.build_deb(SLOW_PACKAGE, out, postinst=SLOW_POSTINST),
        hx.build_deb(CONFLICTING_PACKAGE, out, control="Conflicts: jq\n")]


def make_apt_repo(www: Path, release: str, standins: list[Path]) -> Path:
    """www/apt-RELEASE: the stand-ins plus the release's real .debs of installer prerequisites."""
    repo = www / f"apt-{release}"
    repo.mkdir()
    for deb in list(standins) + e2e_rootfs.release_debs(release, PREREQ_DEBS):
        shutil.copy2(deb, repo / deb.name)
    hx.write_flat_repo_index(repo)
    return repo


class Lab:
    """One release's lab: network, file server and the containers of one test module."""

    def __init__(self, release: str, rootfs: Path, number: int, workdir: Path) -> None:
        self.release = release
        self.rootfs = rootfs
        self.workdir = workdir
        self.net = hx.LabNet(f"hve2e{number}", f"10.78.{number}")
        self.containers: dict[str, hx.Container] = {}
        self.server: hx.FileServer | None = None

    def serve(self, directory: Path) -> None:
        self.server = hx.FileServer(self.net, 250, directory)

    @property
    def apt_source(self) -> str:
        return f"deb [trusted=yes] {self.server.url}/apt-{self.release} ./\n"

    def hosts(self, *names_octets: tuple[str, int], boot: bool = True) -> list[hx.Container]:
        """Create containers (name, last octet), boot them all at once, wait until booted."""
        created = []
        for name, octet in names_octets:
            host = hx.Container(self.net, self.rootfs, name, octet, self.workdir)
            self.containers[name] = host
            host.write("/etc/apt/sources.list.d/build-hive-e2e.list", self.apt_source)
            created.append(host)
        if boot:
            for host in created:
                host.boot()
            for host in created:
                host.wait_booted()
        return created

    def diagnostics(self) -> str:
        return "\n".join(host.diagnostics() for host in self.containers.values())

    def teardown(self) -> None:
        for host in self.containers.values():
            try:
                host.destroy()
            except Exception as exc:  # keep tearing down the rest
                print(f"teardown of {host.name}: {exc}")
        if self.server is not None:
            self.server.stop()
        self.net.teardown()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module", params=RELEASES)
def lab(request, e2e_dir, release_tarball, standin_debs):
    release = request.param
    started = time.monotonic()
    rootfs = e2e_rootfs.build(release)
    if not (e2e_dir / "www" / f"apt-{release}").exists():
        make_apt_repo(e2e_dir / "www", release, standin_debs)
    number = next(_lab_numbers)
    the_lab = Lab(release, rootfs, number, e2e_dir / f"lab{number}")
    try:
        the_lab.serve(e2e_dir / "www")
        yield the_lab
    finally:
        the_lab.teardown()
    measure(release, f"module {request.module.__name__} (s)", round(time.monotonic() - started, 1))


@pytest.fixture
def diagnose(request, lab):
    """On failure, print every container's services, journal and state files."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(lab.diagnostics())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def policy_text() -> str:
    return (DATA / "e2e_policy.py").read_text()
