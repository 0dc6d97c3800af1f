"""Build work across the hive: the controller's queue and a worker's runs, as state machines.

The controller (a member whose role is ``controller``, with ``[tasks] enabled = true``) keeps a
queue of tasks submitted through its local control socket (`hive task ...`).  It places each one
on a live worker of the requested role (or capability): fewest running tasks per slot first, then
least load per core.  Workers are members with ``[tasks] enabled`` whose STATUS ``capacity`` says
``task_slots``.

Delivery, per attempt of a task (attempts are numbered 1, 2, ...):

    controller                               worker
    TASK id,attempt,argv   ---->             runs it (at most once per attempt), ACK accepted
                           <----  ACK        (or busy / refused with the reason)
    (TASK probe every TASK_PROBE_INTERVAL;   ACK running / finished / unknown)
                           <----  RESULT     outcome, rc, duration, the output's last lines
    ACK                    ---->

Every message is sent again (a new message: new ts, same task id and attempt) until the other
side acknowledges it; both sides de-duplicate on (task id, attempt), never on signatures.  A
worker that leaves the membership while it holds an attempt is probed a few more times, then
the attempt is ``lost`` and the task re-queued, up to its ``retries``, preferably elsewhere.
The first result of any attempt finishes the task; an attempt still out then is cancelled.

Nothing here touches a socket: ``handle``/``tick`` return the messages to send (``Out``) and
``now`` is the steady clock.  Files, all written atomically under STATE_DIR/tasks/ (mode 0700):
``queue/ID.json`` the controller's tasks, ``runs/ID-N.json`` a worker's attempts (what ran, the
result until acknowledged: a restarted agent neither runs an attempt again nor forgets a
result), ``out/ID-N.log`` the output of an attempt, kept on the worker (`hive task logs`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from . import protocol, state, timing
from .capabilities import on_path
from .config import Config, TasksConfig
from .protocol import Message, TASK_ID_RE, format_ts_seconds, is_valid_role

LOG = logging.getLogger(__name__)

# Task states: queued -> running -> done | failed | lost | cancelled.
QUEUED, RUNNING, DONE, FAILED, LOST, CANCELLED = (
    "queued", "running", "done", "failed", "lost", "cancelled")
FINISHED = (DONE, FAILED, LOST, CANCELLED)
# Attempt states on the controller: sent (not yet acknowledged), running, then ended (it has a
# result), lost, busy (the worker had no free slot) or refused.
IN_FLIGHT = ("sent", "running")

KEEP_FINISHED = 1000  # finished tasks a controller remembers (oldest forgotten first)
KEEP_RUNS = 1000  # attempts (and their output) a worker keeps
KEEP_RUNS_SECONDS = 7 * 86400.0  # ... and for at most this long
RESULT_GIVE_UP = 86400.0  # a worker stops sending a RESULT nobody acknowledges after this
LOG_CHUNK = 4096  # bytes of output per LOGDATA (base64: 5,464 characters)
TAIL_CHARS = 4096  # RESULT output: at most this many characters ...
TAIL_JSON = 5000  # ... taking at most this many bytes in the datagram (JSON escapes included)
ERROR_CHARS = 300
CAPABILITY_RE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


class TaskError(Exception):
    """A request that cannot be done: the message is one line saying why (and what to do)."""


@dataclass(frozen=True)
class Out:
    """A message to send: kind, destination address, kind-specific fields."""
    kind: str
    ip: str
    fields: dict


def new_task_id() -> str:
    return os.urandom(8).hex()


def command_text(argv: list[str]) -> str:
    return shlex.join(argv)


def _short(text: str, limit: int = ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _wall_text(value: float | None) -> str | None:
    return format_ts_seconds(value) if value is not None else None


def fits_datagram(kind: str, fields_: dict, hostname: str) -> bool:
    """Would a message of this kind with these fields fit a datagram, whoever sends it?"""
    payload = protocol.make_payload(kind, "x" * 64, hostname, "255.255.255.255", 0.0,
                                    **dict(fields_))
    try:
        protocol.encode(payload, b"size-check-secret")
    except protocol.ProtocolError:
        return False
    return True


def tail_text(data: bytes) -> str:
    """The last lines of an output that fit a RESULT (TAIL_CHARS, TAIL_JSON bytes escaped)."""
    text = data.decode("utf-8", errors="replace")
    cut = len(text) > TAIL_CHARS
    text = text[-TAIL_CHARS:]
    while text and len(json.dumps(text)) > TAIL_JSON:
        text = text[len(text) // 4:]
        cut = True
    if cut and "\n" in text[:-1]:
        text = text[text.index("\n") + 1:]  # whole lines only
    return text


# --- files --------------------------------------------------------------------------------------

def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _write(path: Path, data: dict) -> None:
    state.write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", mode=0o600)


def _read_records(directory: Path, what: str) -> Iterable[tuple[Path, dict]]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = directory / name
        try:
            data = state.read_json(path)
        except (OSError, ValueError) as exc:
            LOG.error("Ignoring unreadable %s %s: %s", what, path, exc)
            continue
        if isinstance(data, dict):
            yield path, data


# --- the controller -------------------------------------------------------------------------------

@dataclass
class Attempt:
    n: int
    worker: str  # node id
    hostname: str
    ip: str
    state: str = "sent"
    sent_at: float = 0.0  # wall clock
    acked_at: float | None = None
    ended_at: float | None = None
    cancel: bool = False  # a CANCEL is to be sent (until its RESULT comes)
    error: str | None = None
    result: dict | None = None


@dataclass
class Task:
    id: str
    argv: list
    repo: str | None
    role: str | None
    capability: str | None
    timeout: float
    retries: int
    submitted_at: float  # wall clock
    state: str = QUEUED
    attempts: list = field(default_factory=list)
    result: dict | None = None  # of the attempt that finished it
    error: str | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    avoid: list = field(default_factory=list)  # workers on which an attempt was lost

    @classmethod
    def from_json(cls, data: dict) -> "Task":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        attempt_keys = {f.name for f in fields(Attempt)}
        values["attempts"] = [Attempt(**{k: v for k, v in a.items() if k in attempt_keys})
                              for a in data.get("attempts") or []]
        task = cls(**values)
        if not isinstance(task.id, str) or not TASK_ID_RE.match(task.id) \
                or not isinstance(task.argv, list) or not task.argv:
            raise ValueError("not a task")
        return task

    def attempt(self, n: Any) -> Attempt | None:
        for a in self.attempts:
            if a.n == n:
                return a
        return None

    @property
    def current(self) -> Attempt | None:
        """The attempt that finished it, else the newest one that was not refused as busy."""
        if self.result is not None:
            return self.attempt(self.result.get("attempt"))
        for a in reversed(self.attempts):
            if a.state != "busy":
                return a
        return None

    @property
    def lost_count(self) -> int:
        return sum(1 for a in self.attempts if a.state == "lost")

    def summary(self, wall: float) -> dict:
        """What `hive task list/show` prints (JSON)."""
        current = self.current
        return {
            "id": self.id, "argv": list(self.argv), "command": command_text(self.argv),
            "repo": self.repo, "role": self.role, "capability": self.capability,
            "state": self.state, "timeout": self.timeout, "retries": self.retries,
            "worker": current.hostname if current else None,
            "attempt": current.n if current else None,
            "submitted_at": _wall_text(self.submitted_at),
            "finished_at": _wall_text(self.finished_at),
            "age": round(max(0.0, wall - self.submitted_at), 1),
            "error": self.error, "result": self.result,
            "attempts": [{"n": a.n, "worker": a.hostname, "state": a.state,
                          "sent_at": _wall_text(a.sent_at), "ended_at": _wall_text(a.ended_at),
                          "error": a.error,
                          "outcome": (a.result or {}).get("outcome")}
                         for a in self.attempts],
        }


class TaskStore:
    """The controller's tasks on disk: one file per task (queue/ID.json), written atomically."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    def load(self) -> dict[str, Task]:
        tasks = []
        for path, data in _read_records(self.dir, "task file"):
            try:
                tasks.append(Task.from_json(data))
            except (TypeError, ValueError) as exc:
                LOG.error("Ignoring task file %s: %s", path, exc)
        tasks.sort(key=lambda t: (t.submitted_at, t.id))
        return {t.id: t for t in tasks}

    def save(self, task: Task) -> None:
        _write(_ensure_dir(self.dir) / f"{task.id}.json", asdict(task))

    def remove(self, task_id: str) -> None:
        try:
            os.unlink(self.dir / f"{task_id}.json")
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class WorkerInfo:
    """A member that runs tasks, as placement sees it."""
    node_id: str
    hostname: str
    ip: str
    role: str
    capabilities: dict
    slots: int
    load: float  # 1-minute load average per core


