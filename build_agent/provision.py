"""Installing a role's packages with apt-get, in the background, so that nothing can break dpkg.

Three layers, from the bottom:

- ``install()``: the apt sequence, run right here.  It repairs a dpkg that was interrupted
  (``dpkg --configure -a``), runs ``apt-get update``, checks that every name is a real package of
  exactly that name (``apt-cache pkgnames`` lists names by literal prefix; a name that matches no
  package would otherwise be taken by apt-get as a regular expression or a glob: ``x.y``
  selects hundreds of packages), then ``apt-get install --no-remove``.  Argument lists only,
  names validated, no shell; apt's output is decoded with errors="replace".
- ``UnitInstaller``: runs that sequence as ``python3 -m build_agent.provision`` in its own
  transient systemd unit, ``build-hive-provision.service``, so a restart of build-agent (an
  upgrade, ``hive reset``, the watchdog) cannot kill dpkg half-way.  A restarted agent finds a
  unit still running from its previous life by that fixed name and waits for it.  The unit logs to
  the journal (``journalctl -u build-hive-provision``) and hands its result back in
  ``STATE_DIR/provision-result.json``, written atomically and tagged with a token of the run.
  Without systemd as PID 1 (the namespace lab, a container shell) ``install()`` runs in-process.
- ``Provisioner``: the agent's state machine: when to install, the worker thread, the retry
  after a failure, the log lines users see, and the identity.json fields to record.  Whatever
  happens in the worker (even an exception) ends as an error that is recorded and retried.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from . import state, timing
from .daemon import child_environ
from .protocol import format_ts_seconds, is_valid_package

LOG = logging.getLogger(__name__)

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_SUSPEND": "1"}
APT_LOCK = ["-o", "DPkg::Lock::Timeout=600"]
# dpkg's journal of status changes not yet folded into its database; apt-get refuses to run
# ("dpkg was interrupted") while it holds any numbered entry.
DPKG_UPDATES = "/var/lib/dpkg/updates"
REPAIR = ["dpkg", "--configure", "-a", "--force-confdef", "--force-confold"]

# The transient unit of an install; a fixed name, so a restarted agent finds a running one.
UNIT = "build-hive-provision.service"
RESULT_FILE = "provision-result.json"
# The unit gets build-agent.service's sandbox (apt ran inside it when it was the agent's child);
# tests/unit/test_unit_provision.py checks the two lists agree.  A role whose packages need more
# (e.g. /home) relaxes it with a drop-in: /etc/systemd/system/build-hive-provision.service.d/.
UNIT_SANDBOX = (
    "UMask=0022",
    "NoNewPrivileges=yes",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "RemoveIPC=yes",
    "KeyringMode=private",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap",
    "SystemCallErrorNumber=EPERM",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "CapabilityBoundingSet=CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID "
    "CAP_KILL CAP_SETGID CAP_SETUID CAP_SETPCAP CAP_SETFCAP CAP_AUDIT_WRITE",
)
ACTIVE_STATES = ("active", "activating", "deactivating", "reloading", "refreshing")

Runner = Callable[..., "subprocess.CompletedProcess"]  # subprocess: imported where it runs


def _run(argv: Sequence[str], timeout: float = timing.APT_COMMAND_TIMEOUT
         ) -> subprocess.CompletedProcess:
    import subprocess  # lazy: a daemon at rest installs nothing
    env = child_environ()
    env.update(APT_ENV)
    return subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=timeout,
                          check=False)


def _run_echoed(argv: Sequence[str], timeout: float = timing.APT_COMMAND_TIMEOUT
                ) -> subprocess.CompletedProcess:
    """_run, and the command's output copied to ours (the journal, inside the unit)."""
    result = _run(argv, timeout)
    for text, stream in ((result.stdout, sys.stdout), (result.stderr, sys.stderr)):
        if text:
            stream.write(text if text.endswith("\n") else text + "\n")
            stream.flush()
    return result


def install_command(packages: Sequence[str]) -> list[str]:
    bad = [p for p in packages if not is_valid_package(p)]
    if bad:
        raise ValueError(f"invalid package name(s): {', '.join(map(repr, bad))}")
    return ["apt-get", "install", "-y", "--no-install-recommends", "--no-remove", *APT_LOCK,
            "--", *packages]


