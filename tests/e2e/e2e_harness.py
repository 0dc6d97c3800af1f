"""Booted systemd hosts for the end-to-end tests: systemd-nspawn containers on a private bridge.

Each container boots (systemd as PID 1) from an overlay of a cached Debian rootfs (e2e_rootfs):
the overlay is mounted here, on the machine, so a container keeps its changes across a
"reboot" (stop and boot again) and the tests can look at its files directly.  Its network is a
namespace with a veth into the lab's bridge, an address on the lab's /24 and a default route
via an address nobody has: the hive's broadcasts stay on the bridge and nothing leaves the lab.

    net = LabNet("e2e1", "10.78.1")
    host = Container(net, rootfs, "build1", 11, workdir)
    host.boot(); host.wait_booted()
    host.run("bash", "/src/install.sh")        # nsenter into all its namespaces
    host.shutdown(); net.teardown()

Every wait is bounded; teardown kills only the processes this module started, by PID.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
RUN_ROOT = Path(os.environ.get("BUILD_HIVE_E2E_RUN", "/run/build-hive-e2e"))
CLEAN_ENV = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8", "TERM=dumb", "USER=root", "LOGNAME=root"]
BOOT_TIMEOUT = 60.0


class HarnessError(AssertionError):
    pass


def sh(*argv: str, check: bool = True, timeout: float = 60, input: str | None = None
       ) -> subprocess.CompletedProcess:
    """Run a command on the machine (no shell)."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    return result


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll predicate() until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def cleanup_stale_runs(root: Path = RUN_ROOT) -> None:
    """Remove what an interrupted earlier run (its pytest PID is gone) left under root: its
    systemd-nspawn processes (found by their -D path there), overlay mounts and files."""
    if not root.is_dir():
        return
    for run in root.iterdir():
        if not run.name.isdigit() or Path(f"/proc/{run.name}").exists():
            continue
        marker = f"{run}/".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"systemd-nspawn\0") and marker in cmdline:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except OSError:
                    pass
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(run) + "/")]
        for mount in sorted(mounts, key=len, reverse=True):
            sh("umount", "-l", mount, check=False)
        shutil.rmtree(run, ignore_errors=True)


