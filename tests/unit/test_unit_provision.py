"""Provisioning with a fake runner: exact apt-get argv, no shell, retries, validation, exact
package names, dpkg repair, the transient unit, and the agent's Provisioner state machine."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from build_agent import provision, state, timing

UPDATE = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"]
AUDIT = ["dpkg", "--audit"]
REPAIR = ["dpkg", "--configure", "-a", "--force-confdef", "--force-confold"]
BUILDER = ["openjdk-17-jdk", "maven", "git", "build-essential"]
REPO = Path(__file__).resolve().parents[2]


def install_argv(packages):
    return ["apt-get", "install", "-y", "--no-install-recommends", "--no-remove", "-o",
            "DPkg::Lock::Timeout=600", "--", *packages]


def pkgnames(name):
    return ["apt-cache", "pkgnames", "--", name]


def checked(packages):
    """What install() runs before apt-get install: audit, update, one exact-name check each."""
    return [AUDIT, UPDATE] + [pkgnames(p) for p in packages]


class FakeRunner:
    """Answers dpkg/apt-get/apt-cache with scripted results and records each argv.

    ``known`` are the packages apt knows (pkgnames lists those starting with the prefix);
    None: every name asked for exists."""

    def __init__(self, update_codes=(0,), install_code=0, stderr="", raises=None, known=None,
                 audit="", repair_code=0):
        self.update_codes = list(update_codes)
        self.install_code = install_code
        self.stderr = stderr
        self.raises = raises
        self.known = known
        self.audit = audit
        self.repair_code = repair_code
        self.calls: list = []

    def __call__(self, argv, timeout=None):
        self.calls.append(argv)
        if self.raises is not None:
            raise self.raises
        stdout = ""
        if argv == AUDIT:
            code, stdout = 0, self.audit
        elif argv == REPAIR:
            code = self.repair_code
        elif argv[:2] == ["apt-cache", "pkgnames"]:
            prefix = argv[-1]
            names = [prefix] if self.known is None else \
                [n for n in self.known if n.startswith(prefix)]
            code, stdout = 0, "".join(n + "\n" for n in names)
        elif argv[-1] == "update":
            code = self.update_codes.pop(0) if self.update_codes else 0
        else:
            code = self.install_code
        return subprocess.CompletedProcess(argv, code, stdout=stdout,
                                           stderr=self.stderr if code else "")


class FakeSleep:
    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds):
        self.calls.append(seconds)


@pytest.fixture
def updates(tmp_path):
    """An empty dpkg updates directory (the machine's own is never looked at)."""
    path = tmp_path / "dpkg-updates"
    path.mkdir()
    return str(path)


def test_success_runs_update_then_install_with_exact_argv(updates):
    run, sleep = FakeRunner(), FakeSleep()
    assert provision.install(BUILDER, run=run, sleep=sleep, updates_dir=updates) is None
    assert run.calls == checked(BUILDER) + [install_argv(BUILDER)]
    assert all(isinstance(argv, list) and all(isinstance(a, str) for a in argv)
               for argv in run.calls)  # argument lists, never a shell string
    assert sleep.calls == []


def test_install_command_puts_names_after_double_dash():
    argv = provision.install_command(["git", "g2"])
    assert argv == install_argv(["git", "g2"])
    assert argv.index("--") == len(argv) - 3
    assert "--no-remove" in argv  # an install never removes a package


def test_update_is_retried_then_install_runs(updates):
    run, sleep = FakeRunner(update_codes=[100, 100, 0]), FakeSleep()
    assert timing.APT_UPDATE_ATTEMPTS == 3
    assert provision.install(["git"], run=run, sleep=sleep, updates_dir=updates) is None
    assert run.calls == [AUDIT, UPDATE, UPDATE, UPDATE, pkgnames("git"), install_argv(["git"])]
    assert sleep.calls == [timing.APT_UPDATE_PAUSE] * 2


def test_update_failing_every_time_gives_up_without_installing(caplog, updates):
    run = FakeRunner(update_codes=[100] * 10,
                     stderr="Reading package lists...\nE: Could not get lock /var/lib/apt/lists\n")
    sleep = FakeSleep()
    error = provision.install(["git"], run=run, sleep=sleep, updates_dir=updates)
    assert error == "apt-get update failed: E: Could not get lock /var/lib/apt/lists"
    assert run.calls == [AUDIT] + [UPDATE] * timing.APT_UPDATE_ATTEMPTS
    assert sleep.calls == [timing.APT_UPDATE_PAUSE] * (timing.APT_UPDATE_ATTEMPTS - 1)
    assert caplog.text.count("attempt") == timing.APT_UPDATE_ATTEMPTS


@pytest.mark.parametrize("bad", ["-oops", "rm -rf", "rm -rf /", "git;reboot", "$(reboot)",
                                 "Git", "git+", "git-", "a", "", "git\n", "--purge"])
def test_invalid_names_are_rejected_before_running_anything(bad):
    run, sleep = FakeRunner(), FakeSleep()
    error = provision.install(["git", bad], run=run, sleep=sleep)
    assert error is not None and error.startswith("invalid package name(s)")
    assert repr(bad) in error
    assert run.calls == [] and sleep.calls == []
    with pytest.raises(ValueError):
        provision.install_command([bad])


def test_install_failure_returns_one_error_line(updates):
    run = FakeRunner(install_code=100,
                     stderr="Reading package lists...\nE: Unable to locate package nosuchpkg\n")
    error = provision.install(["nosuchpkg"], run=run, sleep=FakeSleep(), updates_dir=updates)
    assert error == "apt-get install failed (exit 100): E: Unable to locate package nosuchpkg"
    assert "\n" not in error
    assert run.calls == checked(["nosuchpkg"]) + [install_argv(["nosuchpkg"])]


def test_long_stderr_is_cut(updates):
    run = FakeRunner(install_code=1, stderr="E: " + "x" * 1000)
    error = provision.install(["git"], run=run, sleep=FakeSleep(), updates_dir=updates)
    assert len(error) < 400


def test_dpkg_missing_is_reported(updates):
    run = FakeRunner(raises=FileNotFoundError(2, "No such file or directory", "dpkg"))
    error = provision.install(["git"], run=run, sleep=FakeSleep(), updates_dir=updates)
    assert error.startswith("cannot run dpkg")
    assert len(run.calls) == 1


def test_timeout_is_reported(updates):
    def slow_install(argv, timeout=None):
        if argv[:2] == ["apt-get", "install"]:
            raise subprocess.TimeoutExpired(argv, 3600)
        return FakeRunner()(argv)
    error = provision.install(["git"], run=slow_install, sleep=FakeSleep(), updates_dir=updates)
    assert error.startswith("cannot run apt-get") and "timed out after 3600" in error


def test_nothing_to_install_runs_nothing(updates):
    run = FakeRunner()
    assert provision.install([], run=run, sleep=FakeSleep(), updates_dir=updates) is None
    assert run.calls == []


# --- exact names: apt-get must never read a name as a regular expression or glob --------------

@pytest.mark.parametrize("name", ["x.y", "hive.e2e.tool", "gi.k", "x-."])
def test_a_name_that_is_no_package_installs_nothing(name, updates):
    """apt 2.6 takes a name matching no package as a regex (x.y: 139 packages on Debian 12);
    such a name stops the install before apt-get install runs, with the name in the error."""
    known = ["git", "hive-e2e-tool", "xay", "x-y", "gitk"]
    run = FakeRunner(known=known)
    error = provision.install(["git", name], run=run, sleep=FakeSleep(), updates_dir=updates)
    assert error == (f"no package named exactly {name} in the apt sources "
                     f"(nothing installed; fix the policy's package names)")
    assert not any(argv[:2] == ["apt-get", "install"] for argv in run.calls)
    assert run.calls == checked(["git", name])


def test_a_prefix_of_a_package_is_not_that_package(updates):
    run = FakeRunner(known=["gitk", "git-gui"])
    error = provision.install(["git"], run=run, sleep=FakeSleep(), updates_dir=updates)
    assert error.startswith("no package named exactly git ")


def test_pkgnames_failing_is_reported(updates):
    def run(argv, timeout=None):
        if argv[:2] == ["apt-cache", "pkgnames"]:
            return subprocess.CompletedProcess(argv, 100, "", "E: The package cache is broken\n")
        return FakeRunner()(argv)
    error = provision.install(["git"], run=run, sleep=FakeSleep(), updates_dir=updates)
    assert error == "apt-cache pkgnames failed (exit 100): E: The package cache is broken"


# --- an interrupted dpkg is repaired before installing -------------------------------------------

def test_a_dpkg_journal_entry_is_repaired_first(updates, caplog):
    (Path(updates) / "0003").write_text("")
    run = FakeRunner()
    assert provision.install(["git"], run=run, sleep=FakeSleep(), updates_dir=updates) is None
    assert run.calls == [REPAIR] + checked(["git"])[1:] + [install_argv(["git"])]
    assert f"dpkg was interrupted earlier (1 entries in {updates}); repairing it first" \
        in caplog.text


def test_half_configured_packages_are_repaired_first(updates, caplog):
    (Path(updates) / "tmp.i").write_text("")  # not a journal entry (apt ignores it too)
    run = FakeRunner(audit="The following packages are only half configured, ...\n"
                           " hive-e2e-slow        build-hive e2e stand-in\n")
    assert provision.install(["git"], run=run, sleep=FakeSleep(), updates_dir=updates) is None
    assert run.calls[:3] == [AUDIT, REPAIR, UPDATE]
    assert "dpkg was interrupted earlier (dpkg --audit: The following packages are only half " \
        "configured, ...); repairing it first" in caplog.text


def test_a_failed_repair_stops_the_install(updates):
    (Path(updates) / "0001").write_text("")
    run = FakeRunner(repair_code=2)
    run.stderr = "dpkg: error: dpkg frontend lock was locked by another process with pid 7\n"
    error = provision.install(["git"], run=run, sleep=FakeSleep(), updates_dir=updates)
    assert error == ("dpkg was interrupted and 'dpkg --configure -a' failed (exit 2): "
                     "dpkg: error: dpkg frontend lock was locked by another process with pid 7")
    assert run.calls == [REPAIR]


def test_apt_output_that_is_not_utf8_is_decoded_with_replacement():
    """Undecodable output from apt (or a maintainer script) must not raise."""
    result = provision._run([sys.executable, "-c",
                             "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe'); "
                             "sys.stderr.buffer.write(b'E: \\xc3(')"])
    assert result.stdout == "ok \ufffd\ufffd" and result.stderr == "E: \ufffd("


def test_default_runner_uses_no_shell_and_a_noninteractive_environment(monkeypatch):
    seen = {}

    def fake_run(argv, **kwargs):
        seen["argv"], seen["kwargs"] = argv, kwargs
        return subprocess.CompletedProcess(argv, 0, "", "")
    monkeypatch.setattr(subprocess, "run", fake_run)  # provision imports it where it runs
    monkeypatch.setenv("DEBIAN_FRONTEND", "dialog")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    provision._run(install_argv(["git"]))
    assert seen["argv"] == install_argv(["git"])
    kwargs = seen["kwargs"]
    assert not kwargs.get("shell", False)
    assert kwargs["env"]["DEBIAN_FRONTEND"] == "noninteractive"
    assert kwargs["env"]["NEEDRESTART_SUSPEND"] == "1"
    assert "PATH" in kwargs["env"]  # the rest of the environment is kept
    assert "NOTIFY_SOCKET" not in kwargs["env"] and "WATCHDOG_USEC" not in kwargs["env"]
    assert kwargs["errors"] == "replace"
    assert kwargs["stdin"] is subprocess.DEVNULL
    assert kwargs.get("check") is False and kwargs.get("timeout")


# --- the transient unit: build-hive-provision.service ---------------------------------------------

class FakeSystemd:
    """systemctl and systemd-run as the UnitInstaller uses them.  systemd-run 'runs' the unit:
    it writes the result file the way `python3 -m build_agent.provision` does."""

    def __init__(self, states=("inactive",), error=None, write_result=True, token=None,
                 code=None):
        self.states = list(states)
        self.error = error
        self.write_result = write_result
        self.token = token  # write this token instead of the one asked for (a stale result)
        self.code = code
        self.calls: list = []

    def __call__(self, argv, timeout=None):
        self.calls.append(argv)
        assert timeout is not None  # every systemctl/systemd-run call is bounded
        if argv[:2] == ["systemctl", "is-active"]:
            state_name = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return subprocess.CompletedProcess(argv, 0 if state_name == "active" else 3,
                                               state_name + "\n", "")
        if argv[:2] == ["systemctl", "reset-failed"]:
            return subprocess.CompletedProcess(argv, 1, "", "Unit not loaded.\n")
        assert argv[0] == "systemd-run"
        inner = argv[argv.index("--") + 1:]
        token = inner[inner.index("--token") + 1]
        result = inner[inner.index("--result") + 1]
        packages = inner[inner.index("--", 1) + 1:]
        if self.write_result:
            state.write_json_atomic(result, {"token": self.token or token, "packages": packages,
                                             "error": self.error, "finished_at": "x"})
        code = self.code if self.code is not None else (0 if self.error is None else 1)
        return subprocess.CompletedProcess(argv, code, "", "")


def test_unit_installer_runs_the_install_in_its_own_unit(tmp_path):
    run, sleep = FakeSystemd(), FakeSleep()
    installer = provision.UnitInstaller(str(tmp_path), run=run, sleep=sleep)
    assert installer(["git", "maven"]) is None
    assert run.calls[0] == ["systemctl", "is-active", "build-hive-provision.service"]
    assert run.calls[1] == ["systemctl", "reset-failed", "build-hive-provision.service"]
    argv = run.calls[2]
    assert argv[0] == "systemd-run" and "--unit=build-hive-provision.service" in argv
    for flag in ("--wait", "--collect", "--quiet", "--service-type=exec",
                 "--setenv=DEBIAN_FRONTEND=noninteractive",
                 f"--setenv=PYTHONPATH={REPO}",
                 f"--property=RuntimeMaxSec={timing.PROVISION_UNIT_MAX:.0f}",
                 "--property=ProtectHome=yes", "--property=PrivateDevices=yes"):
        assert flag in argv, flag
    inner = argv[argv.index("--") + 1:]
    assert inner[:3] == [sys.executable, "-m", "build_agent.provision"]
    assert inner[-3:] == ["--", "git", "maven"]
    assert inner[inner.index("--result") + 1] == str(tmp_path / "provision-result.json")
    assert sleep.calls == []


def test_unit_installer_returns_the_units_error(tmp_path):
    run = FakeSystemd(error="no package named exactly x.y in the apt sources (...)")
    installer = provision.UnitInstaller(str(tmp_path), run=run, sleep=FakeSleep())
    assert installer(["x.y"]) == "no package named exactly x.y in the apt sources (...)"


@pytest.mark.parametrize("kind", ["no result", "stale result"])
def test_unit_installer_never_takes_a_result_of_another_run(tmp_path, kind):
    run = FakeSystemd(write_result=kind == "stale result", token="0123", code=1)
    run.error = None  # a stale success must not count
    installer = provision.UnitInstaller(str(tmp_path), run=run, sleep=FakeSleep())
    error = installer(["git"])
    assert error.startswith("build-hive-provision.service ended without a result (exit 1)")
    assert "journalctl -u build-hive-provision.service" in error


def test_a_restarted_agent_waits_for_the_install_of_its_previous_life(tmp_path, caplog):
    caplog.set_level("INFO")
    run, sleep = FakeSystemd(states=["active", "active", "activating", "inactive"]), FakeSleep()
    installer = provision.UnitInstaller(str(tmp_path), run=run, sleep=sleep)
    assert installer(["git"]) is None
    assert sleep.calls == [timing.PROVISION_UNIT_POLL] * 3
    assert [argv[0] for argv in run.calls] == ["systemctl"] * 5 + ["systemd-run"]
    assert "still running (build-hive-provision.service); waiting for it" in caplog.text


def test_a_unit_that_never_ends_is_given_up_on(tmp_path):
    clock = [0.0]

    def sleep(seconds):
        clock[0] += seconds
    run = FakeSystemd(states=["active"])
    installer = provision.UnitInstaller(str(tmp_path), run=run, sleep=sleep,
                                        monotonic=lambda: clock[0])
    error = installer(["git"])
    assert error == (f"build-hive-provision.service is still running after "
                     f"{timing.PROVISION_UNIT_MAX:.0f}s")
    assert not any(argv[0] == "systemd-run" for argv in run.calls)


def test_unit_installer_validates_names_before_running_anything(tmp_path):
    run = FakeSystemd()
    installer = provision.UnitInstaller(str(tmp_path), run=run, sleep=FakeSleep())
    assert installer(["git", "--purge"]).startswith("invalid package name(s)")
    assert installer([]) is None
    assert run.calls == []


def test_the_install_unit_has_the_agents_sandbox():
    """apt ran inside build-agent.service's sandbox when it was the agent's child; the unit
    keeps exactly those settings (so they cannot drift apart)."""
    unit = (REPO / "systemd/build-agent.service").read_text().splitlines()
    start = unit.index("# Hardening that leaves apt-get able to install packages.")
    hardening = [line for line in unit[start + 1:unit.index("[Install]")]
                 if line and not line.startswith("#") and line != "AmbientCapabilities="]
    umask = [line for line in unit if line.startswith("UMask=")]
    assert list(provision.UNIT_SANDBOX) == umask + hardening


def test_the_unit_command_runs_the_helper(tmp_path, monkeypatch):
    """`python3 -m build_agent.provision` (what the unit runs): writes the result atomically
    with the run's token and exits 1 on failure, 0 on success."""
    seen = []

    def fake_install(packages, run=None):
        seen.append(list(packages))
        return None if packages == ["git"] else "apt-get install failed (exit 100): E: boom"
    monkeypatch.setattr(provision, "install", fake_install)
    result = tmp_path / "provision-result.json"
    assert provision.main(["--token", "abc", "--result", str(result), "--", "git"]) == 0
    data = json.loads(result.read_text())
    assert (data["token"], data["packages"], data["error"]) == ("abc", ["git"], None)
    assert provision.main(["--token", "def", "--result", str(result), "--", "nope"]) == 1
    assert json.loads(result.read_text())["error"] == "apt-get install failed (exit 100): E: boom"

    def raising(packages, run=None):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    monkeypatch.setattr(provision, "install", raising)
    assert provision.main(["--token", "ghi", "--result", str(result), "--", "git"]) == 1
    assert json.loads(result.read_text())["error"].startswith("internal error: UnicodeDecodeError")


def test_the_helper_runs_as_a_module(tmp_path):
    """The real entry point, as systemd-run starts it: bad names never reach apt."""
    result = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "build_agent.provision", "--token", "t",
                           "--result", str(result), "--", "Bad Name"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(result.read_text())["error"] == "invalid package name(s): 'Bad Name'"


def test_system_installer_uses_the_unit_only_under_systemd(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(provision, "install", lambda packages: calls.append("here") or None)
    installer = provision.SystemInstaller(str(tmp_path))
    installer.unit = lambda packages: calls.append("unit") or None
    monkeypatch.setattr(provision, "systemd_booted", lambda: False)
    installer(["git"])
    monkeypatch.setattr(provision, "systemd_booted", lambda: True)
    installer(["git"])
    assert calls == ["here", "unit"]


# --- Provisioner: the agent's state machine ---------------------------------------------------------

def wait_and_tick(provisioner, now):
    provisioner.join(5)
    return provisioner.tick(now)


def test_provisioner_records_success_and_failure_then_retries(caplog):
    caplog.set_level("INFO")
    outcomes = ["apt-get install failed (exit 100): E: x", None]
    calls = []

    def installer(packages):
        calls.append(list(packages))
        return outcomes.pop(0)
    p = provision.Provisioner(installer, clock=lambda: 1_800_000_000.0)
    assert p.tick(0.0) == (float("inf"), None)  # nothing requested
    p.request(["git"], 10.0)
    deadline, fields = p.tick(10.0)
    assert deadline == 10.0 + timing.PROVISION_POLL and fields is None and p.busy
    deadline, fields = wait_and_tick(p, 11.0)
    assert fields == {"provisioned": False, "provision_error": "apt-get install failed (exit 100): E: x",
                      "provisioned_at": "2027-01-15T08:00:00Z"}
    assert deadline == 11.0 + timing.PROVISION_RETRY
    assert "Installing packages failed: apt-get install failed (exit 100): E: x; retrying in 300s" \
        in caplog.text
    assert p.tick(11.0 + timing.PROVISION_RETRY - 1) == (11.0 + timing.PROVISION_RETRY, None)
    p.tick(11.0 + timing.PROVISION_RETRY)
    deadline, fields = wait_and_tick(p, 12.0 + timing.PROVISION_RETRY)
    assert fields["provisioned"] is True and fields["provision_error"] is None
    assert deadline == float("inf") and calls == [["git"], ["git"]]
    assert "Installing packages: git" in caplog.text and "Packages installed: git" in caplog.text


@pytest.mark.parametrize("exc", [UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
                                 RuntimeError("boom"), SystemExit(3), KeyError("x")])
def test_provisioner_turns_any_exception_into_a_recorded_error(exc):
    def installer(packages):
        raise exc
    p = provision.Provisioner(installer)
    p.request(["git"], 0.0)
    p.tick(0.0)
    deadline, fields = wait_and_tick(p, 1.0)
    assert fields["provisioned"] is False
    assert fields["provision_error"].startswith(f"internal error: {type(exc).__name__}")
    assert deadline == 1.0 + timing.PROVISION_RETRY


def test_provisioner_survives_a_worker_that_left_no_result():
    p = provision.Provisioner(lambda packages: None)
    p.request(["git"], 0.0)
    p.tick(0.0)
    p.join(5)
    p._outcome.clear()  # as if the worker died without a word
    deadline, fields = p.tick(1.0)
    assert fields["provision_error"] == "internal error: the install ended without a result"
    assert deadline == 1.0 + timing.PROVISION_RETRY


def test_provisioner_disabled_or_empty():
    p = provision.Provisioner(lambda packages: pytest.fail("must not install"), enabled=False)
    p.request(["git"], 0.0)
    deadline, fields = p.tick(0.0)
    assert deadline == float("inf")
    assert fields["provisioned"] is False
    assert fields["provision_error"] == "skipped: install_packages = false"
    p = provision.Provisioner(lambda packages: pytest.fail("must not install"))
    p.request([], 0.0)
    assert p.tick(0.0)[1]["provisioned"] is True


def test_provisioner_installs_again_when_the_packages_changed_meanwhile():
    release = threading.Event()
    calls = []

    def installer(packages):
        calls.append(list(packages))
        release.wait(5)
    p = provision.Provisioner(installer)
    p.request(["git"], 0.0)
    p.tick(0.0)
    p.request(["maven"], 0.5)
    release.set()
    deadline, fields = wait_and_tick(p, 1.0)
    assert fields is None  # git's result says nothing about maven
    deadline, fields = wait_and_tick(p, 2.0)
    assert calls == [["git"], ["maven"]] and fields["provisioned"] is True
