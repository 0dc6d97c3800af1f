"""The agent's state for machines: what `hive status --json` reports, what `hive status --wait`
blocks on and what install.sh decides on (rather than on the wording of log lines).

  joining       looking for the hive's members (or build-agent is starting)
  waiting       other nodes join first (one asks the hive at a time), or nobody advised this
                node and it asks again shortly
  asking        it asked the hive and collects the advice (to join, or to move: healing)
  provisioning  its identity is settled; the role's packages are being installed
  settled       its identity is settled and the role's packages are installed (or installing
                them is off: install_packages = false)
  failed        the role's packages could not be installed (the agent retries), or build-agent
                is not running

The agent writes ``agent-state.json`` in its state directory (Config.agent_state_path) (atomically, whenever the state or
its reason changes) with its pid; a reader checks that this pid is still the agent, so a file
left by an agent that stopped or restarted is not taken for the current state.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from . import state, timing
from .lifecycle import Phase
from .protocol import format_ts_seconds

LOG = logging.getLogger(__name__)

STATES = ("joining", "waiting", "asking", "provisioning", "settled", "failed")
FINAL = ("settled", "failed")  # what `hive status --wait` waits for
SKIPPED = "skipped:"  # provision_error when installing packages is off
UNIT = "build-agent.service"
RUNNING_UNIT_STATES = ("active", "activating", "reloading", "deactivating")


def describe(phase: Phase, identity: dict | None, advisors: int = 0, advised: int = 0
             ) -> tuple[str, str]:
    """(state, reason) of an agent in PHASE with IDENTITY (identity.json as the agent has it)."""
    role = identity.get("role") if identity else None
    if phase is Phase.WAIT:
        return "waiting", "other nodes join first (one node asks the hive at a time)"
    if phase is Phase.BACKOFF:
        return "waiting", ("nobody advised this node; it asks again shortly (is build-advisor "
                           "running on the members, with the same secret?)")
    if phase is Phase.ASK:
        return "asking", f"{advised} of {advisors} member(s) advised so far"
    if phase is Phase.MOVE:
        return "asking", (f"moving from '{role}': {advised} of {advisors} member(s) advised "
                          f"so far")
    if phase is not Phase.OPERATE or identity is None:
        return "joining", "looking for the hive's members"
    error = identity.get("provision_error")
    if identity.get("provisioned") is True:
        return "settled", f"role '{role}'"
    if isinstance(error, str) and error.startswith(SKIPPED):
        return "settled", f"role '{role}'; its packages are not installed ({error})"
    if error:
        return "failed", (f"role '{role}'; installing its packages failed: {error} (the agent "
                          f"tries again every {timing.PROVISION_RETRY / 60:.0f} minutes)")
    packages = identity.get("packages") or []
    return "provisioning", f"role '{role}'; installing {', '.join(packages) or 'nothing'}"


class StateFile:
    """The agent's side: writes the state when it (or its reason) changes."""

    def __init__(self, path: str, clock: Callable[[], float], pid: int | None = None) -> None:
        self.path = path
        self.clock = clock
        self.pid = os.getpid() if pid is None else pid
        self.current: tuple[str, str] | None = None
        self.since = ""

    def update(self, phase: Phase, identity: dict | None, advisors: int = 0, advised: int = 0
               ) -> None:
        described = describe(phase, identity, advisors, advised)
        if described == self.current:
            return
        if self.current is None or described[0] != self.current[0]:
            self.since = format_ts_seconds(self.clock())
        data = {"state": described[0], "reason": described[1], "since": self.since,
                "identified": phase in (Phase.OPERATE, Phase.MOVE) and identity is not None,
                "role": identity.get("role") if identity else None, "pid": self.pid}
        try:
            state.write_json_atomic(self.path, data)
        except OSError as exc:
            LOG.error("Cannot write %s: %s", self.path, exc)
            return
        self.current = described


# --- the readers' side (hive status) -----------------------------------------------------------

def pid_is_agent(pid) -> bool:
    """Is PID a running build-agent (python3 -m build_agent)?"""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(argv[i] == b"-m" and argv[i + 1] == b"build_agent" for i in range(len(argv) - 1))


def unit_state() -> str | None:
    """`systemctl is-active build-agent` where systemd runs, else None."""
    import shutil  # lazy (both): only `hive` commands ask, never a daemon
    import subprocess
    if not os.path.isdir("/run/systemd/system") or shutil.which("systemctl") is None:
        return None
    try:
        result = subprocess.run(["systemctl", "is-active", UNIT], capture_output=True, text=True,
                                timeout=timing.SYSTEMCTL_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def current(path: str, is_agent: Callable[[object], bool] = pid_is_agent,
            unit: Callable[[], str | None] = unit_state) -> dict:
    """The agent's state as it is now: its file if the agent that wrote it still runs; else
    'joining' while systemd starts it, or 'failed'."""
    try:
        data = state.read_json(path)
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and data.get("state") in STATES and is_agent(data.get("pid")):
        return {key: data.get(key) for key in ("state", "reason", "since", "identified", "role")}
    running = unit()
    if running in RUNNING_UNIT_STATES:
        return {"state": "joining", "reason": f"build-agent is starting ({running})",
                "since": None, "identified": False, "role": None}
    why = (f"build-agent is {running}: see 'systemctl status build-agent' and "
           f"'journalctl -u build-agent -p warning'") if running else "build-agent is not running"
    return {"state": "failed", "reason": why, "since": None, "identified": False, "role": None}
