"""Role hooks: the executables in /etc/build/role.d/ that give a role its behaviour.

Whenever this node takes a role (its first identity, a move, a new identity after `hive reset`)
build-agent runs the hooks, one after another, in a worker thread (the agent's loop never waits):

- which: run-parts' rules: the folder's regular files (symlinks followed) that are executable
  and whose names consist of letters, digits, '-' and '_' only (so ``50-ci-agent``, not
  ``50-ci-agent.sh``: that is skipped, as run-parts skips it), in lexical (C locale) order.
  Other entries are skipped and said so at debug.  A missing folder means no hooks (debug).
- trust: the folder, every folder above it and every hook (as named and as resolved) must be
  root's alone (owned by root, not writable by group or others: ownership.py, the rule policies
  follow); otherwise nothing of it runs and one error line says what to fix.
- how: ``[path]``, never through a shell, stdin /dev/null, cwd /, in its own session (process
  group), with only PATH, HIVE_ROLE, HIVE_PREVIOUS_ROLE ("" on a first identity),
  HIVE_IDENTITY (identity.json's path) and HIVE_PACKAGES_STATE (installed, failed or disabled:
  install_packages = false) in its environment.  Its output (stdout and stderr, the last
  lines) goes to the agent's log; after timing.ROLE_HOOK_TIMEOUT it is killed with its whole
  process group (SIGKILL).
- when: once the role's packages are installed, because a hook usually starts something those
  packages bring.  If the install fails, the hooks run anyway after that first failed attempt
  (HIVE_PACKAGES_STATE=failed: the old role's services should not outlive the role), and once
  more when a retry succeeds.  With install_packages = false they run at once.
- the record: identity.json's ``role_hooks`` says what ran for which role and how each hook
  ended (an exit status, or a word: ``timeout``, ``killed by signal SIGTERM``,
  ``cannot run: ...``, ``refused: ...``).  At start the agent runs the hooks again unless that
  record says they already ran for this very role (same role, role_since and packages state)
  and every hook now in the folder exited 0 then: a run cut short by a stop, a crash or a
  reboot is finished, and a failed (or newly added) hook runs after `systemctl restart
  build-agent`.  So hooks must be idempotent: act on HIVE_ROLE (the state to reach), not on the
  transition.

``RoleHooks`` is the agent's state machine: ``want(identity)`` when the identity's packages are
settled, ``tick(now)`` from the agent's tick, returning the next deadline and, when a run ended,
the identity.json fields to record.  Nothing a hook does (or a bug here) escapes the worker.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import timing
from .ownership import directories_problem, owner_problem
from .protocol import format_ts_seconds

LOG = logging.getLogger(__name__)

# run-parts' default rule for names it runs (no --lsbsysinit, no --regex).
NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OWNER_WHY = "build-agent runs role hooks as root"
# Of a hook's output, at most this many bytes and lines (the last ones) go to the log.
OUTPUT_TAIL_BYTES = 8192
OUTPUT_TAIL_LINES = 20
TIMEOUT = "timeout"

Result = int | str
# runner(path, env, timeout) -> (exit status or a word, the end of its output)
HookRunner = Callable[[str, dict, float], tuple[Result, str]]


def packages_state(identity: dict) -> str | None:
    """installed, failed or disabled (install_packages = false), from identity.json's fields;
    None while this identity's packages have not been tried yet."""
    if identity.get("provisioned") is True:
        return "installed"
    error = identity.get("provision_error")
    if not error:
        return None
    return "disabled" if str(error).startswith("skipped") else "failed"


@dataclass(frozen=True)
class Run:
    """One run of the hooks: for which role, since when, with the packages in which state."""
    role: str
    previous_role: str
    role_since: str
    packages: str

    @classmethod
    def for_identity(cls, identity: dict) -> "Run | None":
        packages = packages_state(identity)
        role = identity.get("role")
        if packages is None or not isinstance(role, str):
            return None
        return cls(role, str(identity.get("previous_role") or ""),
                   str(identity.get("changed_at") or identity.get("assigned_at") or ""), packages)

    def fields(self) -> dict:
        return {"role": self.role, "previous_role": self.previous_role,
                "role_since": self.role_since, "packages": self.packages}

    def done_in(self, record: object, hooks: list[str]) -> bool:
        """identity.json's role_hooks says this run happened and each of these hooks (those in
        the folder now) exited 0 in it."""
        if not isinstance(record, dict) or "error" in record:
            return False
        if any(record.get(key) != value for key, value in self.fields().items()
               if key != "previous_role"):
            return False
        results = record.get("results")
        return isinstance(results, dict) and all(
            type(results.get(name)) is int and results[name] == 0 for name in hooks)

    def env(self, identity_path: str) -> dict:
        return {"PATH": HOOK_PATH, "HIVE_ROLE": self.role,
                "HIVE_PREVIOUS_ROLE": self.previous_role, "HIVE_IDENTITY": identity_path,
                "HIVE_PACKAGES_STATE": self.packages}

    def context(self) -> str:
        was = f"was '{self.previous_role}'" if self.previous_role else "no previous role"
        return f"(role '{self.role}', {was})"


