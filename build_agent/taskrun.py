"""Running one attempt of a task on a worker, unprivileged and limited.

Where systemd is PID 1 (a real host), ``UnitRunner`` starts it as a transient unit,
``hive-task-ID-N.service``, with ``systemd-run --wait``: a dynamic user (``DynamicUser=yes``),
``RuntimeMaxSec=`` (its time limit), ``MemoryMax=`` (and ``LimitDATA=``, which holds even
without the cgroup memory controller), a read-only system, private /tmp and
/var/tmp (its working directory, removed with the unit), no capabilities, and /etc/build and
the agent's state invisible.  Elsewhere (the namespace lab, a container shell) ``ChildRunner``
starts it as a child process in a session of its own, as uid 65534 (nobody), with the same
paths hidden in a mount namespace of its own, RLIMIT_DATA and RLIMIT_CPU, and the agent
enforcing the time limit (SIGTERM to its process group, SIGKILL TASK_KILL_GRACE later).

Both run this module as the task's first process (``python3 -m build_agent.taskrun``): it
sets up what the kernel needs set from inside (namespace, limits, user: child mode only),
clones the repo with git when the task has one, and runs the command as an argument list (no
shell).  Under systemd it stays the command's parent and copies the output both to the kept
file (its stdout, opened by systemd) and to the journal (its stderr), so `journalctl -u
hive-task-ID-N` shows it too; as a child process it execs the command.  If it cannot set
the task up it says why on a line starting with ``hive-task:`` and exits with SETUP_FAILED.

Only the standard library, and nothing imported here that the helper does not need.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Callable

from . import timing
from .daemon import child_environ

LOG = logging.getLogger(__name__)

NOBODY = 65534  # uid and gid of a task run as a child process
SETUP_FAILED = 125  # the helper's exit status when it could not set the task up
NOT_FOUND, NOT_EXECUTABLE = 127, 126  # as a shell says them
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CODE_DIR = str(Path(__file__).resolve().parent.parent)
MIN_MEMORY = 256 * 1024 * 1024
# What a task unit gets, besides DynamicUser=yes and the limits (systemd 252 and later).
UNIT_SANDBOX = (
    "DynamicUser=yes",
    "PrivateTmp=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateDevices=yes",
    "NoNewPrivileges=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "CapabilityBoundingSet=",
    "SystemCallArchitectures=native",
    "UMask=0077",
)


def ram_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 4 * 1024 ** 3


def memory_limit(memory_max_mb: int | None, slots: int) -> int:
    """A task's memory limit in bytes: [tasks] memory_max_mb, else the RAM divided by the slots."""
    if memory_max_mb:
        return memory_max_mb * 1024 * 1024
    return max(MIN_MEMORY, ram_bytes() // max(1, slots))


def hidden_paths(state_dir: str, secret_file: str) -> list[str]:
    """What a task must not see: the hive's secret and config, the agent's state."""
    paths = ["/etc/build", "/var/lib/build", state_dir]
    secret_dir = os.path.dirname(secret_file)
    if secret_dir not in ("", "/"):
        paths.append(secret_dir)
    unique = []
    for path in paths:
        path = os.path.normpath(path)
        if path != "/" and path not in unique:
            unique.append(path)
    return unique


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _clean_env(run, home: str) -> dict:
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": home,
            "HIVE_TASK_ID": run.task_id, "HIVE_TASK_ATTEMPT": str(run.attempt)}


def _setup_error(output_path: Path) -> str | None:
    """The helper's 'hive-task: ...' line near the end of the output, if it wrote one."""
    try:
        with open(output_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 2048))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("hive-task: "):
            return line[len("hive-task: "):]
    return None


def _noop(events: int) -> None:
    """A pidfd became readable: the process ended; the loop's next tick polls it."""


