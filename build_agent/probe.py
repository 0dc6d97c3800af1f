"""Failure detection by probing, SWIM-like: a ring by node id, direct and indirect probes.

Pure logic: messages and ``now`` (the steady clock) in, messages to send and deaths out; no
sockets.  The agent feeds it every verified message (``heard``), the probe kinds (``on_ping``,
``on_pingreq``, ``on_pong``) and its ticks.

- The **ring** holds this node and the members that take part in probing (they state a
  ``probe`` interval; reference-script nodes and older agents do not, and are never probed nor
  asked to help: the heartbeat rule judges them), ordered by node id.  Each node probes its
  successor, so each member is watched by one other and receives one PING per interval whatever
  the hive's size.
- A **round** (one probe interval): PING to the target; no PONG after PROBE_DIRECT_SHARE of the
  interval: PINGREQ to PROBE_HELPERS other ring members, which PING the target and answer PONG
  (it answered them) or a NACK (PONG ``ok: false``).  Any message of the target during the round
  (a late PONG, a STATUS) is a sign of life and the round succeeds.  A round without one fails
  only if we heard some other node during it (a helper's NACK, our predecessor's PING) or there
  was no helper to ask: a prober that hears nobody may be cut off itself and accuses nobody.
- After the first failed round the target is **suspected**: SUSPECT goes to it (it refutes at
  once with a STATUS carrying a new ``incarnation``, a sign of life); after PROBE_FAILED_ROUNDS
  failed rounds in a row it is **dead**: ``deaths`` lists it and DEAD is broadcast on
  DEAD_SCHEDULE, carrying the incarnation we knew, so a member that heard a newer one (a
  refutation) keeps it.
See timing.py for the false-death arithmetic under loss.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from . import timing
from .protocol import format_ts

LOG = logging.getLogger(__name__)

SEQ_LIMIT = 2**31  # sequence numbers wrap here (the wire allows 0 .. 2**31)


@dataclass
class Out:
    """A message to send: kind, destination address (None: to everyone), kind's fields."""
    kind: str
    ip: str | None
    fields: dict


@dataclass
class Target:
    """A ring member as the prober needs it."""
    node_id: str
    ip: str
    incarnation: float = 0.0  # its newest incarnation we know (seconds since the epoch)
    name: str = ""            # its hostname, for the log


@dataclass
class Round:
    target: Target
    seq: int
    started: float
    ask_at: float            # no PONG by then: ask the helpers
    end: float               # the round concludes
    asked: int = -1          # helpers asked (-1: not yet)
    nacks: int = 0
    others: int = 0          # messages of other nodes during the round: we are not cut off
    alive: bool = False      # a sign of life came during the round
    late: set = field(default_factory=set)  # deadlines already given their grace


@dataclass
class Helping:
    """A PINGREQ we work on: we PINGed ``target`` with our ``seq`` for ``requester``."""
    requester: str
    requester_ip: str
    requester_seq: int
    target: str
    deadline: float


def successor(node_id: str, ring: Iterable[str]) -> str | None:
    """The next node id after ``node_id`` on the ring (sorted ids, wrapping), or None alone."""
    ids = sorted(set(ring) | {node_id})
    if len(ids) < 2:
        return None
    return ids[(ids.index(node_id) + 1) % len(ids)]


