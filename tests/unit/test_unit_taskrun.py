"""Running a task: the helper (as a real child process here: uid 65534, hidden paths, limits),
the child runner's time limit and cancel, systemd-run's answers read right, the unit's sandbox."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from build_agent import taskrun, timing
from build_agent.tasks import Run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def place(tmp_path):
    """A work dir uid 65534 can reach (pytest's tmp_path is root's alone) and a 'secret'
    directory to hide."""
    base = Path(tempfile.mkdtemp(prefix="hive-taskrun-test.", dir="/var/tmp"))
    base.chmod(0o711)
    secret_dir = tmp_path / "etc-build"
    secret_dir.mkdir()
    (secret_dir / "shared_secret").write_text("top secret\n")
    (secret_dir / "shared_secret").chmod(0o644)  # readable: only the hiding protects it
    tmp_path.chmod(0o755)
    tmp_path.parent.chmod(0o755)
    yield SimpleNamespace(work=base / "work", secret_dir=secret_dir, out=tmp_path / "out")
    shutil.rmtree(base, ignore_errors=True)


def child_run(place, argv, timeout=30.0, task_id="t1"):
    place.out.mkdir(exist_ok=True)
    return Run(task_id, 1, "node-c", "build2", "10.0.0.2", argv, timeout=timeout)


def finish(runner, handle, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ended = runner.poll(handle, time.monotonic())
        if ended is not None:
            return ended
        time.sleep(0.02)
    raise AssertionError("the task did not end")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")  # the unit tests run as root
def test_a_child_task_runs_as_nobody_without_the_secret_and_with_limits(place):
    runner = taskrun.ChildRunner(str(place.work), [str(place.secret_dir)], 512 * 1024 * 1024)
    run = child_run(place, ["sh", "-c", f"id -u; id -g; pwd; echo $HOME; ulimit -d; "
                                        f"cat {place.secret_dir}/shared_secret; exit 3"])
    output = place.out / "t1-1.log"
    handle = runner.start(run, output, time.monotonic())
    assert finish(runner, handle) == ("exited", 3, None, None)
    lines = output.read_text().splitlines()
    workdir = str(place.work / "t1-1")
    assert lines[:5] == ["65534", "65534", workdir, workdir, str(512 * 1024)]
    assert "Permission denied" in lines[5] and "top secret" not in output.read_text()
    assert not (place.work / "t1-1").exists()  # its working directory went with it
    assert oct(output.stat().st_mode & 0o777) == "0o600"


def test_a_child_task_is_killed_at_its_time_limit_with_its_children(place):
    runner = taskrun.ChildRunner(str(place.work), [], 512 * 1024 * 1024)
    run = child_run(place, ["sh", "-c", "sleep 60 & echo $!; wait"], timeout=1.0)
    handle = runner.start(run, place.out / "t1-1.log", time.monotonic())
    started = time.monotonic()
    outcome = finish(runner, handle)
    assert outcome[0] == "timeout" and outcome[3] == "killed at its time limit (1 s)"
    assert 0.9 <= time.monotonic() - started < 1.0 + timing.TASK_KILL_GRACE + 1
    child = int((place.out / "t1-1.log").read_text().split()[0])
    time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or \
        Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] == "Z"


def test_cancel_and_setup_errors_and_signals(place):
    runner = taskrun.ChildRunner(str(place.work), [], 512 * 1024 * 1024)
    handle = runner.start(child_run(place, ["sleep", "30"]), place.out / "a.log", time.monotonic())
    time.sleep(0.3)
    runner.cancel(handle, time.monotonic())
    assert finish(runner, handle)[0] == "cancelled"

    handle = runner.start(child_run(place, ["true"], task_id="t2").__class__(
        "t2", 1, "node-c", "build2", "10.0.0.2", ["true"], repo="/nonexistent/repo"),
        place.out / "b.log", time.monotonic())
    outcome = finish(runner, handle)
    assert outcome == ("error", None, None, "git clone of /nonexistent/repo failed (exit 128)")

    handle = runner.start(child_run(place, ["no-such-command-here"], task_id="t3"),
                          place.out / "c.log", time.monotonic())
    assert finish(runner, handle) == ("exited", 127, None, None)
    assert "hive-task: command not found: no-such-command-here" in (place.out / "c.log").read_text()

    handle = runner.start(child_run(place, ["sh", "-c", "kill -9 $$"], task_id="t4"),
                          place.out / "d.log", time.monotonic())
    outcome = finish(runner, handle)
    assert outcome[:3] == ("signal", None, 9) and "SIGKILL" in outcome[3]


def test_a_leftover_from_before_a_restart_is_killed_only_if_it_is_still_that_process(place):
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        record = {"kind": "child", "pid": proc.pid, "start": taskrun._start_time(proc.pid) + 1,
                  "workdir": ""}
        taskrun.ChildRunner.abandon(record)  # another process now has that PID: left alone
        assert proc.poll() is None
        record["start"] -= 1
        taskrun.ChildRunner.abandon(record)
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_the_helper_tees_output_and_exits_as_the_command_did(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "build_agent.taskrun", "--tee", "--workdir", str(tmp_path / "w")]
    result = subprocess.run(base + ["--", "sh", "-c", "echo out; echo err >&2; exit 3"],
                            capture_output=True, env=env)
    assert result.returncode == 3
    assert result.stdout == b"out\nerr\n" and result.stderr == b"out\nerr\n"  # file and journal
    result = subprocess.run(base + ["--", "sh", "-c", "kill -TERM $$"], capture_output=True,
                            env=env)
    assert result.returncode == -signal.SIGTERM


SYSTEMD_RUN = {
    "success": ("Running as unit: hive-task-t-1.service; invocation ID: 3f\n"
                "Finished with result: success\n"
                "Main processes terminated with: code=exited, status=0/SUCCESS\n"
                "Service runtime: 41ms\n", 0, ("exited", 0, None, None)),
    "exit3": ("Running as unit: hive-task-t-1.service\nFinished with result: exit-code\n"
              "Main processes terminated with: code=exited, status=3/NOTIMPLEMENTED\n", 3,
              ("exited", 3, None, None)),
    "exit3-252": ("Running as unit: hive-task-t-1.service\nFinished with result: exit-code\n"
                  "Main processes terminated with: code=exited/status=3\n", 3,
                  ("exited", 3, None, None)),
    "signal-252": ("Finished with result: signal\n"
                   "Main processes terminated with: code=killed/status=9\n", 1,
                   ("signal", None, 9, "killed by SIGKILL")),
    "timeout": ("Finished with result: timeout\n"
                "Main processes terminated with: code=killed, status=15/TERM\n", 1,
                ("timeout", None, None, "killed at its time limit (2 s)")),
    "signal": ("Finished with result: signal\n"
               "Main processes terminated with: code=killed, status=9/KILL\n", 1,
               ("signal", None, 9, "killed by SIGKILL")),
    "oom": ("Finished with result: oom-kill\n"
            "Main processes terminated with: code=killed, status=9/KILL\n", 1,
            ("signal", None, 9, "killed: over its memory limit (MemoryMax=)")),
    "failed": ("Failed to start transient service unit: Unit hive-task-t-1.service already "
               "exists.\n", 1,
               ("error", None, None, "systemd could not run it: Failed to start transient "
                                     "service unit: Unit hive-task-t-1.service already exists. "
                                     "(result none; journalctl -u hive-task-t-1.service)")),
}


@pytest.mark.parametrize("case", sorted(SYSTEMD_RUN))
def test_what_systemd_run_says_becomes_the_outcome(tmp_path, case):
    text, rc, expected = SYSTEMD_RUN[case]
    handle = SimpleNamespace(run=SimpleNamespace(timeout=2.0), cancelled=False,
                             output=tmp_path / "none.log", unit="hive-task-t-1.service")
    assert taskrun.unit_outcome(text, rc, handle) == expected


def test_the_unit_command_is_an_argument_list_with_the_sandbox(tmp_path):
    runner = taskrun.UnitRunner(["/etc/build", "/var/lib/build"], 2 ** 30)
    run = Run("abc123", 2, "node-c", "build2", "10.0.0.2", ["sh", "-c", "echo $HOME; x;y"],
              repo="https://git.example/app.git", timeout=90)
    argv = runner.command(run, tmp_path / "abc123-2.log")
    assert argv[0] == "systemd-run" and "--unit=hive-task-abc123-2.service" in argv
    for prop in ("DynamicUser=yes", "RuntimeMaxSec=90", f"MemoryMax={2 ** 30}",
                 "ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "CapabilityBoundingSet=", "InaccessiblePaths=-/etc/build",
                 "InaccessiblePaths=-/var/lib/build", "StandardError=journal",
                 f"StandardOutput=append:{tmp_path / 'abc123-2.log'}"):
        assert f"--property={prop}" in argv
    # the command is the last arguments, untouched (no shell, nothing joined)
    assert argv[-5:] == ["--", "sh", "-c", "echo $HOME; x;y"][-4:] or \
        argv[-4:] == ["--", "sh", "-c", "echo $HOME; x;y"]
    assert argv[argv.index("--repo") + 1] == "https://git.example/app.git"


def test_hidden_paths_and_memory_limit():
    assert taskrun.hidden_paths("/var/lib/build", "/etc/build/shared_secret") == [
        "/etc/build", "/var/lib/build"]
    assert taskrun.hidden_paths("/run/lab/h3/state", "/run/lab/h3/shared_secret") == [
        "/etc/build", "/var/lib/build", "/run/lab/h3/state", "/run/lab/h3"]
    assert taskrun.memory_limit(512, 4) == 512 * 1024 * 1024
    assert taskrun.memory_limit(None, 10 ** 6) == taskrun.MIN_MEMORY
