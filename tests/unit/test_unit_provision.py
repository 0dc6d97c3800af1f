"""Provisioning with a fake runner: exact apt-get argv, no shell, retries, validation."""

from __future__ import annotations

import subprocess

import pytest

from build_agent import provision, timing

UPDATE = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"]
BUILDER = ["openjdk-17-jdk", "maven", "git", "build-essential"]


def install_argv(packages):
    return ["apt-get", "install", "-y", "--no-install-recommends", "-o",
            "DPkg::Lock::Timeout=600", "--", *packages]


class FakeRunner:
    """Answers apt-get update/install with scripted results and records each argv."""

    def __init__(self, update_codes=(0,), install_code=0, stderr="", raises=None):
        self.update_codes = list(update_codes)
        self.install_code = install_code
        self.stderr = stderr
        self.raises = raises
        self.calls: list = []

    def __call__(self, argv):
        self.calls.append(argv)
        if self.raises is not None:
            raise self.raises
        if argv[-1] == "update":
            code = self.update_codes.pop(0) if self.update_codes else 0
        else:
            code = self.install_code
        return subprocess.CompletedProcess(argv, code, stdout="",
                                           stderr=self.stderr if code else "")


class FakeSleep:
    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds):
        self.calls.append(seconds)


def test_success_runs_update_then_install_with_exact_argv():
    run, sleep = FakeRunner(), FakeSleep()
    assert provision.install(BUILDER, run=run, sleep=sleep) is None
    assert run.calls == [UPDATE, install_argv(BUILDER)]
    assert all(isinstance(argv, list) and all(isinstance(a, str) for a in argv)
               for argv in run.calls)  # argument lists, never a shell string
    assert sleep.calls == []


def test_install_command_puts_names_after_double_dash():
    argv = provision.install_command(["git", "g2"])
    assert argv == install_argv(["git", "g2"])
    assert argv.index("--") == len(argv) - 3


def test_update_is_retried_then_install_runs():
    run, sleep = FakeRunner(update_codes=[100, 100, 0]), FakeSleep()
    assert timing.APT_UPDATE_ATTEMPTS == 3
    assert provision.install(["git"], run=run, sleep=sleep) is None
    assert run.calls == [UPDATE, UPDATE, UPDATE, install_argv(["git"])]
    assert sleep.calls == [timing.APT_UPDATE_PAUSE] * 2


def test_update_failing_every_time_gives_up_without_installing(caplog):
    run = FakeRunner(update_codes=[100] * 10,
                     stderr="Reading package lists...\nE: Could not get lock /var/lib/apt/lists\n")
    sleep = FakeSleep()
    error = provision.install(["git"], run=run, sleep=sleep)
    assert error == "apt-get update failed: E: Could not get lock /var/lib/apt/lists"
    assert run.calls == [UPDATE] * timing.APT_UPDATE_ATTEMPTS
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


def test_install_failure_returns_one_error_line():
    run = FakeRunner(install_code=100,
                     stderr="Reading package lists...\nE: Unable to locate package nosuchpkg\n")
    error = provision.install(["nosuchpkg"], run=run, sleep=FakeSleep())
    assert error == "apt-get install failed (exit 100): E: Unable to locate package nosuchpkg"
    assert "\n" not in error
    assert run.calls == [UPDATE, install_argv(["nosuchpkg"])]


def test_long_stderr_is_cut():
    run = FakeRunner(install_code=1, stderr="E: " + "x" * 1000)
    error = provision.install(["git"], run=run, sleep=FakeSleep())
    assert len(error) < 400


def test_apt_get_missing_is_reported():
    run = FakeRunner(raises=FileNotFoundError(2, "No such file or directory", "apt-get"))
    error = provision.install(["git"], run=run, sleep=FakeSleep())
    assert error.startswith("cannot run apt-get")
    assert len(run.calls) == 1


def test_timeout_is_reported():
    run = FakeRunner(raises=subprocess.TimeoutExpired(["apt-get"], 3600))
    assert provision.install(["git"], run=run, sleep=FakeSleep()).startswith("cannot run apt-get")


def test_nothing_to_install_runs_nothing():
    run = FakeRunner()
    assert provision.install([], run=run, sleep=FakeSleep()) is None
    assert run.calls == []


def test_default_runner_uses_no_shell_and_a_noninteractive_environment(monkeypatch):
    seen = {}

    def fake_run(argv, **kwargs):
        seen["argv"], seen["kwargs"] = argv, kwargs
        return subprocess.CompletedProcess(argv, 0, "", "")
    monkeypatch.setattr(provision.subprocess, "run", fake_run)
    monkeypatch.setenv("DEBIAN_FRONTEND", "dialog")
    provision._run(install_argv(["git"]))
    assert seen["argv"] == install_argv(["git"])
    kwargs = seen["kwargs"]
    assert not kwargs.get("shell", False)
    assert kwargs["env"]["DEBIAN_FRONTEND"] == "noninteractive"
    assert kwargs["env"]["NEEDRESTART_SUSPEND"] == "1"
    assert "PATH" in kwargs["env"]  # the rest of the environment is kept
    assert kwargs["stdin"] is subprocess.DEVNULL
    assert kwargs.get("check") is False and kwargs.get("timeout")