def worker_info(member) -> WorkerInfo | None:
    """A membership Member that says it runs tasks (capacity.task_slots), or None."""
    capacity = member.capacity if isinstance(member.capacity, dict) else {}
    slots = capacity.get("task_slots")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        return None
    load = member.load[0] if isinstance(member.load, list) and member.load else member.load
    cores = (member.capabilities or {}).get("cpu_cores") or 1
    try:
        per_core = float(load) / max(1, int(cores)) if load is not None else 0.0
    except (TypeError, ValueError):
        per_core = 0.0
    return WorkerInfo(member.node_id, member.hostname, member.ip, member.role,
                      dict(member.capabilities or {}), slots, per_core)


@dataclass
class _Timer:
    """When to send a TASK/probe/CANCEL of one attempt again, and how many went unanswered."""
    next: float
    wait: float = timing.TASK_RETRY_FIRST
    unanswered: int = 0
    suspect: bool = False  # its worker left the membership


class Controller:
    """The queue: submit, place, send, collect results; every change saved before it counts."""

    def __init__(self, store: TaskStore, hostname: str, clock: Callable[[], float] = time.time,
                 settle: float = 30.0) -> None:
        self.store = store
        self.hostname = hostname
        self.clock = clock
        self.settle = settle  # after a start, absent workers are not suspected for this long
        self.tasks: dict[str, Task] = store.load()
        self.timers: dict[tuple[str, int], _Timer] = {}
        self.busy_until: dict[str, float] = {}
        self.started: float | None = None
        self._role_note = ""
        if self.tasks:
            counts: dict[str, int] = {}
            for task in self.tasks.values():
                counts[task.state] = counts.get(task.state, 0) + 1
            LOG.info("Task queue loaded: %s", ", ".join(f"{n} {s}" for s, n in counts.items()))

    # --- queries --------------------------------------------------------------------------------
    def queue_depth(self) -> int:
        return sum(1 for t in self.tasks.values() if t.state == QUEUED)

    def find(self, key: str) -> Task:
        """A task by id or unique id prefix (at least 4 characters)."""
        if not isinstance(key, str) or not key:
            raise TaskError("give a task id (hive task list shows them)")
        if key in self.tasks:
            return self.tasks[key]
        matches = [t for t in self.tasks.values() if t.id.startswith(key)] if len(key) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise TaskError(f"task id '{key}' is ambiguous ({len(matches)} tasks): give more of it")
        raise TaskError(f"no task '{key}' on this controller (hive task list shows them)")

    def running_on(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.tasks.values():
            for a in task.attempts:
                if a.state in IN_FLIGHT:
                    counts[a.worker] = counts.get(a.worker, 0) + 1
        return counts

    # --- submitting -----------------------------------------------------------------------------
    def submit(self, argv: Any, repo: Any = None, role: Any = None, capability: Any = None,
               timeout: Any = None, retries: Any = None, members: Iterable = (),
               defaults: TasksConfig = TasksConfig()) -> Task:
        """Check a request and queue it (saved before this returns); TaskError says what is wrong."""
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv) \
                or not argv[0]:
            raise TaskError("empty command: give it after --, e.g. "
                            "hive task run --role builder -- make test")
        if any("\0" in a for a in argv):
            raise TaskError("the command contains a NUL byte")
        if repo is not None and (not isinstance(repo, str) or not repo or repo.startswith("-")):
            raise TaskError("--repo must be a git URL or path (not starting with '-')")
        if role is not None and not is_valid_role(role):
            raise TaskError(f"'{role}' is not a role name (lowercase letters, digits, '.', '_', "
                            f"'-')")
        if capability is not None and (not isinstance(capability, str) or not capability
                                       or not set(capability) <= CAPABILITY_RE_CHARS
                                       or len(capability) > 32):
            raise TaskError(f"'{capability}' is not a capability name (e.g. has_gpu)")
        timeout = defaults.timeout if timeout is None else timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 1 <= timeout <= timing.TASK_MAX_TIMEOUT:
            raise TaskError(f"--timeout must be from 1 to {timing.TASK_MAX_TIMEOUT:.0f} seconds")
        retries = defaults.retries if retries is None else retries
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise TaskError("--retries must be from 0 to 10")
        task = Task(new_task_id(), list(argv), repo, role, capability, float(timeout), retries,
                    self.clock())
        probe = self._task_fields(task, Attempt(1000, "x" * 64, "", "", "sent"))
        if not fits_datagram("TASK", probe, self.hostname):
            size = len(json.dumps(probe["argv"])) + len(repo or "")
            raise TaskError(f"the command and repo ({size} bytes) do not fit in one hive "
                            f"datagram ({protocol.MAX_DATAGRAM} bytes with its header): put the "
                            f"steps in a script in the repo and run that")
        self._check_workers(task, list(members))
        self.tasks[task.id] = task
        self.store.save(task)
        LOG.info("Task %s queued (%s%s): %s", task.id, self._target(task),
                 f", repo {repo}" if repo else "", _short(command_text(task.argv), 200))
        return task

    @staticmethod
    def _target(task: Task) -> str:
        parts = []
        if task.role:
            parts.append(f"role {task.role}")
        if task.capability:
            parts.append(f"capability {task.capability}")
        return " and ".join(parts) or "any worker"

    @staticmethod
    def _matches(task: Task, role: str, capabilities: dict) -> bool:
        return (task.role is None or role == task.role) and \
            (task.capability is None or bool((capabilities or {}).get(task.capability)))

    def _check_workers(self, task: Task, members: list) -> None:
        """Refuse a task that no member could ever run, with what to do."""
        matching = [m for m in members if self._matches(task, m.role, m.capabilities)]
        if not matching:
            roles = sorted({m.role for m in members})
            if task.role and not any(m.role == task.role for m in members):
                raise TaskError(f"no member of the hive has role '{task.role}' "
                                f"(roles now: {', '.join(roles) or 'none'})")
            raise TaskError(f"no member of the hive matches {self._target(task)}")
        if not any(worker_info(m) for m in matching):
            names = ", ".join(sorted(m.hostname for m in matching)[:5])
            raise TaskError(f"no member with {self._target(task)} runs tasks ({names}): set "
                            f"[tasks] enabled = true (and roles) in their hive.toml and restart "
                            f"build-agent there")

    # --- placing ------------------------------------------------------------------------------
    def choose(self, task: Task, workers: list[WorkerInfo], now: float,
               running: dict[str, int] | None = None) -> WorkerInfo | None:
        """The worker for a task: matching, with a free slot, not busy; fewest running tasks per
        slot, then least load per core; a worker where it was lost only if no other fits."""
        running = self.running_on() if running is None else running
        fit = [w for w in workers if self._matches(task, w.role, w.capabilities)
               and running.get(w.node_id, 0) < w.slots
               and self.busy_until.get(w.node_id, float("-inf")) <= now]
        if not fit:
            return None
        fresh = [w for w in fit if w.node_id not in task.avoid]
        pool = fresh or fit
        return min(pool, key=lambda w: (running.get(w.node_id, 0) / w.slots, round(w.load, 2),
                                         w.hostname, w.node_id))

    def _dispatch(self, workers: list[WorkerInfo], now: float) -> None:
        running = self.running_on()
        for task in list(self.tasks.values()):
            if task.state != QUEUED:
                continue
            worker = self.choose(task, workers, now, running)
            if worker is None:
                continue
            n = max((a.n for a in task.attempts), default=0) + 1
            if n > 1000:
                self._finish(task, FAILED, error="gave up after 1000 attempts")
                continue
            attempt = Attempt(n, worker.node_id, worker.hostname, worker.ip, "sent",
                              sent_at=self.clock())
            task.attempts.append(attempt)
            task.state = RUNNING
            self.store.save(task)
            running[worker.node_id] = running.get(worker.node_id, 0) + 1
            self.timers[(task.id, n)] = _Timer(now)
            LOG.info("Task %s attempt %d goes to %s (%s)", task.id, n, worker.hostname,
                     worker.role)

    def _task_fields(self, task: Task, attempt: Attempt, probe: bool = False) -> dict:
        fields_: dict[str, Any] = {"id": task.id, "to": attempt.worker, "attempt": attempt.n}
        if probe:
            fields_["probe"] = True
            return fields_
        fields_.update(argv=list(task.argv), role=task.role, timeout=task.timeout)
        if task.repo:
            fields_["repo"] = task.repo
        return fields_

    # --- time ---------------------------------------------------------------------------------
    def tick(self, now: float, members: dict, is_controller: bool) -> tuple[list[Out], float]:
        """Send what is due, notice lost attempts, place queued tasks (only while this node is
        the controller); return the messages and the next deadline."""
        if self.started is None:
            self.started = now
        outs: list[Out] = []
        deadline = float("inf")
        if is_controller:
            self._role_note = ""
            if self.queue_depth():  # (the workers: a walk of the hive, only when needed)
                self._dispatch([w for w in (worker_info(m) for m in members.values())
                                if w is not None], now)
            busy = [t for t in self.busy_until.values() if t > now]
            if busy and self.queue_depth():
                deadline = min(busy)
        elif self.queue_depth() and not self._role_note:
            self._role_note = "noted"
            LOG.warning("This node is no longer the controller: %d queued task(s) wait here "
                        "until it is again (cancel them, or submit them on the controller)",
                        self.queue_depth())
        settling = now - self.started < self.settle
        for task in list(self.tasks.values()):
            for a in task.attempts:
                if a.state not in IN_FLIGHT:
                    continue
                timer = self.timers.setdefault((task.id, a.n), _Timer(now))
                member = members.get(a.worker)
                if member is not None:
                    a.ip = member.ip
                absent = member is None and not settling
                if absent and not timer.suspect:
                    timer.suspect, timer.unanswered, timer.next = True, 0, now
                    LOG.info("Task %s: %s left the hive while holding attempt %d; asking it "
                             "directly", task.id, a.hostname, a.n)
                elif not absent and timer.suspect:
                    timer.suspect = False
                if now < timer.next:
                    deadline = min(deadline, timer.next)
                    continue
                limit = timing.TASK_SUSPECT_PROBES if timer.suspect else (
                    timing.TASK_SEND_LIMIT if a.state == "sent" else timing.TASK_PROBE_LIMIT)
                if timer.unanswered >= limit:
                    self._lose(task, a, f"{a.hostname} stopped answering"
                               + (" (it left the hive)" if timer.suspect else ""))
                    deadline = now  # place it again at once
                    continue
                if a.cancel:
                    outs.append(Out("CANCEL", a.ip, {"to": a.worker, "task_id": task.id,
                                                     "attempt": a.n}))
                else:
                    outs.append(Out("TASK", a.ip,
                                    self._task_fields(task, a, probe=a.state == "running")))
                timer.unanswered += 1
                if timer.suspect:
                    timer.next = now + timing.TASK_RETRY_FIRST
                else:
                    timer.next = now + timer.wait
                    timer.wait = min(timer.wait * 2, timing.TASK_RETRY_MAX)
                deadline = min(deadline, timer.next)
        return outs, deadline

    def _lose(self, task: Task, attempt: Attempt, why: str) -> None:
        attempt.state, attempt.ended_at, attempt.error = "lost", self.clock(), why
        self.timers.pop((task.id, attempt.n), None)
        if task.state in FINISHED:
            self.store.save(task)
            return
        if any(a.state in IN_FLIGHT for a in task.attempts):
            self.store.save(task)  # another attempt is still out
            return
        if task.cancel_requested:
            self._finish(task, CANCELLED, error=f"cancelled ({why})")
            return
        if task.lost_count <= task.retries:
            task.state = QUEUED
            if attempt.worker not in task.avoid:
                task.avoid.append(attempt.worker)
            self.store.save(task)
            LOG.warning("Task %s: attempt %d on %s is lost (%s); re-queued (retry %d of %d)",
                        task.id, attempt.n, attempt.hostname, why, task.lost_count, task.retries)
            return
        self._finish(task, LOST, error=f"attempt {attempt.n} on {attempt.hostname} was lost "
                                       f"({why}), no retries left ({task.retries})")

    def _finish(self, task: Task, state_name: str, result: dict | None = None,
                error: str | None = None) -> None:
        task.state, task.result, task.error = state_name, result, error
        task.finished_at = self.clock()
        for a in task.attempts:
            if a.state in IN_FLIGHT and not a.cancel:
                a.cancel = True  # the task is over: stop any other attempt still out
                timer = self.timers.get((task.id, a.n))
                if timer is not None:
                    timer.next, timer.wait, timer.unanswered = float("-inf"), \
                        timing.TASK_RETRY_FIRST, 0
        self.store.save(task)
        LOG.info("Task %s %s", task.id, describe(task))
        self._prune()

    def _prune(self) -> None:
        finished = [t for t in self.tasks.values() if t.state in FINISHED]
        if len(finished) <= KEEP_FINISHED:
            return
        finished.sort(key=lambda t: (t.finished_at or 0, t.id))
        for task in finished[:len(finished) - KEEP_FINISHED]:
            if any(a.state in IN_FLIGHT for a in task.attempts):
                continue
            del self.tasks[task.id]
            self.store.remove(task.id)

    # --- incoming -----------------------------------------------------------------------------
    def _attempt_of(self, message: Message, task_id: Any, n: Any) -> tuple[Task, Attempt] | None:
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        attempt = task.attempt(n) if task is not None else None
        if attempt is None or attempt.worker != message.node_id:
            LOG.warning("Ignoring %s from %s (%s) for task %s attempt %s: not a task this "
                        "controller sent it", message.kind, message.hostname,
                        message.primary_ip, task_id, n)
            return None
        return task, attempt

    def on_ack(self, message: Message, now: float) -> None:
        found = self._attempt_of(message, message.get("task_id"), message.get("attempt"))
        if found is None:
            return
        task, a = found
        timer = self.timers.get((task.id, a.n))
        if timer is not None:
            timer.unanswered, timer.suspect, timer.wait = 0, False, timing.TASK_RETRY_FIRST
        said, what = message.get("state"), message.get("of")
        if a.state not in IN_FLIGHT:
            return
        if what == "CANCEL":
            if said == "unknown":  # it never had it: nothing runs there
                a.state, a.ended_at, a.error = "cancelled", self.clock(), "cancelled before it ran"
                self.timers.pop((task.id, a.n), None)
                self._after_attempt(task, a)
            elif timer is not None:
                timer.next = now + timing.TASK_RETRY_MAX  # stopping: its RESULT comes next
            return
        if said in ("accepted", "running", "finished", "stopping"):
            if a.state == "sent":
                a.state, a.acked_at = "running", self.clock()
                self.store.save(task)
            if timer is not None and not a.cancel:
                timer.next = now + timing.TASK_PROBE_INTERVAL
        elif said == "busy":
            a.state, a.ended_at, a.error = "busy", self.clock(), "no free slot"
            self.timers.pop((task.id, a.n), None)
            self.busy_until[a.worker] = now + timing.TASK_BUSY_BACKOFF
            if task.state == RUNNING and not any(x.state in IN_FLIGHT for x in task.attempts):
                task.state = QUEUED
            self.store.save(task)
        elif said in ("refused", "cancelled"):
            a.state, a.ended_at = "refused", self.clock()
            a.error = _short(str(message.get("error") or f"refused by {a.hostname}"))
            self.timers.pop((task.id, a.n), None)
            if task.state in FINISHED:
                self.store.save(task)
            else:
                self._finish(task, FAILED, error=f"{a.hostname} refused it: {a.error}")
        elif said == "unknown":
            self._lose(task, a, f"{a.hostname} does not know it (its agent lost its state?)")

    def _after_attempt(self, task: Task, attempt: Attempt) -> None:
        """An attempt ended without a result: finish a cancelled task, else save."""
        if task.cancel_requested and task.state not in FINISHED \
                and not any(a.state in IN_FLIGHT for a in task.attempts):
            self._finish(task, CANCELLED, error="cancelled")
        else:
            self.store.save(task)

    def on_result(self, message: Message, now: float) -> list[Out]:
        found = self._attempt_of(message, message.get("task_id"), message.get("attempt"))
        if found is None:
            return []
        task, a = found
        ack = Out("ACK", message.primary_ip, {"to": message.node_id, "of": "RESULT",
                                              "task_id": task.id, "attempt": a.n, "state": "ok"})
        if a.result is not None:
            return [ack]  # a retransmission: acknowledge it again
        outcome = message.get("outcome") or ("exited" if message.get("rc") is not None
                                             else "error")
        result = {"attempt": a.n, "worker": a.hostname, "worker_id": a.worker,
                  "outcome": outcome, "rc": message.get("rc"), "signal": message.get("signal"),
                  "duration": message.get("duration"), "error": message.get("error"),
                  "output": message.get("output") or "",
                  "finished_at": format_ts_seconds(self.clock())}
        a.result, a.ended_at = result, self.clock()
        self.timers.pop((task.id, a.n), None)
        if outcome == "lost":
            a.result = None
            self._lose(task, a, message.get("error") or f"{a.hostname} lost it")
            a.result = result  # (after _lose: it is how a retransmission is recognised)
            self.store.save(task)
            return [ack]
        a.state = "ended"
        if task.state in FINISHED:
            self.store.save(task)  # a late result of an attempt the task no longer needs
        elif outcome == "cancelled" or (task.cancel_requested and outcome != "exited"):
            self._finish(task, CANCELLED, result, error="cancelled")
        else:
            done = outcome == "exited" and result["rc"] == 0
            self._finish(task, DONE if done else FAILED, result, error=result_error(result))
        return [ack]  # saved above, so a restart cannot lose what we acknowledge

    # --- cancelling ---------------------------------------------------------------------------
    def cancel(self, task: Task, now: float) -> str:
        if task.state in FINISHED:
            raise TaskError(f"task {task.id} has already finished ({task.state})")
        task.cancel_requested = True
        if task.state == QUEUED and not any(a.state in IN_FLIGHT for a in task.attempts):
            self._finish(task, CANCELLED, error="cancelled while queued")
            return "cancelled"
        for a in task.attempts:
            if a.state in IN_FLIGHT:
                a.cancel = True
                timer = self.timers.setdefault((task.id, a.n), _Timer(now))
                timer.next, timer.wait, timer.unanswered = now, timing.TASK_RETRY_FIRST, 0
        self.store.save(task)
        LOG.info("Task %s: cancelling", task.id)
        return "cancelling"