# --- finding the hooks ----------------------------------------------------------------------------

def find_hooks(directory: str) -> tuple[list[str], str | None]:
    """The names of the hooks to run, in order, or why none may run (one line)."""
    what = f"role hooks folder {directory}"
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        LOG.debug("No role hooks: %s does not exist", directory)
        return [], None
    except OSError as exc:
        return [], f"cannot read {what}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return [], f"{what} is not a directory"
    problem = owner_problem(what, directory, info, OWNER_WHY) \
        or directories_problem(directory, what, OWNER_WHY)
    if problem:
        return [], problem
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        return [], f"cannot list {what}: {exc.strerror or exc}"
    hooks = []
    for name in names:
        path = os.path.join(directory, name)
        if not NAME_RE.fullmatch(name):
            LOG.debug("Role hooks: skipping %s (run-parts runs only names made of letters, "
                      "digits, '-' and '_')", path)
            continue
        try:
            entry = os.stat(path)
        except OSError as exc:
            LOG.debug("Role hooks: skipping %s (%s)", path, exc.strerror or exc)
            continue
        if not stat.S_ISREG(entry.st_mode):
            LOG.debug("Role hooks: skipping %s (not a regular file)", path)
        elif not entry.st_mode & 0o111:
            LOG.debug("Role hooks: skipping %s (not executable)", path)
        else:
            hooks.append(name)
    return hooks, None


def hook_problem(path: str) -> str | None:
    """Why this hook may not run (someone other than root could change it), or None."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return f"cannot read role hook {path}: {exc.strerror or exc}"
    problem = owner_problem(f"role hook {path}", path, info, OWNER_WHY)
    if problem is None and os.path.islink(path):  # where it points must be root's alone too
        problem = directories_problem(path, f"role hook {path}", OWNER_WHY)
    return problem


# --- running one hook -----------------------------------------------------------------------------

def _output_file() -> int | None:
    """An unnamed file for a hook's output (gone when closed), or None (output not kept)."""
    try:
        return os.open("/tmp", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):
        return None


