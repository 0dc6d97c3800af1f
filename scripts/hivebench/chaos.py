"""Chaos runs, the pure part: a seeded schedule of kills and returns, the moves an ideal hive
would make for the same events, and the moves a real hive made, read from its agents' logs.

No I/O and no clock here (times are passed in), so scripts/hive-chaos and the unit tests share
one definition of every figure the chaos run reports.

Events (``Event.kind``):
- ``kill``: SIGKILL both daemons of a live host (a crash or a power cut: no goodbye);
- ``start``: start a killed host again; it comes back with its old identity.json;
- ``restart``: SIGTERM a live host (it says goodbye) and start it again at once.

The minimum against which moves are reported (``IdealHive``): the same events, in the same
order, replayed through ``build_agent.plan`` on a hive that heals completely between two events
(detection, grace and cool-down take no time, no datagram is lost): after every event, every
move of ``plan.compute`` (desired roles from ``plan.replay`` with the policy's suggest_role) is
applied until the plan is calm.  A real hive with a grace period may make fewer (a host that is
back before its absence was noticed costs nothing), never more unless it moved someone the plan
did not need.  ``lower_bound`` is the hard floor: the number of final live members whose final
role must differ from the role they joined with.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from build_agent import plan

KINDS = ("kill", "start", "restart")
# How likely each kind of event is, among the kinds possible at that moment.
DEFAULT_WEIGHTS = {"kill": 0.45, "start": 0.45, "restart": 0.10}


@dataclass(frozen=True)
class Event:
    at: float   # seconds after the chaos started
    kind: str   # one of KINDS
    host: int   # the lab's host number

    def to_json(self) -> dict:
        return {"at": round(self.at, 3), "kind": self.kind, "host": self.host}


def schedule(seed: int, hosts: Sequence[int], duration: float, max_down: int,
             gap: tuple[float, float] = (2.0, 6.0), weights: dict | None = None) -> list[Event]:
    """A random but reproducible list of events for ``duration`` seconds.

    Between two events ``gap`` seconds pass (uniform); at most ``max_down`` hosts are down at
    once and at least two stay up; a ``start`` brings back a host killed earlier.  The same
    seed and arguments always give the same list."""
    if gap[0] <= 0 or gap[1] < gap[0]:
        raise ValueError(f"gap must be 0 < min <= max, got {gap}")
    if max_down < 0 or max_down > len(hosts) - 2:
        raise ValueError(f"max_down must be 0..{len(hosts) - 2} for {len(hosts)} hosts "
                         f"(two stay up), got {max_down}")
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    rng = random.Random(seed)
    down: list[int] = []
    events: list[Event] = []
    t = rng.uniform(*gap)
    while round(t, 3) < duration:
        up = [h for h in hosts if h not in down]
        possible = {}
        if len(down) < max_down and len(up) > 2 and weights.get("kill", 0) > 0:
            possible["kill"] = weights["kill"]
        if down and weights.get("start", 0) > 0:
            possible["start"] = weights["start"]
        if up and weights.get("restart", 0) > 0:
            possible["restart"] = weights["restart"]
        if not possible:
            break
        kinds = sorted(possible)
        kind = rng.choices(kinds, [possible[k] for k in kinds])[0]
        if kind == "start":
            host = rng.choice(sorted(down))
            down.remove(host)
        else:
            host = rng.choice(up)
            if kind == "kill":
                down.append(host)
        events.append(Event(round(t, 3), kind, host))
        t += rng.uniform(*gap)
    return events


def down_after(events: Iterable[Event]) -> list[int]:
    """Hosts that are down once ``events`` have happened (in the order they were killed)."""
    down: list[int] = []
    for ev in events:
        if ev.kind == "kill":
            down.append(ev.host)
        elif ev.kind == "start" and ev.host in down:
            down.remove(ev.host)
    return down


# --- what the hive wants --------------------------------------------------------------------------
Suggest = Callable[[dict, dict], dict]


def table_counts(members: Sequence[dict], suggest: Suggest) -> dict[str, int]:
    """The role counts the policy wants for these live members (dicts with node_id, hostname,
    role and joined_at): the default policy's one-after-another table, founder only if the
    founder is among them.  Roles with a count of 0 are left out."""
    founders = sum(1 for m in members if m.get("role") == plan.FOUNDER)
    wanted = plan.normalize(plan.replay(list(members), suggest), len(members), founders)
    return {r: n for r, n in sorted(wanted.items()) if n > 0}


def role_counts(roles: Iterable[str | None]) -> dict[str, int]:
    return dict(sorted(Counter(r if r else "(none)" for r in roles).items()))


def lower_bound(initial: dict, final: dict, wanted: dict[str, int]) -> int:
    """The fewest moves any healer needs: how many of the final live members must end with a
    role other than the one they joined with.  ``initial``: host -> role it joined with, for
    the final live members; ``wanted``: the table's counts for them."""
    have = Counter(initial[h] for h in final)
    return sum(max(0, n - have.get(r, 0)) for r, n in wanted.items())