class Prober:
    def __init__(self, node_id: str, interval: float, rng: random.Random | None = None) -> None:
        self.node_id = node_id
        self.interval = interval
        self.rng = rng if rng is not None else random.Random()
        self.seq = self.rng.randrange(SEQ_LIMIT)
        self.incarnation: str | None = None  # ours, once we refuted (our PONGs carry it)
        self.round: Round | None = None
        self.next_round = 0.0
        self.failed: dict[str, int] = {}      # target -> failed rounds in a row
        self.helping: dict[int, Helping] = {}
        self.announce: list[tuple[float, str, str, float]] = []  # (when, target, ip, incarnation)
        self.deaths: list[Target] = []         # declared since the agent last looked
        self._names: dict[str, str] = {}       # node id -> hostname, for the log
        self.counts = {"rounds": 0, "failed": 0, "inconclusive": 0, "suspected": 0, "dead": 0}

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) % SEQ_LIMIT
        return self.seq

    # --- incoming -----------------------------------------------------------------------------
    def heard(self, node_id: str, now: float) -> None:
        """A verified message of ``node_id`` arrived: it is alive."""
        if self.round is not None:
            if self.round.target.node_id == node_id:
                self.round.alive = True
            else:
                self.round.others += 1
        if self.failed.pop(node_id, None):
            LOG.info("Peer %s answers again: no longer suspected", self._names.get(node_id, node_id))

    def on_ping(self, sender: str, to: str | None, seq: int, source_ip: str) -> list[Out]:
        """A PING for us: answer PONG to the address it came from."""
        if to != self.node_id or not self.enabled:
            return []  # meant for a node that had this address before us, or we take no part
        fields = {"to": sender, "seq": seq}
        if self.incarnation is not None:  # so our prober knows it, even if it missed our STATUS
            fields["incarnation"] = self.incarnation
        return [Out("PONG", source_ip, fields)]

    def on_pingreq(self, sender: str, source_ip: str, target: str, target_ip: str, seq: int,
                   now: float) -> list[Out]:
        """Probe ``target`` for ``sender``: PING it; PONG or NACK back later."""
        if not self.enabled or target == self.node_id or target == sender:
            return []
        if len(self.helping) >= timing.PROBE_HELPER_PENDING:
            return []
        mine = self._next_seq()
        self.helping[mine] = Helping(sender, source_ip, seq, target,
                                     now + timing.PROBE_HELPER_SHARE * self.interval)
        return [Out("PING", target_ip, {"to": target, "seq": mine})]

    def on_pong(self, sender: str, seq: int, target: str | None, ok: bool, now: float) -> list[Out]:
        """A PONG for us: our target answered, a helper answered for it, or the target answered
        a PING we sent as a helper (then relay it to whoever asked)."""
        if target is None:
            self.heard(sender, now)  # (the agent tells us of every message anyway)
        helping = self.helping.get(seq)
        if helping is not None and target is None and sender == helping.target:
            del self.helping[seq]
            return [Out("PONG", helping.requester_ip,
                        {"to": helping.requester, "seq": helping.requester_seq,
                         "target": helping.target, "ok": True})]
        current = self.round
        if current is not None and target is not None and target == current.target.node_id \
                and seq == current.seq:
            if ok:
                self.heard(target, now)
            else:
                current.nacks += 1
        return []

    # --- time ---------------------------------------------------------------------------------
    def _due(self, current: Round, name: str, deadline: float, now: float) -> bool:
        """Is ``deadline`` due?  One that comes more than PROBE_LATE_SLACK late (a starved
        process) waits PROBE_LATE_GRACE more, once: what came in meanwhile is read first."""
        if now < deadline:
            return False
        if now - deadline > timing.PROBE_LATE_SLACK and name not in current.late:
            current.late.add(name)
            if name == "ask":
                current.ask_at = now + timing.PROBE_LATE_GRACE
            else:
                current.end = now + timing.PROBE_LATE_GRACE
            return False
        return True

    def tick(self, now: float, ring: Mapping[str, Target]) -> tuple[list[Out], float]:
        """Run the rounds; returns (messages to send, next deadline).  ``ring``: the members
        taking part (node id -> Target), this node excluded."""
        outs: list[Out] = []
        for seq, helping in list(self.helping.items()):
            if now >= helping.deadline:
                del self.helping[seq]
                outs.append(Out("PONG", helping.requester_ip,
                                {"to": helping.requester, "seq": helping.requester_seq,
                                 "target": helping.target, "ok": False}))
        for node_id in list(self.failed):
            if node_id not in ring:
                del self.failed[node_id]  # gone otherwise (goodbye, heartbeat rule, DEAD)
        if self.enabled:
            outs += self._tick_round(now, ring)
        while self.announce and self.announce[0][0] <= now:
            _, target, ip, incarnation = self.announce.pop(0)
            outs.append(Out("DEAD", None, {"target": target, "target_ip": ip,
                                           "incarnation": format_ts(incarnation)}))
        deadlines = [h.deadline for h in self.helping.values()]
        if self.announce:
            deadlines.append(self.announce[0][0])
        if self.enabled:
            if self.round is not None:
                deadlines.append(self.round.ask_at if self.round.asked < 0 and not self.round.alive
                                 else self.round.end)
            else:
                deadlines.append(self.next_round)
        return outs, min(deadlines, default=float("inf"))

    def _tick_round(self, now: float, ring: Mapping[str, Target]) -> list[Out]:
        outs: list[Out] = []
        current = self.round
        if current is not None and current.target.node_id not in ring:
            self.round = current = None  # it left (or was declared dead) meanwhile
        if current is not None and current.asked < 0 and not current.alive \
                and self._due(current, "ask", current.ask_at, now):
            others = sorted(n for n in ring if n != current.target.node_id)
            helpers = self.rng.sample(others, min(timing.PROBE_HELPERS, len(others)))
            current.asked = len(helpers)
            # Asked late (a starved process): the helpers still get their whole time.
            current.end = max(current.end, now + (1 - timing.PROBE_DIRECT_SHARE) * self.interval)
            for helper in helpers:
                outs.append(Out("PINGREQ", ring[helper].ip,
                                {"to": helper, "target": current.target.node_id,
                                 "target_ip": current.target.ip, "seq": current.seq}))
        if current is not None and (current.asked >= 0 or current.alive) \
                and self._due(current, "end", current.end, now):
            outs += self._conclude(current, ring, now)
            self.round = current = None
            self.next_round = max(self.next_round, now)
        if current is None and now >= self.next_round:
            target_id = successor(self.node_id, ring)
            if target_id is None:
                self.next_round = now + self.interval
                return outs
            target = ring[target_id]
            self._names = {n: t.name for n, t in ring.items() if t.name}
            self.round = Round(Target(target.node_id, target.ip, target.incarnation, target.name),
                               self._next_seq(), now,
                               now + timing.PROBE_DIRECT_SHARE * self.interval, now + self.interval)
            self.next_round = now + self.interval
            self.counts["rounds"] += 1
            outs.append(Out("PING", target.ip, {"to": target.node_id, "seq": self.round.seq}))
        return outs

    def _conclude(self, current: Round, ring: Mapping[str, Target], now: float) -> list[Out]:
        target = current.target
        if current.alive:
            self.failed.pop(target.node_id, None)
            return []
        if current.asked > 0 and current.others == 0:
            # We heard nobody at all (no helper's NACK, not even our predecessor's PING): we may
            # be the one cut off, so we accuse nobody.
            self.counts["inconclusive"] += 1
            LOG.debug("Probe of %s: heard nobody during the round; not suspecting it",
                      target.node_id)
            return []
        self.counts["failed"] += 1
        failed = self.failed.get(target.node_id, 0) + 1
        incarnation = ring[target.node_id].incarnation if target.node_id in ring \
            else target.incarnation
        if failed < timing.PROBE_FAILED_ROUNDS:
            self.failed[target.node_id] = failed
            if failed == 1:
                self.counts["suspected"] += 1
                LOG.info("Peer %s (%s) is suspected: no answer to probes, direct or through %d "
                         "others", target.name or target.node_id, target.ip, current.asked)
            return [Out("SUSPECT", target.ip, {"to": target.node_id,
                                               "incarnation": format_ts(incarnation)})]
        self.failed.pop(target.node_id, None)
        self.counts["dead"] += 1
        self.deaths.append(Target(target.node_id, target.ip, incarnation, target.name))
        for offset in timing.DEAD_SCHEDULE:
            self.announce.append((now + offset, target.node_id, target.ip, incarnation))
        self.announce.sort()
        return []

    def suspected(self) -> dict[str, int]:
        """node id -> failed rounds in a row, for the members suspected now."""
        return dict(self.failed)