def result_error(result: dict) -> str | None:
    outcome = result.get("outcome")
    if outcome == "exited":
        return None if result.get("rc") == 0 else f"exit status {result.get('rc')}"
    if outcome == "timeout":
        return result.get("error") or "killed at its time limit"
    if outcome == "signal":
        return result.get("error") or f"killed by signal {result.get('signal')}"
    return result.get("error") or outcome


def exit_status(task: Task) -> int:
    """What `hive task run/wait` exits with: the task's exit status; 128+N if a signal N killed
    it; 124 at its time limit; 125 if it could not run; 75 if lost; 130 if cancelled."""
    result = task.result or {}
    if task.state == LOST:
        return 75
    if task.state == CANCELLED:
        return 130
    outcome = result.get("outcome")
    if outcome == "exited" and isinstance(result.get("rc"), int):
        return result["rc"] & 0xFF if result["rc"] >= 0 else 125
    if outcome == "timeout":
        return 124
    if outcome == "signal" and isinstance(result.get("signal"), int):
        return 128 + result["signal"]
    return 125


def describe(task: Task) -> str:
    """'on build3 (attempt 1): exit 0 in 41.2 s' and the like."""
    result = task.result or {}
    where = f"on {result.get('worker')} (attempt {result.get('attempt')})" if result else ""
    duration = result.get("duration")
    took = f" in {duration:.1f} s" if isinstance(duration, (int, float)) else ""
    if task.state == DONE:
        return f"{where}: exit 0{took}".strip()
    if result.get("outcome") == "exited":
        return f"{where}: exit {result.get('rc')}{took}".strip()
    if task.state == CANCELLED:
        return f"{where}: cancelled{took}".strip() if where else "cancelled"
    what = task.error or result_error(result) or task.state
    return f"{where}: {task.state}: {what}{took}".strip() if where else f"{task.state}: {what}"