# --- the ideal hive ---------------------------------------------------------------------------------
@dataclass
class IdealMember:
    host: int
    node_id: str
    hostname: str
    role: str
    joined_at: float
    member_since: float = 0.0
    role_since: float = 0.0

    def view(self) -> dict:
        return {"node_id": self.node_id, "hostname": self.hostname, "role": self.role,
                "joined_at": self.joined_at, "member_since": self.member_since,
                "role_since": self.role_since, "ip": "", "capabilities": {}}


@dataclass
class IdealHive:
    """The hive as build_agent.plan would keep it if it healed completely after every event."""
    suggest: Suggest
    members: dict[int, IdealMember] = field(default_factory=dict)
    alive: set[int] = field(default_factory=set)
    moves: list[dict] = field(default_factory=list)
    max_rounds: int = 8  # plans per event until calm (one is enough for plan.compute's rules)
    offset: float = 0.0  # event times are after every initial join (joined at 0, 1, 2, ...)

    @classmethod
    def from_joined(cls, joined: Sequence[tuple[int, str, str, str]], suggest: Suggest
                    ) -> "IdealHive":
        """``joined``: (host, node_id, hostname, role) in join order, as the real lab joined."""
        hive = cls(suggest, offset=float(len(joined)))
        for order, (host, node_id, hostname, role) in enumerate(joined):
            # joined one after another: the later, the younger (as the real hosts' start times)
            hive.members[host] = IdealMember(host, node_id, hostname, role, float(order),
                                             float(order), float(order))
            hive.alive.add(host)
        return hive

    def roles(self) -> dict[int, str]:
        return {h: self.members[h].role for h in sorted(self.alive)}

    def wanted(self) -> dict[str, int]:
        return table_counts([self.members[h].view() for h in self.alive], self.suggest)

    def apply(self, event: Event, when: float) -> list[dict]:
        """One event ``when`` seconds after the chaos started, then heal until the plan is
        calm; returns the moves it took."""
        now = self.offset + when
        if event.kind == "kill":
            self.alive.discard(event.host)
        elif event.kind in ("start", "restart"):
            self.alive.add(event.host)
            self.members[event.host].member_since = now  # it came back
        else:
            raise ValueError(f"unknown event kind {event.kind!r}")
        return self.heal(now)

    def heal(self, now: float) -> list[dict]:
        made = []
        for _ in range(self.max_rounds):
            views = [self.members[h].view() for h in self.alive]
            desired = plan.replay(views, self.suggest)
            result = plan.compute(plan.members_from_view(views), desired, now, cooldown=0.0)
            if result.calm:
                break
            by_id = {self.members[h].node_id: self.members[h] for h in self.alive}
            for move in result.moves:
                member = by_id[move.node_id]
                member.role = move.to_role
                member.member_since = member.role_since = now
                made.append({"at": round(now - self.offset, 3), "host": member.host, "from": move.from_role,
                             "to": move.to_role})
        self.moves.extend(made)
        return made


def ideal_moves(joined: Sequence[tuple[int, str, str, str]], events: Sequence[tuple[float, Event]],
                suggest: Suggest) -> IdealHive:
    """Replay ``events`` ((when, event) in the order they happened) on an ideal hive."""
    hive = IdealHive.from_joined(joined, suggest)
    for when, event in events:
        hive.apply(event, when)
    return hive


# --- moves read from a real agent's log ----------------------------------------------------------
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) [A-Z]+ (.*)$")
ASK = re.compile(r"Asking peers for a new role \(was '([^']*)'\)")
CONSENSUS = re.compile(r"Consensus: I am a '([^']*)'")
# A move that gave nothing: the agent stays in its role and the need waits another grace.
GAVE_NOTHING = re.compile(r"The hive advised me to stay|No advice received for the move|"
                          r"is moving too; giving way")
AGENT_START = re.compile(r"^build-agent \S+ on ")
ROLE_CHECK = re.compile(r"Role check: the hive needs a '([^']*)' \((\d+) of (\d+)\); (\S+) moves")


@dataclass
class LogMoves:
    moves: list[dict] = field(default_factory=list)        # asked and decided: from, to, at
    unfinished: list[dict] = field(default_factory=list)   # asked, no consensus (yet)
    gave_nothing: list[dict] = field(default_factory=list)  # asked, then stayed (no move)
    role_checks: int = 0                                   # "Role check:" lines (any node)
    tracebacks: list[str] = field(default_factory=list)    # first line after each "Traceback"


