"""The hive's state as Prometheus metrics, for node_exporter's textfile collector.

The agent keeps a few counters here (``Counters``: messages sent and received by kind, joins and
moves it saw or made); ``render`` turns them, the rejects by reason (the daemon's
``RejectCounter``) and a snapshot of the agent's view (``Snapshot``) into the Prometheus text
exposition format (version 0.0.4), a pure function of its arguments; ``Exporter`` writes the
text atomically, mode 0644 (node_exporter runs as its own user), only while the file's folder
exists: without node_exporter's textfile folder nothing is written and nothing is created.
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from . import state
from .protocol import KINDS

LOG = logging.getLogger(__name__)

DEFAULT_FILE = "/var/lib/prometheus/node-exporter/build_hive.prom"
# The agent's states (build_agent.readiness.STATES), repeated so this module stays light.
AGENT_STATES = ("joining", "waiting", "asking", "provisioning", "settled", "failed")


@dataclass
class Counters:
    """What the agent counts from its start (Prometheus sees a restart as a counter reset)."""
    sent: collections.Counter = field(default_factory=collections.Counter)      # kind -> n
    received: collections.Counter = field(default_factory=collections.Counter)  # kind -> n
    peer_joins: int = 0   # members that appeared in this node's view
    own_joins: int = 0    # identities this node settled on by joining (or founding)
    peer_moves: int = 0   # members seen changing role
    own_moves: int = 0    # role changes of this node (healing moves)


@dataclass
class Snapshot:
    """The agent's view at one moment (what ``render`` needs besides the counters)."""
    hostname: str
    node_id: str
    role: str | None
    role_since: float | None          # seconds since the epoch
    started: float                    # when this agent started (seconds since the epoch)
    agent_state: str                  # one of AGENT_STATES
    provisioned: bool | None          # None: no identity yet
    members: Iterable[tuple[str, str]] = ()   # (role, status) of every member, this node too
    joining: int = 0                  # nodes seen joining (no role yet)


def escape(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape(str(value))}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")


def render(now: float, snap: Snapshot, counters: Counters,
           rejected: Mapping[str, int]) -> str:
    """The metrics text at wall time ``now`` (seconds since the epoch)."""
    out = _Text()
    out.family("build_hive_node_info", "gauge",
               "This node's hostname and node id (always 1).",
               [({"hostname": snap.hostname, "node_id": snap.node_id}, 1)])
    members = collections.Counter(snap.members)
    out.family("build_hive_members", "gauge",
               "Members of the hive in this node's view (this node included), by role and "
               "status (active, or moving: asking the hive for a new role).",
               [({"role": role, "status": status}, n)
                for (role, status), n in sorted(members.items())])
    out.family("build_hive_joining_nodes", "gauge",
               "Nodes seen joining the hive (no role yet), this node not included.",
               [({}, snap.joining)])
    out.family("build_hive_role_info", "gauge",
               "This node's role (always 1; absent while it has none).",
               [({"role": snap.role}, 1)] if snap.role else [])
    if snap.role and snap.role_since is not None:
        out.family("build_hive_role_since_timestamp_seconds", "gauge",
                   "When this node took its current role (seconds since the epoch).",
                   [({}, snap.role_since)])
        out.family("build_hive_role_duration_seconds", "gauge",
                   "How long this node has held its current role.",
                   [({}, max(0.0, round(now - snap.role_since, 3)))])
    out.family("build_hive_agent_state", "gauge",
               "The agent's state (1 for the current one): joining, waiting, asking, "
               "provisioning (installing the role's packages), settled or failed.",
               [({"state": name}, 1 if name == snap.agent_state else 0)
                for name in AGENT_STATES])
    out.family("build_hive_provisioned", "gauge",
               "1 when the role's packages are installed (or installing them is off), else 0.",
               [({}, 1 if snap.provisioned else 0)])
    out.family("build_hive_agent_start_time_seconds", "gauge",
               "When this agent started (seconds since the epoch); counters start from 0 then.",
               [({}, round(snap.started, 3))])
    out.family("build_hive_peer_joins_total", "counter",
               "Members that appeared in this node's view (a newcomer settling, or a member "
               "heard again after it was gone).",
               [({}, counters.peer_joins)])
    out.family("build_hive_own_joins_total", "counter",
               "Identities this node settled on by joining the hive (or founding it).",
               [({}, counters.own_joins)])
    out.family("build_hive_peer_moves_total", "counter",
               "Role changes of other members seen by this node (healing moves).",
               [({}, counters.peer_moves)])
    out.family("build_hive_own_moves_total", "counter",
               "Role changes of this node (healing moves).",
               [({}, counters.own_moves)])
    kinds = list(KINDS) + sorted((set(counters.sent) | set(counters.received)) - set(KINDS))
    out.family("build_hive_messages_sent_total", "counter",
               "Signed datagrams this agent sent, by kind (a broadcast to several addresses "
               "counts once per address).",
               [({"kind": kind}, counters.sent.get(kind, 0)) for kind in kinds])
    out.family("build_hive_messages_received_total", "counter",
               "Verified datagrams this agent accepted from other nodes, by kind.",
               [({"kind": kind}, counters.received.get(kind, 0)) for kind in kinds])
    out.family("build_hive_messages_rejected_total", "counter",
               "Datagrams this agent dropped, by reason (bad signature, stale, replayed, "
               "not json, ...).",
               [({"reason": reason}, n) for reason, n in sorted(rejected.items())])
    return "\n".join(out.lines) + "\n"


class Exporter:
    """Writes the metrics file when it is due; never raises (the agent must not stop for it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._complained = ""

    @property
    def enabled(self) -> bool:
        """A path is set and its folder exists (node_exporter's textfile folder is there)."""
        return bool(self.path) and os.path.isdir(os.path.dirname(self.path))

    def write(self, text: str) -> bool:
        if not self.enabled:
            return False
        try:
            state.write_text_atomic(self.path, text, mode=0o644)
        except OSError as exc:
            why = f"{exc.strerror or exc}"
            if why != self._complained:  # said once per kind of failure
                self._complained = why
                LOG.warning("Cannot write the metrics file %s: %s", self.path, why)
            return False
        self._complained = ""
        return True