# --- the worker -------------------------------------------------------------------------------

@dataclass
class Run:
    """One attempt on this worker, from its TASK to its acknowledged RESULT."""
    task_id: str
    attempt: int
    controller: str  # node id
    controller_host: str
    controller_ip: str
    argv: list
    repo: str | None = None
    timeout: float = timing.TASK_DEFAULT_TIMEOUT
    state: str = "running"  # running, ended, refused (with ``answer``), cancelled (before it came)
    answer: str = "accepted"  # what an ACK of its TASK says
    received_at: float = 0.0  # wall clock
    started_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None
    rc: int | None = None
    signal: int | None = None
    duration: float | None = None
    error: str | None = None
    tail: str = ""
    acked: bool = False
    handle: dict | None = None  # how to find what runs it (a leftover after a restart)

    @property
    def key(self) -> str:
        return f"{self.task_id}-{self.attempt}"

    @classmethod
    def from_json(cls, data: dict) -> "Run":
        known = {f.name for f in fields(cls)}
        run = cls(**{k: v for k, v in data.items() if k in known})
        if not isinstance(run.task_id, str) or not TASK_ID_RE.match(run.task_id) \
                or isinstance(run.attempt, bool) or not isinstance(run.attempt, int):
            raise ValueError("not a run")
        return run