def moves_from_log(text: str) -> LogMoves:
    """The moves one agent's log shows: 'Asking peers for a new role (was X)...' followed by
    'Consensus: I am a Y'.  A join's consensus (no 'new role' ask before it) is not a move, nor
    is an ask that ended with the agent staying (advised to stay, no advice, giving way to a
    rival mover), nor one cut short by the agent's restart."""
    out = LogMoves()
    pending: dict | None = None
    lines = text.splitlines()
    for n, line in enumerate(lines):
        match = LOG_LINE.match(line)
        stamp, message = (match.group(1), match.group(2)) if match else ("", line)
        if "Traceback (most recent call last)" in line:
            tail = [x.strip() for x in lines[n + 1:n + 40] if x and not x.startswith(" ")]
            out.tracebacks.append(tail[0][:200] if tail else line.strip()[:200])
            continue
        if ROLE_CHECK.search(message):
            out.role_checks += 1
            continue
        ask = ASK.search(message)
        if ask:
            if pending is not None:
                out.unfinished.append(pending)
            pending = {"from": ask.group(1), "asked_at": stamp}
            continue
        if AGENT_START.match(message) and pending is not None:
            out.unfinished.append(pending)  # the agent started again in the middle of a move
            pending = None
            continue
        if pending is not None and GAVE_NOTHING.search(message):
            out.gave_nothing.append({**pending, "at": stamp, "why": message.strip()[:120]})
            pending = None
            continue
        decided = CONSENSUS.search(message)
        if decided and pending is not None:
            out.moves.append({**pending, "to": decided.group(1), "at": stamp})
            pending = None
    if pending is not None:
        out.unfinished.append(pending)
    return out


# --- deaths the agents declared, and which of them were false ----------------------------------
DEAD = re.compile(r"Peer (\S+) \([^)]*\) is dead")


def log_epoch(stamp: str) -> float | None:
    """A log line's 'YYYY-MM-DD HH:MM:SS,mmm' (local time, as the daemons log without
    journald) as seconds since the epoch."""
    try:
        day, ms = stamp.split(",")
        return time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    except (ValueError, OverflowError):
        return None


def deaths_from_log(text: str) -> list[tuple[float, str]]:
    """(when, hostname) of every 'Peer X (...) is dead' line."""
    out = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        dead = DEAD.search(match.group(2))
        when = log_epoch(match.group(1)) if dead else None
        if dead and when is not None:
            out.append((when, dead.group(1)))
    return out


def down_windows(events: Iterable[tuple[float, Event]], names: dict[int, str], heartbeat: float,
                 end: float) -> dict[str, list[tuple[float, float]]]:
    """When each host may rightly be declared dead, from (wall time, event) pairs: from a kill
    until 3 heartbeats (+1 s) after it was started again, and for a graceful restart (whose
    goodbye may be lost) from the stop until 3 heartbeats + 10 s after."""
    windows: dict[str, list[tuple[float, float]]] = {}
    killed: dict[int, float] = {}
    late = 3 * heartbeat + 1.0
    for wall, ev in events:
        if ev.kind == "kill":
            killed[ev.host] = wall
        elif ev.kind == "start" and ev.host in killed:
            windows.setdefault(names[ev.host], []).append((killed.pop(ev.host), wall + late))
        elif ev.kind == "restart":
            windows.setdefault(names[ev.host], []).append((wall, wall + late + 9.0))
    for host, since in killed.items():
        windows.setdefault(names[host], []).append((since, end + late))
    return windows


def false_deaths(deaths: Iterable[tuple[float, str]],
                 windows: dict[str, list[tuple[float, float]]]) -> list[tuple[float, str]]:
    """The deaths declared while the host was up (outside its down windows): heartbeats lost
    or late, not a crash."""
    return [(t, name) for t, name in deaths
            if not any(a <= t <= b for a, b in windows.get(name, []))]


def need_lines(text: str) -> list[tuple[float, str, str]]:
    """(when, role needed, mover's hostname) of every 'Role check:' line of one agent's log."""
    out = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        check = ROLE_CHECK.search(match.group(2)) if match else None
        when = log_epoch(match.group(1)) if check else None
        if check and when is not None:
            out.append((when, check.group(1), check.group(4)))
    return out


def plan_agreement(moves: Iterable[dict], needs: dict[str, list[tuple[float, str, str]]],
                   window: float) -> list[dict]:
    """For each logged move (host, to, asked_at), how many nodes' logs named that host as the
    mover for that role in the ``window`` s before it asked: every live node, when the hive's
    views agreed; few, when one node acted on a view of its own."""
    out = []
    for move in moves:
        asked = log_epoch(move["asked_at"])
        if asked is None:
            continue
        nodes = sorted(node for node, lines in needs.items()
                       if any(asked - window <= t <= asked + 0.5 and role == move["to"]
                              and mover == move["host"] for t, role, mover in lines))
        out.append({"host": move["host"], "to": move["to"], "asked_at": move["asked_at"],
                    "nodes_naming_it": len(nodes)})
    return out
