"""Who is in the hive: established members (they have a role) and nodes still joining.

Pure logic fed with verified messages and ``now``, a reading of the steady (monotonic) clock, so
a wall-clock step (NTP at boot) neither kills members nor keeps dead ones; both daemons use it, so
the agent's
peers.json and the advisor's view come from one piece of code.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import timing
from .protocol import Message, format_ts, format_ts_seconds, parse_ts, ProtocolError

LOG = logging.getLogger(__name__)


@dataclass
class Member:
    node_id: str
    hostname: str
    ip: str
    role: str
    last_seen: float
    interval: float
    capabilities: dict = field(default_factory=dict)
    load: Any = None
    capacity: Any = None
    health: str = "ok"
    last_ts: float = 0.0  # the sender's ts on the newest message applied from it
    # What healing needs (wall-clock stamps from the member's messages; None if not said):
    joined_at: float | None = None   # when it first got an identity
    role_since: float | None = None  # when it took its current role
    started: float | None = None     # when its agent started (it came back to the hive)
    rebalance: bool = True           # False: it never moves
    state: str = "active"            # "moving" while it asks the hive for a new role
    state_at: float = 0.0            # steady time the state was last said
    request_id: str | None = None    # of its last re-ask (IDENTIFY)
    queue: int = 0                   # tasks queued on it (a controller's STATUS)
    probe: float = 0.0               # its probe interval (> 0: it answers PINGs; probe.py)
    incarnation: float = 0.0         # its newest incarnation: started, or its last refutation

    def deadline(self) -> float:
        """The heartbeat rule; a member that takes part in probing is judged by probes first
        and by a longer heartbeat backstop (timing.DEAD_AFTER_INTERVALS_PROBED)."""
        intervals = timing.DEAD_AFTER_INTERVALS_PROBED if self.probe > 0 \
            else timing.DEAD_AFTER_INTERVALS
        return self.last_seen + intervals * self.interval

    def settled(self) -> tuple:
        """What the agent reacts to (healing, tasks, probes): a message that leaves this unchanged
        (a member's routine STATUS: its load and last_seen aside) needs no tick of its own."""
        return (self.ip, self.role, self.state, self.capacity, self.health, self.queue,
                self.probe, self.interval, self.rebalance, self.capabilities)

    def is_moving(self, now: float) -> bool:
        """Announced a move that is not over, and not gone quiet about it (MOVE_TIMEOUT)."""
        return self.state == "moving" and now - self.state_at < timing.MOVE_TIMEOUT

    def to_json(self, wall_offset: float = 0.0) -> dict:
        """peers.json's entry; wall_offset turns the steady last_seen into wall time."""
        def stamp(value: float | None) -> str | None:
            return format_ts(value) if value is not None else None
        return {"node_id": self.node_id, "hostname": self.hostname, "ip": self.ip,
                "role": self.role, "status": "alive",
                "last_seen": format_ts_seconds(self.last_seen + wall_offset),
                "capabilities": self.capabilities, "load": self.load,
                "capacity": self.capacity, "health": self.health,
                "interval": self.interval, "joined_at": stamp(self.joined_at),
                "role_since": stamp(self.role_since), "started": stamp(self.started),
                "rebalance": self.rebalance, "state": self.state, "queue": self.queue,
                "probe": self.probe}

    def view(self, now: float) -> dict:
        """The member as policies and plans see it: see ``view_entry``."""
        return view_entry(self.node_id, self.hostname, self.ip, self.role, self.capabilities,
                          self.load, self.capacity, self.health, self.joined_at,
                          self.role_since, self.started, self.rebalance,
                          "moving" if self.is_moving(now) else "active", self.queue)


def view_entry(node_id: str, hostname: str, ip: str, role: str, capabilities: dict, load: Any,
               capacity: Any, health: str, joined_at: float | None, role_since: float | None,
               started: float | None, rebalance: bool, state: str, queue: int = 0) -> dict:
    """One member as policies and healing plans see it.  Times are seconds since the epoch, as
    the member stamped them (peers.json keeps them to the microsecond), so a plan made from the
    agent's memory and one made from peers.json (the advisor, `hive plan`) are the same plan.
    ``member_since`` is when it took its role or came back to the hive, the later; ``queue``
    is how many tasks wait in a controller's queue (0 elsewhere)."""
    since = [t for t in (role_since, started) if t is not None]
    return {"node_id": node_id, "hostname": hostname, "ip": ip, "role": role,
            "capabilities": dict(capabilities or {}), "load": load, "capacity": capacity,
            "health": health, "joined_at": joined_at, "role_since": role_since,
            "member_since": max(since, default=None), "rebalance": rebalance, "state": state,
            "queue": queue}


def view_from_peers(data: dict) -> dict | None:
    """The policy view ({"self", "peers", "members"}) from peers.json, or None if the file has
    no identified self (the node is joining).  The one source of the hive's view for the
    advisor and `hive plan`: what the agent knows."""
    def entry(raw: dict) -> dict:
        def stamp(name: str) -> float | None:
            try:
                return parse_ts(raw.get(name)) if raw.get(name) else None
            except ProtocolError:
                return None
        return view_entry(str(raw.get("node_id")), str(raw.get("hostname", "?")),
                          str(raw.get("ip") or raw.get("primary_ip") or "?"), raw["role"],
                          raw.get("capabilities") if isinstance(raw.get("capabilities"), dict)
                          else {}, raw.get("load"), raw.get("capacity"),
                          str(raw.get("health", "ok")), stamp("joined_at"), stamp("role_since"),
                          stamp("started"), raw.get("rebalance", True) is not False,
                          "moving" if raw.get("state") == "moving" else "active",
                          raw.get("queue") if isinstance(raw.get("queue"), int)
                          and not isinstance(raw.get("queue"), bool) else 0)
    me = data.get("self") if isinstance(data, dict) else None
    if not isinstance(me, dict) or not isinstance(me.get("role"), str):
        return None
    peers = [entry(p) for p in data.get("peers") or []
             if isinstance(p, dict) and isinstance(p.get("role"), str) and p.get("node_id")]
    mine = entry(me)
    return {"self": mine, "peers": peers, "members": [mine] + peers}


@dataclass
class Joiner:
    """A node that announced itself but has no identity yet."""
    node_id: str
    hostname: str
    ip: str
    joining_since: float
    last_heard: float
    asking_until: float = 0.0  # it broadcast IDENTIFY: it is asking the hive until then
    request_id: str | None = None  # of its last IDENTIFY
    backing_off: bool = False  # nobody could advise it: it pauses and holds nobody's turn
    capabilities: dict = field(default_factory=dict)  # as it said (advisors of a batch need it)
    welcomed: float | None = None  # the joining_since we answered its HELLO for (agent)
    pace: float = 1.0  # its keep-alive interval / JOINING_KEEPALIVE, as it stated (``keepalive``)

    @property
    def deadline(self) -> float:
        """When it is no longer waited for, unless heard again (see expired)."""
        return self.last_heard + timing.JOINING_PEER_TIMEOUT * self.pace

    def expired(self, now: float) -> bool:
        """Silent too long to be waited for (the deadline, compared as a span: no rounding of
        last_heard + timeout makes it a hair early)."""
        return now - self.last_heard >= timing.JOINING_PEER_TIMEOUT * self.pace

    @property
    def key(self) -> tuple[float, str]:
        return (self.joining_since, self.node_id)

    def to_json(self) -> dict:
        """peers.json's entry (``joiners``): what an advisor needs to advise it in a batch."""
        return {"node_id": self.node_id, "hostname": self.hostname, "ip": self.ip,
                "joining_since": format_ts(self.joining_since),
                "capabilities": self.capabilities}


def join_order_key(joining_since: float, node_id: str) -> tuple[float, str]:
    """Joining nodes take turns in this order (earliest start first, then lowest node id)."""
    return (joining_since, node_id)


def _role_of(message: Message) -> str | None:
    if message.kind == "HEARTBEAT":
        identity = message.get("identity") or {}
        return identity.get("role")
    return message.get("role")


class Membership:
    def __init__(self, default_interval: float) -> None:
        self.default_interval = default_interval
        self.members: dict[str, Member] = {}
        self.joiners: dict[str, Joiner] = {}
        # node_id -> (the ts of its goodbye, by its own clock, or None if it died; when it left).
        # Messages it sent before its goodbye are ignored; merge() does not bring it back.
        self.departed: dict[str, tuple[float | None, float]] = {}
        # When each member or joiner expires, without a walk of all of them per datagram
        # (the loop asks after every datagram): a heap of (deadline, key), key ("m"|"j",
        # node id), and per key the deadline of its one valid entry, never later than the
        # real one.  A heartbeat only moves a deadline later: nothing to do until the entry
        # comes up; then it is pushed again at the real deadline (see _due).
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._queued: dict[tuple[str, str], float] = {}
        # No departed entry is older than this (expire walks them only once one may be due).
        self._departed_oldest = float("inf")
        # No member can be moving once MOVE_TIMEOUT has passed since this (any_moving).
        self._moving_since = float("-inf")

    # --- updates: each returns True when the set of members or a role changed -----------------
    def observe(self, message: Message, source_ip: str, now: float) -> bool:
        kind = message.kind
        member = self.members.get(message.node_id)
        stale = member is not None and message.ts < member.last_ts
        if kind in ("STATUS", "HEARTBEAT") and message.get("state") == "leaving":
            if stale:
                return False  # a goodbye older than what it said since: not a goodbye now
            return self.remove(message.node_id, now, "left the hive", goodbye_ts=message.ts)
        if kind not in ("HELLO", "WELCOME", "IDENTIFY", "STATUS", "HEARTBEAT"):
            return False
        goodbye_ts = self.departed.get(message.node_id, (None, 0.0))[0]
        if goodbye_ts is not None and message.ts <= goodbye_ts:
            return False
        self.departed.pop(message.node_id, None)
        if stale:
            # Older than what we applied: e.g. a WELCOME it sent while joining, delivered (on
            # the unicast socket) after the STATUS announcing its role.  It must not demote
            # it, but it is verified and fresh (no replay): the sender is alive.
            member.last_seen = max(member.last_seen, now)
            return False
        role = _role_of(message) if kind != "IDENTIFY" or message.get("reask") else None
        if role:
            return self._upsert(message, source_ip, role, now)
        # No role: the sender is joining (or re-joining after an identity reset).
        changed = self.members.pop(message.node_id, None) is not None
        self._note_joiner(message, source_ip, now)
        return changed

    def _upsert(self, message: Message, source_ip: str, role: str, now: float) -> bool:
        self.joiners.pop(message.node_id, None)
        # A sender that states no interval is a reference-script node (HEARTBEAT about every
        # 32 s): judged by that cadence, not ours, so a mixed hive stays stable.
        member = self.members.get(message.node_id)
        interval = message.get("interval") or (member.interval if member is not None
                                                else timing.REFERENCE_INTERVAL)
        changed = member is None or member.role != role
        if member is None:
            member = Member(message.node_id, message.hostname, source_ip, role, now, interval)
            self.members[message.node_id] = member
            LOG.info("Peer %s (%s) is in the hive as '%s'", message.hostname, source_ip, role)
        elif member.role != role:
            LOG.info("Peer %s (%s) is now '%s' (was '%s')", message.hostname, source_ip, role,
                     member.role)
        member.hostname, member.ip, member.role = message.hostname, source_ip, role
        member.last_seen = now
        member.last_ts = message.ts
        member.interval = float(interval)
        if message.get("capabilities") is not None:
            member.capabilities = message.get("capabilities")
        if message.kind == "STATUS":
            member.load = message.get("load", member.load)
            member.capacity = message.get("capacity", member.capacity)
            member.health = message.get("health", member.health)
            member.queue = message.get("queue", 0)
        for name in ("joined_at", "role_since", "started"):
            if message.get(name):
                setattr(member, name, parse_ts(message.get(name)))
        if message.kind in ("HELLO", "WELCOME", "STATUS"):  # the kinds that say it (probe.py)
            member.probe = float(message.get("probe") or 0.0)
            for name in ("started", "incarnation"):
                if message.get(name):
                    member.incarnation = max(member.incarnation, parse_ts(message.get(name)))
        if message.get("rebalance") is not None:
            member.rebalance = message.get("rebalance")
        if message.kind == "IDENTIFY":
            member.request_id = message.get("request_id")
        state = "moving" if message.kind == "IDENTIFY" else message.get("state")
        if state in ("active", "moving") and (state != member.state or state == "moving"):
            changed |= state != member.state
            member.state, member.state_at = state, now
            if state == "moving":
                self._moving_since = max(self._moving_since, now)
        self._schedule(("m", member.node_id), member.deadline())
        return changed

    def _note_joiner(self, message: Message, source_ip: str, now: float) -> None:
        since_text = message.get("joining_since")
        try:
            since = parse_ts(since_text) if since_text else message.ts
        except ProtocolError:
            since = message.ts
        joiner = self.joiners.get(message.node_id)
        if joiner is None:
            joiner = Joiner(message.node_id, message.hostname, source_ip, since, now)
            self.joiners[message.node_id] = joiner
        else:
            joiner.last_heard = now
            if since_text:
                joiner.joining_since = since
        if message.kind == "STATUS":  # (its HELLO and IDENTIFY are followed by a keep-alive in 1 s)
            keepalive = message.get("keepalive")
            joiner.pace = max(1.0, keepalive / timing.JOINING_KEEPALIVE) if keepalive else 1.0
        self._schedule(("j", message.node_id), joiner.deadline)
        if isinstance(message.get("capabilities"), dict):
            joiner.capabilities = message.get("capabilities")
        state = message.get("state")
        joiner.backing_off = state == "backoff"
        if message.kind == "IDENTIFY":
            joiner.request_id = message.get("request_id")
        if message.kind == "IDENTIFY" or state == "asking":
            joiner.asking_until = now + timing.ADVICE_TIMEOUT
        elif message.kind == "HELLO" or state in ("joining", "backoff"):
            joiner.asking_until = 0.0  # discovering or waiting (it may have given way): not asking
        if message.kind == "IDENTIFY" and message.get("batch"):
            # A batched round (mass joins): the joiners it lists are asked for in the same
            # round, after the sender: they are asking too (nobody else asks meanwhile).
            for node_id in message.get("batch"):
                queued = self.joiners.get(node_id)
                if queued is not None:
                    queued.asking_until = now + timing.ADVICE_TIMEOUT
                    queued.request_id = message.get("request_id")

    def remove(self, node_id: str, now: float, why: str, goodbye_ts: float | None = None) -> bool:
        self.departed[node_id] = (goodbye_ts, now)
        self._departed_oldest = min(self._departed_oldest, now)
        self.joiners.pop(node_id, None)
        member = self.members.pop(node_id, None)
        if member is not None:
            LOG.info("Peer %s (%s) %s", member.hostname, member.ip, why)
            return True
        return False

    def declare_dead(self, node_id: str, incarnation: float, now: float, why: str,
                     fresh: float = 0.0) -> bool:
        """A member declared dead by probes (a DEAD, or our own prober): removed as a heartbeat
        death is, unless it takes no part in probing (a reference-script node, an older agent:
        never judged by probes) or it refuted meanwhile: we know a newer incarnation of it than
        the accuser did, heard within ``fresh`` seconds (the accuser's failed rounds; an older
        refutation does not contradict them)."""
        member = self.members.get(node_id)
        if member is None or member.probe <= 0:
            return False
        if member.incarnation > incarnation + 0.0005 and now - member.last_seen < fresh:
            return False
        return self.remove(node_id, now, why)

    def note_incarnation(self, node_id: str, incarnation: float) -> None:
        """A member's incarnation learned from its PONG (it refuted a suspicion)."""
        member = self.members.get(node_id)
        if member is not None:
            member.incarnation = max(member.incarnation, incarnation)

    def expire(self, now: float) -> bool:
        """Drop members that missed DEAD_AFTER_INTERVALS heartbeats and silent joiners.

        Costs O(1) while nothing is due (the loop calls it after every datagram): only the
        members and joiners whose deadline came are looked at (the heap, see _due)."""
        changed = False
        spared = []  # a joiner a float's rounding keeps a moment longer (its test below)
        while True:
            due = self._due()
            # (a microsecond early: a joiner's test is Joiner.expired)
            if due is None or now < due[0] - 1e-6:
                break
            heapq.heappop(self._heap)
            kind, node_id = key = due[1]
            del self._queued[key]
            if kind == "m":
                member = self.members[node_id]
                if now >= member.deadline():
                    changed |= self.remove(
                        node_id, now, f"is dead: no heartbeat for {now - member.last_seen:.1f}s")
                    continue
            elif self.joiners[node_id].expired(now):
                del self.joiners[node_id]
                continue
            spared.append((due[0], key))
        for deadline, key in spared:
            self._schedule(key, deadline)
        if now - self._departed_oldest > timing.MAX_CLOCK_SKEW:
            oldest = float("inf")
            for node_id, (_, when) in list(self.departed.items()):
                if now - when > timing.MAX_CLOCK_SKEW:
                    del self.departed[node_id]
                else:
                    oldest = min(oldest, when)
            self._departed_oldest = oldest
        return changed

    def next_deadline(self) -> float:
        """The earliest deadline of a member (its heartbeat rule) or a joiner (its silence)."""
        due = self._due()
        return due[0] if due is not None else float("inf")

    def any_moving(self, now: float) -> bool:
        """Is a member moving (Member.is_moving)?  No walk once every move announced is over
        (MOVE_TIMEOUT since the last): the healer asks at every tick."""
        if now - self._moving_since >= timing.MOVE_TIMEOUT:
            return False
        return any(m.is_moving(now) for m in self.members.values())

    # --- deadlines (a heap with lazy updates) -------------------------------------------------
    def _deadline_of(self, key: tuple[str, str]) -> float | None:
        kind, node_id = key
        if kind == "m":
            member = self.members.get(node_id)
            return member.deadline() if member is not None else None
        joiner = self.joiners.get(node_id)
        return joiner.deadline if joiner is not None else None

    def _schedule(self, key: tuple[str, str], deadline: float) -> None:
        """After a change that may bring ``key``'s deadline earlier (a new member or joiner,
        a shorter interval): O(1) unless it did.  A later deadline needs nothing here."""
        if deadline < self._queued.get(key, float("inf")):
            self._queued[key] = deadline
            heapq.heappush(self._heap, (deadline, key))

    def _due(self) -> tuple[float, tuple[str, str]] | None:
        """The heap's first valid entry, at its real deadline: (deadline, key), or None.

        An entry is valid if it is its key's queued one and the member or joiner is still
        there; a deadline that moved later (heartbeats) is pushed again where it now is, so
        each member costs one push per time it comes up, not one per heartbeat."""
        heap, queued = self._heap, self._queued
        while heap:
            deadline, key = heap[0]
            if queued.get(key) != deadline:
                heapq.heappop(heap)  # replaced by an earlier entry of the same key
                continue
            real = self._deadline_of(key)
            if real is None:
                heapq.heappop(heap)  # gone (left, died, got its role, ...)
                del queued[key]
            elif real != deadline:
                queued[key] = real
                heapq.heapreplace(heap, (real, key))
            else:
                return deadline, key
        return None

    def merge(self, entries: Iterable[dict], now: float, wall_now: float | None = None) -> bool:
        """Add members another view knows (the agent's peers.json) that this one lacks.

        An entry's wall-clock ``last_seen`` becomes an age (against ``wall_now``, by default
        ``now``), so the member dies on the same schedule as if we had heard it ourselves."""
        changed = False
        for entry in entries:
            node_id, role = entry.get("node_id"), entry.get("role")
            if not isinstance(node_id, str) or not isinstance(role, str) or node_id in self.members:
                continue
            if node_id in self.departed:
                continue
            wall = now if wall_now is None else wall_now
            try:
                age = max(0.0, wall - parse_ts(entry.get("last_seen")))
            except ProtocolError:
                age = 0.0
            interval = entry.get("interval") or self.default_interval
            capabilities = entry.get("capabilities") or {}
            if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
                    or not isinstance(capabilities, dict):
                continue  # a malformed entry (hand-edited file): skip it, never raise
            member = Member(node_id, str(entry.get("hostname", "?")), str(entry.get("ip", "?")),
                            role, now - age, float(interval), capabilities)
            if member.deadline() > now:
                self.members[node_id] = member
                self._schedule(("m", node_id), member.deadline())
                changed = True
        return changed

    # --- queries ------------------------------------------------------------------------------
    def established(self, exclude: Iterable[str] = ()) -> list[Member]:
        skip = set(exclude)
        return sorted((m for m in self.members.values() if m.node_id not in skip),
                      key=lambda m: (m.hostname, m.node_id))

    def joiners_ahead(self, key: tuple[float, str]) -> list[Joiner]:
        """Joining nodes before ``key`` in the join order that we wait for: not one backing
        off (the hive could not advise it; it must not hold up those that can be)."""
        return sorted((j for j in self.joiners.values() if j.key < key and not j.backing_off),
                      key=lambda j: j.key)

    def requests(self) -> dict[str, str]:
        """node id -> request id of the last IDENTIFY heard from each joiner or moving member
        (in peers.json: the advisor answers an IDENTIFY once the agent has seen it)."""
        out = {j.node_id: j.request_id for j in self.joiners.values() if j.request_id}
        out.update((m.node_id, m.request_id) for m in self.members.values()
                   if m.request_id and m.state == "moving")
        return out

    def joiners_behind(self, key: tuple[float, str]) -> list[Joiner]:
        """Joining nodes after ``key`` in the join order that a batched round may take along
        (not one backing off), in that order."""
        return sorted((j for j in self.joiners.values() if j.key > key and not j.backing_off),
                      key=lambda j: j.key)

    def joiners_json(self) -> list[dict]:
        """The joining nodes for peers.json (``joiners``), in the join order."""
        return [j.to_json() for j in sorted(self.joiners.values(), key=lambda j: j.key)]

    def joiners_asking(self, now: float) -> list[Joiner]:
        """Joining nodes that are asking the hive right now (IDENTIFY seen, not settled)."""
        return sorted((j for j in self.joiners.values() if j.asking_until > now),
                      key=lambda j: j.key)