def _tail(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _program(exc: BaseException) -> str:
    """The program an OSError or SubprocessError is about (apt-get when it does not say)."""
    name = getattr(exc, "filename", None)
    if not name and isinstance(getattr(exc, "cmd", None), (list, tuple)) and exc.cmd:
        name = exc.cmd[0]
    return str(name or "apt-get")


def dpkg_unfinished(run: Runner = _run, updates_dir: str = DPKG_UPDATES) -> str | None:
    """What dpkg left unfinished, in a few words, or None: entries in its journal (apt-get then
    refuses to run: "dpkg was interrupted"), or packages `dpkg --audit` lists (half-configured,
    unpacked, ...)."""
    try:
        entries = [name for name in os.listdir(updates_dir) if name.isdigit()]
    except OSError:
        entries = []
    if entries:
        return f"{len(entries)} entries in {updates_dir}"
    audit = run(["dpkg", "--audit"])
    if audit.returncode != 0 or audit.stdout.strip():
        return "dpkg --audit: " + (audit.stdout.strip().splitlines() or [f"exit {audit.returncode}"])[0][:200]
    return None


def repair_dpkg(run: Runner = _run, updates_dir: str = DPKG_UPDATES) -> str | None:
    """Finish what an interrupted dpkg left (dpkg --configure -a); None or what failed."""
    unfinished = dpkg_unfinished(run, updates_dir)
    if unfinished is None:
        return None
    LOG.warning("dpkg was interrupted earlier (%s); repairing it first: %s", unfinished,
                " ".join(REPAIR))
    result = run(REPAIR)
    if result.returncode != 0:
        return (f"dpkg was interrupted and '{' '.join(REPAIR[:3])}' failed "
                f"(exit {result.returncode}): {_tail(result.stderr or result.stdout)}")
    LOG.info("dpkg repaired")
    return None


def unknown_packages(packages: Sequence[str], run: Runner = _run) -> list[str] | str:
    """The names that are not a package of exactly that name in apt's cache (list), or what
    failed (str).  `apt-cache pkgnames PREFIX` lists real packages by literal prefix: no regex,
    no glob, no virtual names (apt-get would widen those that match no package)."""
    missing = []
    for name in packages:
        result = run(["apt-cache", "pkgnames", "--", name])
        if result.returncode != 0:
            return f"apt-cache pkgnames failed (exit {result.returncode}): {_tail(result.stderr)}"
        if name not in result.stdout.split():
            missing.append(name)
    return missing


def install(packages: Sequence[str], run: Runner = _run, sleep: Callable[[float], None] = time.sleep,
            updates_dir: str = DPKG_UPDATES) -> str | None:
    """Install the packages here; return None on success or one line saying what failed."""
    import subprocess  # lazy: a daemon at rest installs nothing
    try:
        command = install_command(packages)
    except ValueError as exc:
        return str(exc)
    if not packages:
        return None
    try:
        error = repair_dpkg(run, updates_dir)
        if error:
            return error
        error = "apt-get update failed"
        for attempt in range(1, timing.APT_UPDATE_ATTEMPTS + 1):
            result = run(["apt-get", *APT_LOCK, "update"])
            if result.returncode == 0:
                break
            error = f"apt-get update failed: {_tail(result.stderr)}"
            LOG.warning("%s (attempt %d of %d)", error, attempt, timing.APT_UPDATE_ATTEMPTS)
            if attempt < timing.APT_UPDATE_ATTEMPTS:
                sleep(timing.APT_UPDATE_PAUSE)
        else:
            return error
        missing = unknown_packages(packages, run)
        if isinstance(missing, str):
            return missing
        if missing:
            return (f"no package named exactly {', '.join(missing)} in the apt sources "
                    f"(nothing installed; fix the policy's package names)")
        result = run(command)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {_program(exc)}: {exc}"
    if result.returncode != 0:
        return f"apt-get install failed (exit {result.returncode}): {_tail(result.stderr)}"
    return None


# --- in a transient systemd unit ------------------------------------------------------------------

def systemd_booted() -> bool:
    """sd_booted(3): systemd is PID 1 here, so transient units are available."""
    return os.path.isdir("/run/systemd/system")


def unit_command(packages: Sequence[str], token: str, result_path: Path | str) -> list[str]:
    install_command(packages)  # validates the names (ValueError)
    code_dir = str(Path(__file__).resolve().parent.parent)
    argv = ["systemd-run", f"--unit={UNIT}", "--description=Build Hive: install the role's packages",
            "--wait", "--collect", "--quiet", "--no-ask-password", "--service-type=exec",
            f"--property=RuntimeMaxSec={timing.PROVISION_UNIT_MAX:.0f}",
            "--property=SyslogIdentifier=build-hive-provision"]
    argv += [f"--property={prop}" for prop in UNIT_SANDBOX]
    argv += [f"--setenv={key}={value}" for key, value in sorted(APT_ENV.items())]
    argv += [f"--setenv=PYTHONPATH={code_dir}", "--setenv=PYTHONDONTWRITEBYTECODE=1",
             "--setenv=PYTHONUNBUFFERED=1"]
    return argv + ["--", sys.executable, "-m", "build_agent.provision", "--token", token,
                   "--result", str(result_path), "--", *packages]


class UnitInstaller:
    """install() in build-hive-provision.service; waits for one left running by an earlier agent."""

    def __init__(self, state_dir: str, run: Runner = _run,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.result_path = Path(state_dir) / RESULT_FILE
        self.run, self.sleep, self.monotonic = run, sleep, monotonic

    def unit_running(self) -> bool:
        result = self.run(["systemctl", "is-active", UNIT], timeout=timing.SYSTEMCTL_TIMEOUT)
        return result.stdout.strip() in ACTIVE_STATES

    def wait_for_running_unit(self) -> str | None:
        """Wait while an install from before this agent (re)started runs; None or an error."""
        if not self.unit_running():
            return None
        LOG.info("An install started before this agent (re)started is still running (%s); "
                 "waiting for it to finish", UNIT)
        deadline = self.monotonic() + timing.PROVISION_UNIT_MAX + timing.PROVISION_UNIT_POLL
        while self.monotonic() < deadline:
            self.sleep(timing.PROVISION_UNIT_POLL)
            if not self.unit_running():
                LOG.info("The earlier install (%s) finished", UNIT)
                return None
        return f"{UNIT} is still running after {timing.PROVISION_UNIT_MAX:.0f}s"

    def read_result(self, token: str) -> dict | None:
        try:
            data = state.read_json(self.result_path)
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and data.get("token") == token:
            return data
        return None

    def __call__(self, packages: Sequence[str]) -> str | None:
        import subprocess  # lazy: a daemon at rest installs nothing
        try:
            install_command(packages)
        except ValueError as exc:
            return str(exc)
        if not packages:
            return None
        try:
            error = self.wait_for_running_unit()
            if error:
                return error
            token = os.urandom(8).hex()
            command = unit_command(packages, token, self.result_path)
            for _ in range(timing.PROVISION_UNIT_NAME_TRIES):
                # A failed unit of that name would block the name (normally --collect unloads
                # it); so does one that just ended and is not unloaded yet (seen on systemd
                # 257 right after an earlier agent's install finished): try again shortly.
                self.run(["systemctl", "reset-failed", UNIT], timeout=timing.SYSTEMCTL_TIMEOUT)
                result = self.run(command, timeout=timing.PROVISION_UNIT_MAX + 60)
                if result.returncode == 0 or "already loaded" not in (result.stderr or ""):
                    break
                self.sleep(timing.PROVISION_UNIT_POLL)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"cannot run systemd-run: {exc}"
        outcome = self.read_result(token)
        if outcome is not None:
            error = outcome.get("error")
            return None if error is None else str(error)[:400]
        return (f"{UNIT} ended without a result (exit {result.returncode}"
                f"{': ' + _tail(result.stderr) if _tail(result.stderr) else ''}); "
                f"see journalctl -u {UNIT}")


class SystemInstaller:
    """The agent's installer: in a transient unit where systemd is PID 1, in-process elsewhere."""

    def __init__(self, state_dir: str) -> None:
        self.unit = UnitInstaller(state_dir)

    def __call__(self, packages: Sequence[str]) -> str | None:
        if systemd_booted():
            return self.unit(packages)
        return install(packages)


# --- the agent's provisioning state machine -------------------------------------------------------

class Provisioner:
    """Installs the identity's packages in a worker thread and retries failures.

    The agent calls ``request(packages, now)`` when an identity needs its packages (at start,
    after settling) and ``tick(now)`` from its own tick; ``tick`` returns its next deadline and,
    when an attempt ended, the identity.json fields to record (provisioned, provision_error,
    provisioned_at)."""

    def __init__(self, installer: Callable[[Sequence[str]], str | None], enabled: bool = True,
                 clock: Callable[[], float] = time.time,
                 retry: float = timing.PROVISION_RETRY) -> None:
        self.installer = installer
        self.enabled = enabled
        self.clock = clock
        self.retry = retry
        self.packages: list[str] = []
        self.due: float | None = None
        self._thread: threading.Thread | None = None
        self._running: list[str] = []
        self._outcome: list = []  # the worker appends exactly one error (or None)

    def request(self, packages: Sequence[str], now: float) -> None:
        self.packages = list(packages)
        self.due = now

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker (tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self, packages: list[str]) -> None:
        try:
            error = self.installer(packages)
        except BaseException as exc:  # anything: recorded and retried, never a dead agent
            LOG.error("Provisioning raised %s (a bug; recorded and retried)", type(exc).__name__,
                      exc_info=True)
            error = f"internal error: {type(exc).__name__}: {exc}"[:400]
        self._outcome.append(error)

    def tick(self, now: float) -> tuple[float, dict | None]:
        fields = None
        if self._thread is not None:
            if self._thread.is_alive():
                return now + timing.PROVISION_POLL, None
            self._thread = None
            error = self._outcome.pop() if self._outcome else \
                "internal error: the install ended without a result"
            self._outcome.clear()
            if self._running == self.packages:  # (else the identity changed: install anew)
                fields = self._finished(error, now)
        if self.due is None or now < self.due:
            return (self.due if self.due is not None else float("inf")), fields
        self.due = None
        packages = list(self.packages)
        if not self.enabled:
            LOG.info("install_packages = false: not installing %s",
                     ", ".join(packages) if packages else "anything")
            return float("inf"), self._fields("skipped: install_packages = false")
        if not packages:
            return float("inf"), self._finished(None, now)
        LOG.info("Installing packages: %s", ", ".join(packages))
        self._running = packages
        thread = threading.Thread(target=self._work, args=(packages,), name="provision",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # cannot start a thread: recorded, tried again later
            fields = self._finished(f"internal error: {exc}", now)
            return self.due, fields
        self._thread = thread
        return now + timing.PROVISION_POLL, fields

    def _finished(self, error: str | None, now: float) -> dict:
        if error is None:
            if self.packages:
                LOG.info("Packages installed: %s", ", ".join(self.packages))
        else:
            LOG.error("Installing packages failed: %s; retrying in %.0fs", error, self.retry)
            self.due = now + self.retry
        return self._fields(error)

    def _fields(self, error: str | None) -> dict:
        return {"provisioned": error is None, "provision_error": error,
                "provisioned_at": format_ts_seconds(self.clock())}


# --- python3 -m build_agent.provision: what the transient unit runs -------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Install the packages, write {token, packages, error, finished_at} to --result; exit 0
    on success, 1 on failure."""
    import argparse

    from .daemon import setup_logging

    parser = argparse.ArgumentParser(prog="python3 -m build_agent.provision",
                                     description="Install a role's packages (build-agent runs "
                                                 f"this in {UNIT}).")
    parser.add_argument("--token", required=True, help="echoed in the result file")
    parser.add_argument("--result", required=True, help="where to write the result (JSON)")
    parser.add_argument("packages", nargs="*")
    args = parser.parse_args(argv)
    setup_logging("info")
    try:
        error = install(args.packages, run=_run_echoed)
    except Exception as exc:  # still write a result: the agent records it and retries
        LOG.error("Provisioning raised %s", type(exc).__name__, exc_info=True)
        error = f"internal error: {type(exc).__name__}: {exc}"[:400]
    if error is None:
        LOG.info("Packages installed: %s", ", ".join(args.packages))
    else:
        LOG.error("Installing packages failed: %s", error)
    state.write_json_atomic(args.result, {
        "token": args.token, "packages": args.packages, "error": error,
        "finished_at": format_ts_seconds(time.time())})
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