class _Handle:
    """A running attempt, for its runner."""

    def __init__(self, run, proc: subprocess.Popen, deadline: float, output: Path,
                 watch: Callable | None, unwatch: Callable | None) -> None:
        self.run = run
        self.proc = proc
        self.deadline = deadline  # steady: when the time limit is up
        self.output = output
        self.cancelled = False
        self.timed_out = False
        self.kill_at: float | None = None
        self.unwatch = unwatch
        self.workdir: Path | None = None  # a child's working directory
        self.unit: str | None = None  # a transient unit's name
        self.status: Path | None = None  # what systemd-run printed
        self.pidfd: int | None = None
        if watch is not None:
            try:
                self.pidfd = os.pidfd_open(proc.pid)
                watch(self.pidfd, _noop)
            except (AttributeError, OSError):
                self.pidfd = None

    def record(self) -> dict:
        """What a restarted agent needs to stop what is left of it (run file's ``handle``)."""
        if self.unit is not None:
            return {"kind": "unit", "unit": self.unit}
        return {"kind": "child", "pid": self.proc.pid, "start": _start_time(self.proc.pid),
                "workdir": str(self.workdir)}

    def close(self) -> None:
        if self.pidfd is not None:
            if self.unwatch is not None:
                self.unwatch(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

    def next_check(self, now: float) -> float:
        due = [self.deadline] if not (self.timed_out or self.cancelled) else []
        if self.kill_at is not None:
            due.append(self.kill_at)
        if self.pidfd is None:
            due.append(now + timing.TASK_POLL)
        return min(due, default=now + timing.TASK_POLL)


class ChildRunner:
    """A task as a child process: uid 65534, own session and mount namespace, rlimits."""

    def __init__(self, work_dir: str, hide: list[str], memory: int,
                 watch: Callable | None = None, unwatch: Callable | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.hide = hide
        self.memory = memory
        self.watch, self.unwatch = watch, unwatch

    def start(self, run, output_path: Path, now: float) -> _Handle:
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        workdir = self.work_dir / run.key
        if workdir.exists():
            _remove_tree(workdir)
        workdir.mkdir(mode=0o700)
        os.chown(workdir, NOBODY, NOBODY)
        out = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                      | os.O_NOFOLLOW, 0o600)
        argv = [sys.executable, "-S", "-m", "build_agent.taskrun", "--uid", str(NOBODY),
                "--gid", str(NOBODY), "--parent", str(os.getpid()),
                "--memory", str(self.memory),
                "--cpu", str(int(run.timeout + timing.TASK_KILL_GRACE) + 1),
                "--workdir", str(workdir)]
        for path in self.hide:
            argv += ["--hide", path]
        if run.repo:
            argv += ["--repo", run.repo]
        env = _clean_env(run, str(workdir))
        env.update(PYTHONPATH=CODE_DIR, PYTHONDONTWRITEBYTECODE="1")
        import subprocess  # lazy: a daemon at rest starts no process
        try:
            proc = subprocess.Popen(argv + ["--", *run.argv], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, env=env, start_new_session=True,
                                    close_fds=True)
        finally:
            os.close(out)
        handle = _Handle(run, proc, now + run.timeout, output_path, self.watch, self.unwatch)
        handle.workdir = workdir
        return handle

    def _signal_group(self, handle: _Handle, sig: int) -> None:
        try:
            os.killpg(handle.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def poll(self, handle: _Handle, now: float):
        rc = handle.proc.poll()
        if rc is None:
            if not handle.timed_out and not handle.cancelled and now >= handle.deadline:
                handle.timed_out = True
                self._signal_group(handle, signal.SIGTERM)
                handle.kill_at = now + timing.TASK_KILL_GRACE
            elif handle.kill_at is not None and now >= handle.kill_at:
                self._signal_group(handle, signal.SIGKILL)
                handle.kill_at = now + timing.TASK_KILL_GRACE
            return None
        self._signal_group(handle, signal.SIGKILL)  # what it left running in its session
        handle.close()
        if handle.workdir is not None:
            _remove_tree(handle.workdir)
        return outcome_of(rc, handle)

    def next_check(self, handle: _Handle, now: float) -> float:
        return handle.next_check(now)

    def cancel(self, handle: _Handle, now: float) -> None:
        handle.cancelled = True
        self._signal_group(handle, signal.SIGTERM)
        handle.kill_at = now + timing.TASK_KILL_GRACE

    @staticmethod
    def abandon(record: dict, key: str = "") -> None:
        """After an agent restart: kill what is left of an attempt (if it is still that one;
        one that the agent died starting died with it: PR_SET_PDEATHSIG)."""
        pid, start = record.get("pid"), record.get("start")
        if isinstance(pid, int) and pid > 1 and start is not None and _start_time(pid) == start:
            try:
                os.killpg(pid, signal.SIGKILL)
                LOG.info("Killed what was left of a task from before the restart (pid %d)", pid)
            except (ProcessLookupError, PermissionError):
                pass
        workdir = record.get("workdir")
        if isinstance(workdir, str) and workdir and record.get("kind") == "child":
            _remove_tree(Path(workdir))


def outcome_of(rc: int, handle: _Handle):
    """(outcome, rc, signal, error) of a finished child (the helper's status)."""
    timeout = handle.run.timeout
    if handle.timed_out:
        return ("timeout", None, signal.SIGTERM if rc < 0 else None,
                f"killed at its time limit ({timeout:g} s)")
    if handle.cancelled:
        return ("cancelled", rc if rc >= 0 else None, -rc if rc < 0 else None, "cancelled")
    if rc == SETUP_FAILED:
        error = _setup_error(handle.output)
        if error is not None:
            return ("error", None, None, error)
    if rc >= 0:
        return ("exited", rc, None, None)
    what = _signal_name(-rc)
    hint = " (over its memory limit?)" if -rc == signal.SIGKILL else ""
    return ("signal", None, -rc, f"killed by {what}{hint}")


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a PID reused from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _remove_tree(path: Path) -> None:
    import shutil
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning("Cannot remove the task directory %s: %s", path, exc)


class UnitRunner:
    """A task as a transient systemd unit with a dynamic user (systemd-run --wait)."""

    def __init__(self, hide: list[str], memory: int, watch: Callable | None = None,
                 unwatch: Callable | None = None,
                 run: Callable[..., subprocess.CompletedProcess] | None = None) -> None:
        self.hide = hide
        self.memory = memory
        self.watch, self.unwatch = watch, unwatch
        self._run = run  # None: subprocess.run (see abandon)
        self._stoppers: list[subprocess.Popen] = []

    @staticmethod
    def unit_name(run) -> str:
        return f"hive-task-{run.key}.service"

    def command(self, run, output_path: Path) -> list[str]:
        timeout = max(1, int(round(run.timeout)))
        argv = ["systemd-run", f"--unit={self.unit_name(run)}",
                f"--description=Build Hive task {run.task_id} (attempt {run.attempt})",
                "--wait", "--collect", "--no-ask-password", "--service-type=exec",
                f"--property=RuntimeMaxSec={timeout}",
                f"--property=TimeoutStopSec={timing.TASK_KILL_GRACE:.0f}",
                f"--property=MemoryMax={self.memory}",
                # ... and per process, where the cgroup memory controller is not there
                f"--property=LimitDATA={self.memory}", "--property=LimitCORE=0",
                f"--property=StandardOutput=append:{output_path}",
                "--property=StandardError=journal",
                "--property=LogRateLimitIntervalSec=0",
                f"--property=SyslogIdentifier=hive-task-{run.task_id}",
                "--property=WorkingDirectory=/var/tmp"]
        argv += [f"--property={prop}" for prop in UNIT_SANDBOX]
        argv += [f"--property=InaccessiblePaths=-{path}" for path in self.hide]
        env = _clean_env(run, "/var/tmp/work")
        env.update(PYTHONPATH=CODE_DIR, PYTHONDONTWRITEBYTECODE="1")
        argv += [f"--setenv={key}={value}" for key, value in sorted(env.items())]
        argv += ["--", sys.executable, "-S", "-m", "build_agent.taskrun", "--tee",
                 "--workdir", "/var/tmp/work"]
        if run.repo:
            argv += ["--repo", run.repo]
        return argv + ["--", *run.argv]

    def start(self, run, output_path: Path, now: float) -> _Handle:
        # (Each attempt has a unit name of its own, never used again, and --collect unloads it.)
        status = output_path.with_suffix(".unit")
        log = os.open(status, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                      | os.O_NOFOLLOW, 0o600)
        fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
        os.close(fd)  # exists, root's, 0600, before systemd appends to it
        env = child_environ()
        import subprocess  # lazy: a daemon at rest starts no process
        try:
            proc = subprocess.Popen(self.command(run, output_path), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, env=env, close_fds=True)
        finally:
            os.close(log)
        handle = _Handle(run, proc, now + run.timeout, output_path, self.watch, self.unwatch)
        handle.unit = self.unit_name(run)
        handle.status = status
        return handle

    def poll(self, handle: _Handle, now: float):
        self._stoppers = [p for p in self._stoppers if p.poll() is None]
        rc = handle.proc.poll()
        if rc is None:
            # systemd enforces the limit; this only catches a unit that outlives it anyway
            if now >= handle.deadline + timing.TASK_KILL_GRACE + 30 and handle.kill_at is None:
                LOG.warning("Task unit %s outlived its time limit; stopping it", handle.unit)
                self._stop(handle.unit)
                handle.timed_out = True
                handle.kill_at = now + 30
            return None
        handle.close()
        try:
            text = handle.status.read_text(errors="replace")
            os.unlink(handle.status)
        except OSError:
            text = ""
        return unit_outcome(text, rc, handle)

    def next_check(self, handle: _Handle, now: float) -> float:
        if handle.kill_at is not None or handle.cancelled:
            return now + timing.TASK_POLL if handle.pidfd is None else handle.deadline + 3600
        due = handle.deadline + timing.TASK_KILL_GRACE + 30
        return min(due, now + timing.TASK_POLL) if handle.pidfd is None else due

    def _stop(self, unit: str) -> None:
        import subprocess  # lazy: a daemon at rest starts no process
        try:
            self._stoppers.append(subprocess.Popen(
                ["systemctl", "stop", "--no-block", unit], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except OSError as exc:
            LOG.error("Cannot stop %s: %s", unit, exc)

    def cancel(self, handle: _Handle, now: float) -> None:
        handle.cancelled = True
        self._stop(handle.unit)

    def abandon(self, record: dict, key: str = "") -> None:
        """After an agent restart: stop the attempt's unit (by its name, which the attempt's key
        gives even when the agent died before recording it)."""
        unit = record.get("unit") or (f"hive-task-{key}.service" if key else None)
        if isinstance(unit, str) and unit.startswith("hive-task-") and unit.endswith(".service"):
            import subprocess  # lazy: a daemon at rest starts no process
            (self._run or subprocess.run)(["systemctl", "stop", "--no-block", unit],
                                          capture_output=True, timeout=timing.SYSTEMCTL_TIMEOUT,
                                          check=False)
            LOG.info("Stopping %s, left running from before the restart", unit)


_TERMINATED_RE = re.compile(r"code=(\w+)[/, ]+status=(\d+)")


def unit_outcome(text: str, rc: int, handle: _Handle):
    """(outcome, rc, signal, error) from what systemd-run --wait printed and its status."""
    result, code, status = None, None, None
    for line in text.splitlines():
        if line.startswith("Finished with result: "):
            result = line.split(": ", 1)[1].strip()
        elif line.startswith("Main processes terminated with: "):
            # "code=exited, status=3/NOTIMPLEMENTED" (257), "code=exited/status=3" (252)
            found = _TERMINATED_RE.search(line)
            if found:
                code, status = found.group(1), int(found.group(2))
    if handle.cancelled:
        return ("cancelled", None, None, "cancelled")
    if result == "timeout":
        return ("timeout", None, None, f"killed at its time limit ({handle.run.timeout:g} s)")
    if result == "oom-kill":
        return ("signal", None, signal.SIGKILL, "killed: over its memory limit (MemoryMax=)")
    if result == "success":
        return ("exited", 0, None, None)
    if result == "exit-code" and status is not None:
        if status == SETUP_FAILED:
            error = _setup_error(handle.output)
            if error is not None:
                return ("error", None, None, error)
        return ("exited", status, None, None)
    if result in ("signal", "core-dump") and status is not None:
        return ("signal", None, status, f"killed by {_signal_name(status)}")
    lines = [line for line in text.splitlines() if line.strip()
             and not line.startswith(("Running as unit", "Finished with", "Main processes",
                                      "Service runtime", "CPU time", "Memory peak", "IP traffic",
                                      "IO bytes"))]
    why = lines[-1][:200] if lines else f"systemd-run exited {rc}"
    return ("error", None, None, f"systemd could not run it: {why} (result {result or 'none'}; "
                                 f"journalctl -u {handle.unit})")


def system_runner(config, slots: int, watch: Callable | None = None,
                  unwatch: Callable | None = None):
    """The runner for this machine: a transient unit where systemd is PID 1, else a child."""
    hide = hidden_paths(config.state_dir, config.secret_file)
    memory = memory_limit(config.tasks.memory_max_mb, slots)
    if os.path.isdir("/run/systemd/system"):
        return UnitRunner(hide, memory, watch, unwatch)
    return ChildRunner(config.tasks.work_dir, hide, memory, watch, unwatch)


# --- python3 -m build_agent.taskrun: a task's first process ------------------------------------

def _fail(text: str, code: int = SETUP_FAILED) -> int:
    """Say why on a 'hive-task:' line (in the output; in the journal too under systemd)."""
    line = f"hive-task: {text}\n".encode("utf-8", errors="replace")
    targets = [1]
    try:
        if not os.path.sameopenfile(1, 2):
            targets.append(2)
    except OSError:
        pass
    for fd in targets:
        try:
            os.write(fd, line)
        except OSError:
            pass
    return code


def _hide(libc, paths: list[str]) -> None:
    """A mount namespace of our own in which the paths are empty and unreadable."""
    import ctypes
    clone_newns, ms_rdonly, ms_nosuid, ms_nodev, ms_noexec = 0x20000, 1, 2, 4, 8
    ms_bind, ms_rec, ms_private = 4096, 16384, 1 << 18

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    check(libc.unshare(clone_newns), "unshare(CLONE_NEWNS)")
    check(libc.mount(b"none", b"/", None, ms_rec | ms_private, None), "making / private")
    for path in paths:
        target = path.encode()
        if os.path.isdir(path):
            check(libc.mount(b"tmpfs", target, b"tmpfs",
                             ms_rdonly | ms_nosuid | ms_nodev | ms_noexec, b"mode=000,size=4k"),
                  f"hiding {path}")
        elif os.path.exists(path):
            check(libc.mount(b"/dev/null", target, None, ms_bind, None), f"hiding {path}")


def _die_with_parent(libc, parent: int) -> None:
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before we asked
        os._exit(_fail("build-agent is gone: not starting the task"))


def _tee(argv: list[str], env: dict) -> int:
    """Run the command with its output copied to our stdout (the kept file) and stderr (the
    journal); exit as it did (a signal that killed it kills us the same way)."""
    import subprocess  # imported by main already, before it dropped root
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, env=env)
    except FileNotFoundError:
        return _fail(f"command not found: {argv[0]}", NOT_FOUND)
    except PermissionError:
        return _fail(f"cannot run {argv[0]}: permission denied", NOT_EXECUTABLE)
    except OSError as exc:
        return _fail(f"cannot run {argv[0]}: {exc.strerror}", NOT_EXECUTABLE)
    stream = child.stdout
    journal_ok = True
    while True:
        data = os.read(stream.fileno(), 65536)
        if not data:
            break
        os.write(1, data)
        if journal_ok:
            try:
                os.write(2, data)
            except OSError:
                journal_ok = False
    rc = child.wait()
    if rc < 0:
        try:
            signal.signal(-rc, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP keep their default anyway
        os.kill(os.getpid(), -rc)
        return 128 - rc
    return rc


def main(argv: list[str] | None = None) -> int:
    import argparse
    import resource
    import subprocess  # (git clone, --tee) here: before dropping root, as for ctypes below

    parser = argparse.ArgumentParser(prog="python3 -m build_agent.taskrun",
                                     description="A Build Hive task's first process (build-agent "
                                                 "starts it; not for direct use).")
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--parent", type=int, help="die with this process (child mode)")
    parser.add_argument("--hide", action="append", default=[])
    parser.add_argument("--memory", type=int, help="RLIMIT_DATA in bytes")
    parser.add_argument("--cpu", type=int, help="RLIMIT_CPU in seconds")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--repo")
    parser.add_argument("--tee", action="store_true", help="copy the output to stdout and stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        return _fail("no command")
    try:
        libc = None
        if args.hide or args.parent:
            # Loaded while still root: the interpreter's own files may be root's alone.
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
        if args.hide:
            _hide(libc, args.hide)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if args.memory:
            resource.setrlimit(resource.RLIMIT_DATA, (args.memory, args.memory))
        if args.cpu:
            resource.setrlimit(resource.RLIMIT_CPU, (args.cpu, args.cpu + 5))
        if args.gid is not None:
            os.setgroups([])
            os.setgid(args.gid)
        if args.uid is not None:
            os.setuid(args.uid)
            if os.getuid() == 0 or os.geteuid() == 0:
                return _fail("could not drop root")
        if args.parent:
            _die_with_parent(libc, args.parent)
        os.makedirs(args.workdir, mode=0o700, exist_ok=True)
        os.chdir(args.workdir)
    except OSError as exc:
        return _fail(f"cannot set up the task: {exc}")
    env = {key: value for key, value in os.environ.items()
           if key in ("PATH", "LANG", "HOME", "HIVE_TASK_ID", "HIVE_TASK_ATTEMPT")}
    env.setdefault("PATH", SAFE_PATH)
    env["HOME"] = args.workdir
    if args.repo:
        try:
            clone = subprocess.run(["git", "clone", "--quiet", "--", args.repo, "src"],
                                   stdin=subprocess.DEVNULL, env=env, check=False)
        except FileNotFoundError:
            return _fail("git is not installed here: cannot clone the repo")
        if clone.returncode != 0:
            return _fail(f"git clone of {args.repo} failed (exit {clone.returncode})")
        os.chdir("src")
    if args.tee:
        return _tee(command, env)
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        return _fail(f"command not found: {command[0]}", NOT_FOUND)
    except PermissionError:
        return _fail(f"cannot run {command[0]}: permission denied", NOT_EXECUTABLE)
    except OSError as exc:
        return _fail(f"cannot run {command[0]}: {exc.strerror}", NOT_EXECUTABLE)
    return SETUP_FAILED  # (execvpe does not return)


if __name__ == "__main__":
    sys.exit(main())