def _tail(fd: int) -> str:
    size = os.fstat(fd).st_size
    os.lseek(fd, max(0, size - OUTPUT_TAIL_BYTES), os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def run_hook(path: str, env: dict, timeout: float) -> tuple[Result, str]:
    """Run one hook; its exit status (or "timeout", "killed by signal X", "cannot run: ...")
    and the end of its output.  At the timeout the hook and its process group are killed."""
    import subprocess  # lazy: a daemon at rest runs no hook
    out = _output_file()
    try:
        try:
            proc = subprocess.Popen(
                [path], stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL, stderr=subprocess.STDOUT,
                env=env, cwd="/", start_new_session=True, close_fds=True)
        except OSError as exc:
            return f"cannot run: {exc.strerror or exc}", ""
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Not reaped yet, so its pid (= its process group's id) cannot have been reused.
            for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
                try:
                    kill()
                except OSError:
                    pass
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                return f"{TIMEOUT} (and still running after SIGKILL)", ""
            result: Result = TIMEOUT
        else:
            result = code if code >= 0 else f"killed by signal {_signal_name(-code)}"
        try:
            text = _tail(out) if out is not None else ""
        except OSError as exc:
            text = f"(output lost: {exc.strerror or exc})"
        return result, text
    finally:
        if out is not None:
            os.close(out)


# --- running them all ------------------------------------------------------------------------------

def _log_output(name: str, text: str, level: int) -> None:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if len(lines) > OUTPUT_TAIL_LINES:
        LOG.log(level, "Role hook %s: (%d earlier lines not shown)", name,
                len(lines) - OUTPUT_TAIL_LINES)
        lines = lines[-OUTPUT_TAIL_LINES:]
    for line in lines:
        LOG.log(level, "Role hook %s: %s", name, line[:500])


def run_all(run: Run, directory: str, identity_path: str, runner: HookRunner = run_hook,
            timeout: float = timing.ROLE_HOOK_TIMEOUT) -> dict:
    """Run every hook of the folder for this run; return the summary for identity.json."""
    summary = dict(run.fields(), results={})
    hooks, error = find_hooks(directory)
    if error:
        LOG.error("Role hooks not run %s: %s; then restart build-agent to run them",
                  run.context(), error)
        summary["error"] = error
        return summary
    if not hooks:
        LOG.debug("No role hooks to run in %s", directory)
        return summary
    LOG.info("Running role hooks %s, packages %s: %s", run.context(), run.packages,
             ", ".join(hooks))
    env = run.env(identity_path)
    for name in hooks:
        path = os.path.join(directory, name)
        problem = hook_problem(path)
        if problem:
            LOG.error("Role hook %s not run: %s", name, problem)
            summary["results"][name] = f"refused: {problem}"[:400]
            continue
        try:
            result, output = runner(path, dict(env), timeout)
        except Exception as exc:  # a bug (or a strange file): recorded, the next hook runs
            LOG.error("Running role hook %s raised %s", name, type(exc).__name__, exc_info=True)
            result, output = f"internal error: {type(exc).__name__}: {exc}"[:400], ""
        ok = type(result) is int and result == 0
        _log_output(name, output, logging.INFO if ok else logging.WARNING)
        if ok:
            LOG.info("Role hook %s exited 0 %s", name, run.context())
        elif type(result) is int:
            LOG.warning("Role hook %s exited %d %s", name, result, run.context())
        elif result == TIMEOUT:
            LOG.warning("Role hook %s timed out after %.0fs; killed it and its process group %s",
                        name, timeout, run.context())
        else:
            LOG.warning("Role hook %s: %s %s", name, result, run.context())
        summary["results"][name] = result
    return summary


# --- the agent's state machine ---------------------------------------------------------------------

class RoleHooks:
    """Runs the hooks an identity needs, one run at a time, in a worker thread."""

    def __init__(self, directory: str, identity_path: str, runner: HookRunner = run_hook,
                 clock: Callable[[], float] = time.time,
                 timeout: float = timing.ROLE_HOOK_TIMEOUT) -> None:
        self.directory = directory
        self.identity_path = identity_path
        self.runner = runner
        self.clock = clock
        self.timeout = timeout
        self._wanted: Run | None = None   # the latest run asked for (each is asked for once)
        self._pending: Run | None = None  # to start at the next tick
        self._thread: threading.Thread | None = None
        self._outcome: list = []          # the worker appends exactly one summary

    def want(self, identity: dict) -> None:
        """The identity's packages are settled (installed, failed, or not to be installed): run
        the hooks for it, unless identity.json says they already ran cleanly for it, or they
        were asked for already.  While a run is going on, the latest wish waits for it."""
        run = Run.for_identity(identity)
        if run is None or run == self._wanted:
            return
        self._wanted = run
        try:
            hooks, error = find_hooks(self.directory)
        except Exception as exc:  # a bug: run them; the worker says what goes wrong
            hooks, error = [], f"{type(exc).__name__}: {exc}"
        if error is None and run.done_in(identity.get("role_hooks"), hooks):
            LOG.debug("Role hooks already ran for role '%s' (since %s)", run.role, run.role_since)
            self._pending = None
            return
        self._pending = run

    @property
    def busy(self) -> bool:
        return self._thread is not None or self._pending is not None

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker (tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self, run: Run) -> None:
        try:
            summary = run_all(run, self.directory, self.identity_path, self.runner, self.timeout)
        except BaseException as exc:  # never a dead agent; recorded, so a restart runs them again
            LOG.error("Role hooks raised %s (a bug)", type(exc).__name__, exc_info=True)
            summary = dict(run.fields(), results={},
                           error=f"internal error: {type(exc).__name__}: {exc}"[:400])
        self._outcome.append(summary)

    def tick(self, now: float) -> tuple[float, dict | None]:
        fields = None
        if self._thread is not None:
            if self._thread.is_alive():
                return now + timing.ROLE_HOOK_POLL, None
            self._thread = None
            summary = self._outcome.pop() if self._outcome else None
            self._outcome.clear()
            if summary is not None:
                summary["ran_at"] = format_ts_seconds(self.clock())
                fields = {"role_hooks": summary}
        if self._pending is None:
            return float("inf"), fields
        run, self._pending = self._pending, None
        thread = threading.Thread(target=self._work, args=(run,), name="role-hooks", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # no thread now: try again shortly
            LOG.error("Cannot start the role hooks (%s); trying again", exc)
            self._pending = run
            return now + timing.ROLE_HOOK_POLL, fields
        self._thread = thread
        return now + timing.ROLE_HOOK_POLL, fields
