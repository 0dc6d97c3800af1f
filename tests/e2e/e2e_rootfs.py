"""Debian root file systems for the end-to-end tests, built once with debootstrap and cached.

    python3 tests/e2e/e2e_rootfs.py bookworm trixie     # build (or reuse) them by hand

A rootfs is built under CACHE/<release> (default /var/cache/build-hive-e2e, or
$BUILD_HIVE_E2E_CACHE) and marked ready with a stamp naming RECIPE; a changed recipe rebuilds it.
The containers never change it: each boots from an overlay of it (see e2e_harness).

What the tests need in it, beyond debootstrap's minbase:
- systemd as PID 1 (systemd, systemd-sysv, dbus), python3 and the installer's prerequisites
  (iproute2, arping, jq, openssl, procps), so install.sh works offline like on a prepared host;
- cloud-init and curl for the cloud-init scenario (disabled by /etc/cloud/cloud-init.disabled in
  every other container, the way images ship it switched off);
- ufw, inactive as Ubuntu ships it (one test turns it on).
After debootstrap: no /etc/hostname (so --hostname wins), an empty machine-id (each container gets
its own), no remote apt sources (the containers have no route to an archive; tests add the lab's
own repository), the apt timers masked (they would take the dpkg lock at random times).  The
.debs debootstrap fetched are kept (see release_debs()).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("BUILD_HIVE_E2E_CACHE", "/var/cache/build-hive-e2e"))
MIRROR = os.environ.get("BUILD_HIVE_E2E_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "iproute2", "arping", "jq", "openssl",
            "procps", "curl", "cloud-init", "ufw",
            # debootstrap resolves no virtual packages: cloud-init -> python3-cryptography needs this
            "python3-cffi-backend")
# Bump when the build steps below change: cached trees with another recipe are rebuilt.
RECIPE = "5:" + ",".join(PACKAGES)
STAMP = ".build-hive-e2e-ready"
DEBOOTSTRAP_TIMEOUT = 1500  # seconds; about 60-120 s on these machines

MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service",
                "apt-daily-upgrade.service", "e2scrub_all.timer", "fstrim.timer",
                "systemd-timesyncd.service")

CLOUD_CFG = """\
# build-hive e2e: the lab has no DHCP and the address is set from outside the container,
# so cloud-init must not rewrite the network; the seed is NoCloud on disk.
network: {config: disabled}
datasource_list: [NoCloud, None]
"""


def rootfs_path(release: str) -> Path:
    return CACHE / release


def is_ready(release: str) -> bool:
    stamp = rootfs_path(release) / STAMP
    try:
        return stamp.read_text().strip() == RECIPE
    except FileNotFoundError:
        return False


def _log(message: str) -> None:
    print(f"e2e-rootfs: {message}", file=sys.stderr, flush=True)


def _postprocess(root: Path) -> None:
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    (root / "etc/apt/sources.list").write_text("# build-hive e2e: no remote sources\n")
    for source in (root / "etc/apt/sources.list.d").glob("*"):
        source.unlink()
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    cloud = root / "etc/cloud"
    cloud.mkdir(parents=True, exist_ok=True)
    (cloud / "cloud-init.disabled").write_text("build-hive e2e: enabled per container\n")
    (cloud / "cloud.cfg.d").mkdir(exist_ok=True)
    (cloud / "cloud.cfg.d/90-build-hive-e2e.cfg").write_text(CLOUD_CFG)
    # The .debs debootstrap fetched stay in var/cache/apt/archives: the tests serve some of them
    # (the installer's prerequisites) from the lab's own apt repository.


def build(release: str) -> Path:
    """The ready rootfs for RELEASE, built with debootstrap if it is missing or outdated."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = rootfs_path(release)
    with open(CACHE / f".{release}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(release):
            return target
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is missing: apt-get install debootstrap")
        work = CACHE / f".{release}.building"
        shutil.rmtree(work, ignore_errors=True)
        _log(f"building {release} rootfs in {target} (debootstrap, about a minute or two)")
        started = time.monotonic()
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", release,
             str(work), MIRROR],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
            log = work / "debootstrap/debootstrap.log"
            if log.exists():
                tail += "\n--- debootstrap.log ---\n" + "\n".join(
                    log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"debootstrap {release} failed ({result.returncode}):\n{tail}")
        _postprocess(work)
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
        (target / STAMP).write_text(RECIPE + "\n")
        _log(f"{release} rootfs ready in {time.monotonic() - started:.0f}s")
        return target


def release_debs(release: str, names: tuple[str, ...]) -> list[Path]:
    """The cached .debs of these packages (real ones, from this release's archive)."""
    archives = rootfs_path(release) / "var/cache/apt/archives"
    found = []
    for name in names:
        matches = sorted(archives.glob(f"{name}_*.deb"))
        if not matches:
            raise RuntimeError(f"no {name}_*.deb in {archives}")
        found.append(matches[-1])
    return found


def main(argv: list[str]) -> int:
    for release in argv or ["bookworm"]:
        print(build(release))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