class Worker:
    """Runs the attempts a controller sends, at most once each, and reports them until heard."""

    def __init__(self, cfg: TasksConfig, directory: Path | str, runner, hostname: str,
                 clock: Callable[[], float] = time.time, slots: int | None = None,
                 has_git: Callable[[], bool] = lambda: on_path("git")) -> None:
        self.cfg = cfg
        self.dir = Path(directory)
        self.runs_dir = self.dir / "runs"
        self.out_dir = self.dir / "out"
        self.runner = runner
        self.hostname = hostname
        self.clock = clock
        self.slots = slots or cfg.slots or os.cpu_count() or 1
        self.has_git = has_git
        self.runs: dict[tuple[str, int], Run] = {}
        self.handles: dict[tuple[str, int], Any] = {}  # the runner's handles of running attempts
        self.timers: dict[tuple[str, int], _Timer] = {}
        self._refusals: dict[str, float] = {}  # log lines said recently (no flood of the same)
        self._next_prune = float("-inf")

    # --- state --------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Load the runs of a previous life: an attempt that was running then is over (lost);
        whatever still runs of it is stopped; unacknowledged results are sent again."""
        if not self.cfg.enabled:
            return
        for path, data in _read_records(self.runs_dir, "run file"):
            try:
                run = Run.from_json(data)
            except (TypeError, ValueError) as exc:
                LOG.error("Ignoring run file %s: %s", path, exc)
                continue
            self.runs[(run.task_id, run.attempt)] = run
            if run.state == "running":
                try:
                    self.runner.abandon(run.handle or {}, run.key)
                except Exception as exc:  # never keep the agent from starting
                    LOG.error("Could not stop what was left of task %s: %s", run.key, exc)
                self._end(run, "lost", error=f"build-agent on {self.hostname} restarted while it "
                                             f"ran")
        self._prune()

    def running_count(self) -> int:
        return sum(1 for r in self.runs.values() if r.state == "running")

    def accepts(self, role: str | None) -> str | None:
        """None if this node runs tasks in this role, else why not (one line)."""
        if not self.cfg.enabled:
            return (f"tasks are not enabled on {self.hostname} ([tasks] enabled = true in its "
                    f"hive.toml)")
        if role is None:
            return f"{self.hostname} has no role yet"
        if self.cfg.roles and role not in self.cfg.roles:
            return (f"{self.hostname} runs tasks only as {', '.join(self.cfg.roles)}, and it is "
                    f"'{role}' now")
        return None

    def capacity(self, role: str | None) -> dict:
        """What STATUS capacity says of tasks (nothing unless this node runs them now)."""
        if self.accepts(role) is not None:
            return {}
        return {"task_slots": self.slots, "tasks_running": self.running_count()}

    def output_path(self, run: Run) -> Path:
        return self.out_dir / f"{run.key}.log"

    def _save(self, run: Run) -> None:
        _write(_ensure_dir(self.runs_dir) / f"{run.key}.json", asdict(run))

    # --- incoming -----------------------------------------------------------------------------
    def _say(self, key: str, level: int, text: str, *args) -> None:
        """A log line, at most once a minute for the same key."""
        wall = time.monotonic()
        if self._refusals.get(key, float("-inf")) + 60.0 <= wall:
            self._refusals[key] = wall
            LOG.log(level, text, *args)

    def on_task(self, message: Message, source_ip: str, sender, node_id: str, role: str | None,
                now: float) -> list[Out]:
        task_id, n = message.get("id"), message.get("attempt")
        if message.get("to") != node_id:
            self._say(f"to:{message.node_id}", logging.WARNING,
                      "Ignoring TASK %s from %s (%s): it is not addressed to this node",
                      task_id, message.hostname, message.primary_ip)
            return []
        if not isinstance(task_id, str) or not TASK_ID_RE.match(task_id) or n is None:
            self._say(f"bad:{message.node_id}", logging.WARNING,
                      "Refusing TASK from %s: its id %r or attempt %r is not one this agent "
                      "accepts", message.hostname, task_id, n)
            return []

        def ack(state_name: str, error: str | None = None) -> list[Out]:
            fields_ = {"to": message.node_id, "of": "TASK", "task_id": task_id, "attempt": n,
                       "state": state_name}
            if error:
                fields_["error"] = _short(error)
            return [Out("ACK", source_ip, fields_)]

        # What this node already has of the attempt: said to the controller that sent it,
        # whatever its place in our view now (a lossy moment must not make it look lost).
        key = (task_id, n)
        run = self.runs.get(key)
        if run is not None:
            if run.controller != message.node_id:
                return []
            if run.state == "ended":
                self._resend_result(run, now)
                return ack("finished")
            if run.state == "running":
                return ack("running")
            return ack(run.answer, run.error)
        if message.get("probe"):
            return ack("unknown")  # never starts anything
        if sender is None or sender.role != "controller":
            self._say(f"role:{message.node_id}", logging.WARNING,
                      "Refusing TASK %s from %s (%s): only a member whose role is 'controller' "
                      "may send tasks, and it is %s", task_id, message.hostname,
                      message.primary_ip,
                      f"'{sender.role}'" if sender is not None else "not a member of the hive")
            return []
        why = self.accepts(role)
        # Not running tasks here (now): the controller's view is behind (a role changed, tasks
        # turned off); it puts the task back in its queue for another worker ("busy").
        answer = "busy" if why is not None else "refused"
        argv = message.get("argv")
        if why is None and argv is None and message.get("command"):
            try:
                argv = shlex.split(message.get("command"))  # the seed's form: still no shell
            except ValueError:
                argv = None
        if why is None and not argv:
            why = "the TASK has no command"
        if why is None and message.get("repo") and not self.has_git():
            why = f"git is not installed on {self.hostname} (apt-get install git) to clone the repo"
        run = Run(task_id, n, message.node_id, message.hostname, source_ip, list(argv or []),
                  message.get("repo"), float(message.get("timeout") or self.cfg.timeout),
                  received_at=self.clock())
        if why is not None:
            self._say(f"refuse:{why}", logging.WARNING, "Refusing task %s from %s: %s",
                      task_id, message.hostname, why)
            run.state, run.answer, run.error = "refused", answer, why
            if self.cfg.enabled:
                self._save(run)
                self.runs[key] = run
            return ack(answer, why)
        if self.running_count() >= self.slots:
            run.state, run.answer, run.error = "refused", "busy", "no free slot"
            self._save(run)
            self.runs[key] = run
            return ack("busy")
        self._start(run, now)
        return ack("accepted")

    def _start(self, run: Run, now: float) -> None:
        run.started_at = self.clock()
        _ensure_dir(self.out_dir)
        LOG.info("Running task %s attempt %d for %s: %s", run.task_id, run.attempt,
                 run.controller_host, _short(command_text(run.argv), 200))
        # On disk before it starts: a restart in between must not run it a second time.
        self.runs[(run.task_id, run.attempt)] = run
        self._save(run)
        try:
            handle = self.runner.start(run, self.output_path(run), now)
        except Exception as exc:  # could not start it: that is its result
            LOG.error("Task %s attempt %d could not start: %s", run.task_id, run.attempt, exc)
            self._end(run, "error", error=f"could not start on {self.hostname}: {exc}")
            return
        run.handle = handle.record()
        self.handles[(run.task_id, run.attempt)] = handle
        self._save(run)

    def _end(self, run: Run, outcome: str, rc: int | None = None, signal: int | None = None,
             error: str | None = None, now: float | None = None) -> None:
        run.state, run.outcome, run.rc, run.signal = "ended", outcome, rc, signal
        run.error = _short(error) if error else None
        run.ended_at = self.clock()
        if run.started_at is not None:
            run.duration = round(max(0.0, run.ended_at - run.started_at), 3)
        run.tail = self._tail(run)
        self._save(run)
        self.timers[(run.task_id, run.attempt)] = _Timer(float("-inf"))
        self.handles.pop((run.task_id, run.attempt), None)

    def _tail(self, run: Run) -> str:
        try:
            with open(self.output_path(run), "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 4 * TAIL_CHARS))
                return tail_text(handle.read())
        except OSError:
            return ""

    def _resend_result(self, run: Run, now: float) -> None:
        """The controller asks about an attempt that ended: send its RESULT again (even one it
        acknowledged: it may have been restored from an older copy of its files)."""
        run.acked = False  # saved as true again with the next ACK
        timer = self.timers.setdefault((run.task_id, run.attempt), _Timer(now))
        timer.next = min(timer.next, now)

    def on_ack(self, message: Message) -> None:
        run = self.runs.get((message.get("task_id"), message.get("attempt")))
        if run is None or run.controller != message.node_id or message.get("of") != "RESULT":
            return
        self.timers.pop((run.task_id, run.attempt), None)
        if not run.acked:
            run.acked = True
            self._save(run)

    def on_cancel(self, message: Message, source_ip: str, sender, node_id: str,
                  now: float) -> list[Out]:
        if message.get("to") != node_id:
            return []
        task_id, n = message.get("task_id"), message.get("attempt")
        key = (task_id, n)
        run = self.runs.get(key)

        def ack(state_name: str) -> list[Out]:
            return [Out("ACK", source_ip, {"to": message.node_id, "of": "CANCEL",
                                           "task_id": task_id, "attempt": n,
                                           "state": state_name})]
        if run is None:
            if sender is None or sender.role != "controller" or not self.cfg.enabled:
                return []
            # Not here (yet): remember it, so a TASK arriving after this never runs.
            run = Run(task_id, n, message.node_id, message.hostname, source_ip, [],
                      state="cancelled", answer="cancelled", error="cancelled before it came",
                      received_at=self.clock())
            self.runs[key] = run
            self._save(run)
            return ack("unknown")
        if run.controller != message.node_id:
            return []
        if run.state == "running":
            handle = self.handles.get(key)
            if handle is not None and not getattr(handle, "cancelled", False):
                LOG.info("Cancelling task %s attempt %d (asked by %s)", task_id, n,
                         message.hostname)
                self.runner.cancel(handle, now)
            return ack("stopping")
        if run.state == "ended":
            self._resend_result(run, now)
            return ack("finished")
        return ack("unknown")

    def on_logs(self, message: Message, source_ip: str, node_id: str) -> list[Out]:
        if message.get("to") != node_id:
            return []
        task_id, n, offset = message.get("task_id"), message.get("attempt"), message.get("offset")
        run = self.runs.get((task_id, n))
        fields_: dict[str, Any] = {"to": message.node_id, "task_id": task_id, "attempt": n,
                                   "offset": offset, "request": message.get("request")}
        if run is None or run.controller != message.node_id:
            fields_["error"] = f"{self.hostname} has no output of task {task_id} attempt {n}"
            return [Out("LOGDATA", source_ip, fields_)]
        try:
            with open(self.output_path(run), "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(offset)
                data = handle.read(LOG_CHUNK)
        except FileNotFoundError:
            size, data = 0, b""
            if run.state == "running" or run.started_at is not None:
                fields_["error"] = f"the output of task {task_id} is gone from {self.hostname}"
        except OSError as exc:
            fields_["error"] = f"cannot read the output on {self.hostname}: {exc.strerror}"
            return [Out("LOGDATA", source_ip, fields_)]
        fields_.update(data=base64.b64encode(data).decode("ascii"), size=size,
                       done=run.state != "running" and offset + len(data) >= size)
        return [Out("LOGDATA", source_ip, fields_)]

    # --- time ---------------------------------------------------------------------------------
    def tick(self, now: float, members: dict) -> tuple[list[Out], float]:
        outs: list[Out] = []
        deadline = float("inf")
        if now >= self._next_prune:
            self._next_prune = now + 3600.0
            self._prune()
        for key, handle in list(self.handles.items()):
            run = self.runs.get(key)
            if run is None:
                self.handles.pop(key, None)
                continue
            try:
                ended = self.runner.poll(handle, now)
            except Exception as exc:  # a bug in the runner: the attempt ends with it
                LOG.exception("Watching task %s failed", run.key)
                ended = ("error", None, None, f"internal error on {self.hostname}: {exc}")
            if ended is None:
                deadline = min(deadline, self.runner.next_check(handle, now))
                continue
            outcome, rc, signal, error = ended
            self._end(run, outcome, rc, signal, error, now)
            LOG.info("Task %s attempt %d: %s", run.task_id, run.attempt, _run_text(run))
        for key, timer in list(self.timers.items()):
            run = self.runs.get(key)
            if run is None or run.state != "ended" or run.acked:
                self.timers.pop(key, None)
                continue
            if now < timer.next:
                deadline = min(deadline, timer.next)
                continue
            if run.ended_at is not None and self.clock() - run.ended_at > RESULT_GIVE_UP:
                LOG.warning("Giving up sending the result of task %s to %s: no answer for a day",
                            run.key, run.controller_host)
                self.timers.pop(key, None)
                continue
            member = members.get(run.controller)
            if member is not None:
                run.controller_ip = member.ip
            outs.append(Out("RESULT", run.controller_ip, self._result_fields(run)))
            timer.unanswered += 1
            timer.next = now + timer.wait
            timer.wait = min(timer.wait * 2, timing.TASK_RETRY_MAX)
            deadline = min(deadline, timer.next)
        return outs, deadline

    def _result_fields(self, run: Run) -> dict:
        fields_: dict[str, Any] = {"task_id": run.task_id, "attempt": run.attempt,
                                   "to": run.controller, "outcome": run.outcome}
        for name in ("rc", "signal", "duration", "error"):
            value = getattr(run, name)
            if value is not None:
                fields_[name] = value
        if run.rc is not None and not -1024 <= run.rc <= 1024:
            fields_["rc"] = max(-1024, min(1024, run.rc))
        if run.tail:
            fields_["output"] = run.tail
            if not fits_datagram("RESULT", fields_, self.hostname):
                fields_["output"] = run.tail[-1000:]
                if not fits_datagram("RESULT", fields_, self.hostname):
                    del fields_["output"]
        return fields_

    def _prune(self) -> None:
        """Forget the oldest finished attempts (and their output) beyond KEEP_RUNS or age."""
        wall = self.clock()
        done = sorted((r for r in self.runs.values()
                       if r.state != "running" and (r.acked or r.state != "ended")),
                      key=lambda r: (r.ended_at or r.received_at, r.key))
        excess = len(done) - KEEP_RUNS
        for index, run in enumerate(done):
            old = wall - (run.ended_at or run.received_at) > KEEP_RUNS_SECONDS
            if index >= excess and not old:
                break
            if wall - (run.ended_at or run.received_at) < timing.MAX_CLOCK_SKEW:
                continue  # a replay of its TASK would still be fresh: remember it
            self.runs.pop((run.task_id, run.attempt), None)
            for path in (self.runs_dir / f"{run.key}.json", self.output_path(run)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def _run_text(run: Run) -> str:
    took = f" in {run.duration:.1f} s" if run.duration is not None else ""
    if run.outcome == "exited":
        return f"exit {run.rc}{took}"
    return f"{run.outcome}{took}" + (f" ({run.error})" if run.error else "")


# --- the agent's part: one object per node -------------------------------------------------------

@dataclass
class _LogFetch:
    """`hive task logs`: one chunk asked of a worker, answered to the waiting client."""
    request: str
    task_id: str
    attempt: int
    worker: str
    hostname: str
    ip: str
    offset: int
    reply: Any
    next: float
    tries: int = 0


class TaskNode:
    """What the agent holds of tasks: this node's worker, its controller's queue (when [tasks]
    is enabled), and the answers to `hive task` requests on the control socket."""

    def __init__(self, config: Config, hostname: str, runner, clock: Callable[[], float] = time.time,
                 slots: int | None = None) -> None:
        self.config = config
        self.cfg = config.tasks
        self.clock = clock
        base = Path(config.state_dir) / "tasks"
        if self.cfg.enabled:
            _ensure_dir(base)
            os.chmod(base, 0o700)
        settle = timing.DEAD_AFTER_INTERVALS * config.heartbeat_interval + 1.0
        self.controller = Controller(TaskStore(base / "queue"), hostname, clock, settle) \
            if self.cfg.enabled else None
        self.worker = Worker(self.cfg, base, runner, hostname, clock, slots)
        self.waiters: list[tuple[str, Any]] = []
        self.fetches: dict[str, _LogFetch] = {}

    def start(self, now: float) -> None:
        self.worker.start(now)

    def capacity(self, role: str | None) -> dict:
        return self.worker.capacity(role)

    def queue_depth(self) -> int:
        return self.controller.queue_depth() if self.controller is not None else 0

    # --- the hive ---------------------------------------------------------------------------
    def handle(self, message: Message, source_ip: str, members: dict, node_id: str,
               role: str | None, now: float) -> list[Out]:
        kind = message.kind
        sender = members.get(message.node_id)
        if kind == "TASK":
            return self.worker.on_task(message, source_ip, sender, node_id, role, now)
        if kind == "CANCEL":
            return self.worker.on_cancel(message, source_ip, sender, node_id, now)
        if kind == "LOGS":
            return self.worker.on_logs(message, source_ip, node_id)
        if message.get("to") != node_id:
            return []
        if kind == "ACK":
            if message.get("of") == "RESULT":
                self.worker.on_ack(message)
            elif self.controller is not None:
                self.controller.on_ack(message, now)
            return []
        if kind == "RESULT" and self.controller is not None:
            outs = self.controller.on_result(message, now)
            self._answer_waiters()
            return outs
        if kind == "LOGDATA":
            self._on_logdata(message)
        return []

    def tick(self, now: float, members: dict, role: str | None) -> tuple[list[Out], float]:
        outs, deadline = self.worker.tick(now, members)
        if self.controller is not None:
            more, due = self.controller.tick(now, members, role == "controller")
            outs += more
            deadline = min(deadline, due)
            self._answer_waiters()
        for fetch in list(self.fetches.values()):
            if not fetch.reply.open:
                del self.fetches[fetch.request]
                continue
            if now < fetch.next:
                deadline = min(deadline, fetch.next)
                continue
            if fetch.tries >= timing.TASK_LOGS_TRIES:
                del self.fetches[fetch.request]
                fetch.reply.send({"error": f"no answer from {fetch.hostname} about the output of "
                                           f"task {fetch.task_id} (is it up? the output is kept "
                                           f"there under STATE_DIR/tasks/out/)"})
                continue
            member = members.get(fetch.worker)
            if member is not None:
                fetch.ip = member.ip
            outs.append(Out("LOGS", fetch.ip, {"to": fetch.worker, "task_id": fetch.task_id,
                                               "attempt": fetch.attempt, "offset": fetch.offset,
                                               "request": fetch.request}))
            fetch.tries += 1
            fetch.next = now + timing.TASK_LOGS_RETRY
            deadline = min(deadline, fetch.next)
        return outs, deadline

    def _on_logdata(self, message: Message) -> None:
        fetch = self.fetches.get(message.get("request"))
        if fetch is None or fetch.worker != message.node_id or \
                (message.get("task_id"), message.get("attempt"), message.get("offset")) != \
                (fetch.task_id, fetch.attempt, fetch.offset):
            return
        del self.fetches[fetch.request]
        if message.get("error"):
            fetch.reply.send({"error": message.get("error")})
            return
        fetch.reply.send({"data": message.get("data") or "", "offset": fetch.offset,
                          "size": message.get("size"), "done": bool(message.get("done")),
                          "worker": fetch.hostname, "attempt": fetch.attempt})

    def _answer_waiters(self) -> None:
        if not self.waiters or self.controller is None:
            return
        keep = []
        wall = self.clock()
        for task_id, reply in self.waiters:
            task = self.controller.tasks.get(task_id)
            if not reply.open:
                continue
            if task is None:
                reply.send({"error": f"task {task_id} is gone from this controller"})
            elif task.state in FINISHED:
                reply.send({"task": task.summary(wall), "finished": True,
                            "exit_status": exit_status(task), "text": describe(task)})
            else:
                keep.append((task_id, reply))
        self.waiters = keep

    # --- the control socket -----------------------------------------------------------------
    def control(self, request: dict, reply, members: dict, role: str | None,
                now: float) -> dict | None:
        """Answer one `hive task` request (or hold it: wait, logs)."""
        try:
            return self._control(request, reply, members, role, now)
        except TaskError as exc:
            return {"error": str(exc)}

    def _control(self, request: dict, reply, members: dict, role: str | None,
                 now: float) -> dict | None:
        op = request.get("op")
        if self.controller is None:
            raise TaskError("tasks are not enabled on this node: set [tasks] enabled = true in "
                            "its hive.toml and restart build-agent")
        controller = self.controller
        wall = self.clock()
        if op == "task.submit":
            if role != "controller":
                controllers = sorted(f"{m.hostname} ({m.ip})" for m in members.values()
                                     if m.role == "controller")
                raise TaskError(f"this node is '{role}', not a controller: submit tasks on "
                                f"{', '.join(controllers) or 'the controller'}")
            task = controller.submit(request.get("argv"), request.get("repo"),
                                     request.get("role"), request.get("capability"),
                                     request.get("timeout"), request.get("retries"),
                                     list(members.values()), self.cfg)
            return {"task": task.summary(wall)}
        if op == "task.list":
            return {"tasks": [t.summary(wall) for t in controller.tasks.values()],
                    "queue": controller.queue_depth()}
        task = controller.find(request.get("id"))
        if op == "task.show":
            return {"task": task.summary(wall), "text": describe(task),
                    "exit_status": exit_status(task) if task.state in FINISHED else None}
        if op == "task.cancel":
            return {"task": task.summary(wall), "cancel": controller.cancel(task, now)}
        if op == "task.wait":
            if task.state in FINISHED:
                return {"task": task.summary(wall), "finished": True,
                        "exit_status": exit_status(task), "text": describe(task)}
            wait = request.get("max")
            wait = timing.TASK_WAIT_MAX if not isinstance(wait, (int, float)) or \
                isinstance(wait, bool) else max(0.0, min(float(wait), timing.TASK_WAIT_MAX))
            reply.defer(now + wait, lambda: {"task": task.summary(self.clock()),
                                             "finished": False})
            self.waiters.append((task.id, reply))
            return None
        if op == "task.logs":
            return self._logs(task, request, reply, members, now)
        raise TaskError(f"unknown request '{op}'")

    def _logs(self, task: Task, request: dict, reply, members: dict, now: float) -> dict | None:
        wanted = request.get("attempt")
        if wanted is not None:
            attempt = task.attempt(wanted)
            if attempt is None:
                raise TaskError(f"task {task.id} has no attempt {wanted}")
        else:
            attempt = task.current
        if attempt is None or attempt.state in ("busy",) or \
                (attempt.state == "refused" and attempt.result is None):
            raise TaskError(f"task {task.id} has not run anywhere yet ({task.state})")
        offset = request.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise TaskError("bad offset")
        fetch = _LogFetch(os.urandom(6).hex(), task.id, attempt.n, attempt.worker,
                          attempt.hostname, attempt.ip, offset, reply, now)
        self.fetches[fetch.request] = fetch
        reply.defer(now + timing.TASK_LOGS_RETRY * (timing.TASK_LOGS_TRIES + 2),
                    lambda: {"error": f"no answer from {attempt.hostname}"})
        return None

    def close(self) -> None:
        for task_id, reply in self.waiters:
            if reply.open:
                reply.send({"error": "build-agent is stopping"})
        self.waiters = []