class LabNet:
    """A bridge (no address) and one network namespace per host, on SUBNET.0/24."""

    def __init__(self, tag: str, subnet: str) -> None:
        if len(tag) > 8:
            raise ValueError("tag must be at most 8 characters (interface names)")
        self.tag = tag
        self.subnet = subnet
        self.bridge = f"{tag}br"
        self.namespaces: list[str] = []
        self.veths: list[str] = []
        self.cleanup_leftovers()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"  # nobody has it: a default route that leads nowhere

    @property
    def broadcast(self) -> str:
        return f"{self.subnet}.255"

    def ip(self, octet: int) -> str:
        return f"{self.subnet}.{octet}"

    def ns_name(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def add_host(self, name: str, octet: int, default_route: bool = True) -> str:
        """A namespace with eth0 at SUBNET.octet/24; returns its name."""
        ns = self.ns_name(name)
        veth = f"{self.tag}v{octet}"
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", veth, check=False)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.veths.append(veth)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{self.ip(octet)}/24", "brd", "+", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if default_route:
            sh("ip", "-n", ns, "route", "add", "default", "via", self.gateway)
        return ns

    def cleanup_leftovers(self) -> None:
        """Remove what an interrupted earlier run with this tag left behind."""
        listing = sh("ip", "netns", "list", check=False).stdout
        for line in listing.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{self.tag}-"):
                sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", f"{self.tag}br", check=False)

    def teardown(self) -> None:
        for veth in self.veths:
            sh("ip", "link", "del", veth, check=False)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        self.namespaces.clear()
        self.veths.clear()


class Container:
    """One booted Debian host: systemd-nspawn on an overlay of ROOTFS, in its own namespace."""

    def __init__(self, net: LabNet, rootfs: Path, name: str, octet: int, workdir: Path,
                 binds_ro: dict[str, str] | None = None) -> None:
        self.net = net
        self.rootfs = rootfs
        self.name = name
        self.octet = octet
        self.ip = net.ip(octet)
        self.dir = workdir / name
        self.merged = self.dir / "merged"
        self.binds_ro = {str(REPO): "/src", **(binds_ro or {})}
        self.ns = net.add_host(name, octet)
        self.nspawn: subprocess.Popen | None = None
        self.pid: int | None = None  # the container's PID 1 (systemd), as seen from here
        self._mount_overlay()

    # --- files ------------------------------------------------------------------------------
    def _mount_overlay(self) -> None:
        for sub in ("upper", "work", "merged"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={self.rootfs},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}",
           str(self.merged))

    def path(self, inside: str) -> Path:
        """Where a file of the container is, seen from here."""
        return self.merged / inside.lstrip("/")

    def read(self, inside: str) -> str:
        return self.path(inside).read_text()

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        os.chmod(target, mode)

    # --- life -------------------------------------------------------------------------------
    def boot(self) -> None:
        """Start systemd-nspawn --boot in the background (setsid: its own session)."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            raise HarnessError(f"{self.name} is already running")
        argv = ["systemd-nspawn", "-D", str(self.merged), "--boot", f"--hostname={self.name}",
                f"--machine={self.name}", f"--network-namespace-path=/run/netns/{self.ns}",
                "--register=no", "--keep-unit", "--console=passive", "--quiet"]
        argv += [f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro.items()]
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        log = open(self.dir / "nspawn.log", "ab")
        self.nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       env=env, start_new_session=True)
        log.close()
        self.pid = None

    def _find_init(self) -> int | None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            raise HarnessError(f"systemd-nspawn for {self.name} exited:\n{self.nspawn_log()}")
        pid = self.nspawn.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except OSError:
                continue
        return None

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until systemd answers is-system-running with running/degraded; return it."""
        self.pid = wait_for(self._find_init, timeout, f"{self.name}'s systemd to start")

        def booted():
            out = self.run("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
            return out if out in ("running", "degraded") else None
        return wait_for(booted, timeout, f"{self.name} to finish booting", interval=0.1)

    def nspawn_log(self) -> str:
        try:
            return (self.dir / "nspawn.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def shutdown(self, timeout: float = 30) -> None:
        """A clean power-off (SIGTERM makes nspawn ask the container to shut down)."""
        if self.nspawn is None:
            return
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(10)
        self.nspawn = None
        self.pid = None

    def reboot(self) -> str:
        self.shutdown()
        self.boot()
        return self.wait_booted()

    def destroy(self) -> None:
        try:
            self.shutdown()
        finally:
            if self.merged.is_mount():
                if sh("umount", str(self.merged), check=False).returncode != 0:
                    sh("umount", "-l", str(self.merged), check=False)
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- commands ---------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """Run a command inside (all its namespaces, a clean root environment)."""
        if self.pid is None:
            raise HarnessError(f"{self.name} is not booted")
        result = subprocess.run(["nsenter", "-t", str(self.pid), "-a", "--", *CLEAN_ENV, *argv],
                                capture_output=True, text=True, timeout=timeout, input=input,
                                stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise HarnessError(f"[{self.name}] {' '.join(argv)} failed ({result.returncode}):\n"
                               f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
        return result

    def bash(self, script: str, check: bool = True, timeout: float = 120
             ) -> subprocess.CompletedProcess:
        """Run a fixed bash script inside (fed on stdin, so nothing is quoted into a command)."""
        return self.run("bash", "-euo", "pipefail", "-s", check=check, timeout=timeout,
                        input=script)

    def journal(self, unit: str, *extra: str) -> str:
        return self.run("journalctl", "--no-pager", "-q", "-o", "cat", "-u", unit, *extra,
                        check=False).stdout

    def diagnostics(self) -> str:
        """What a failing test wants to see about this host."""
        if self.pid is None:
            return f"[{self.name}] not running\n{self.nspawn_log()}"
        parts = [f"===== {self.name} ({self.ip}) ====="]
        for argv in (("systemctl", "--no-pager", "status", "build-agent", "build-advisor"),
                     ("journalctl", "--no-pager", "-q", "-o", "short-monotonic", "-n", "60",
                      "-u", "build-agent", "-u", "build-advisor"),
                     ("cat", "/var/lib/build/identity.json", "/var/lib/build/peers.json")):
            result = self.run(*argv, check=False, timeout=20)
            parts.append(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)


# --- a local apt repository and file server on the lab's bridge ----------------------------------

def build_deb(name: str, outdir: Path, version: str = "1.0-e2e", postinst: str | None = None,
              control: str = "") -> Path:
    """A tiny architecture-independent .deb that installs one marker file; POSTINST (a shell
    script) runs when it is configured; CONTROL adds fields (e.g. "Conflicts: jq\n")."""
    root = outdir / f"{name}-pkg"
    shutil.rmtree(root, ignore_errors=True)
    (root / "DEBIAN").mkdir(parents=True)
    doc = root / "usr/share/build-hive-e2e"
    doc.mkdir(parents=True)
    (doc / name).write_text(f"{name}: a stand-in package served by the build-hive e2e tests\n")
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        f"Maintainer: Build Hive e2e <e2e@build-hive.invalid>\nSection: misc\nPriority: optional\n"
        f"{control}"
        f"Description: build-hive e2e stand-in for {name}\n"
        f" Installed by the build-hive end-to-end tests from a repository on the lab bridge.\n")
    if postinst is not None:
        (root / "DEBIAN/postinst").write_text(postinst)
        os.chmod(root / "DEBIAN/postinst", 0o755)
    deb = outdir / f"{name}_{version}_all.deb"
    sh("dpkg-deb", "--root-owner-group", "--build", str(root), str(deb))
    shutil.rmtree(root)
    return deb


def write_flat_repo_index(repo: Path) -> None:
    """Packages and Release for a flat repository ('deb [trusted=yes] URL ./')."""
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        control = sh("dpkg-deb", "-f", str(deb)).stdout.rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas)
    (repo / "Packages").write_text(packages)
    digest = hashlib.sha256(packages.encode()).hexdigest()
    (repo / "Release").write_text(
        "Origin: build-hive-e2e\nLabel: build-hive-e2e\nSuite: e2e\nCodename: e2e\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\n"
        "Architectures: all amd64 arm64\nDescription: build-hive e2e stand-in packages\n"
        f"SHA256:\n {digest} {len(packages.encode())} Packages\n")


class FileServer:
    """python3 -m http.server in its own lab namespace, serving DIRECTORY on SUBNET.octet:PORT."""

    def __init__(self, net: LabNet, octet: int, directory: Path, port: int = 8080) -> None:
        self.net = net
        self.ip = net.ip(octet)
        self.port = port
        self.directory = directory
        self.ns = net.add_host("files", octet, default_route=False)
        self.log = open(directory.parent / "http.log", "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "python3", "-m", "http.server", "--bind", self.ip,
             "--directory", str(directory), str(port)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True)
        wait_for(self._listening, 15, f"the lab's file server on {self.ip}:{port}")

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise HarnessError("the lab's file server exited")
        out = sh("ip", "netns", "exec", self.ns, "ss", "-Htln", f"sport = :{self.port}",
                 check=False).stdout
        return bool(out.strip())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
