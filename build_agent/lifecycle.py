"""Joining and moving: the agent's state machine, as pure logic.

Messages and ``now`` (a reading of the steady clock) go in; messages to send (``outbox``) and
decisions (``decisions``: an identity to settle) come out.  No sockets, no files, no policy: the
agent (build_agent.agent) feeds it the hive's membership, flushes the outbox, writes
identity.json, installs packages and decides, from the hive's plan, when this node moves.

Phases (``Phase``):

  new       not started yet.
  discover  broadcast HELLO (timing.HELLO_SCHEDULE); members answer WELCOME with their role and
            how many established members they know.  Ends once that many have answered (after
            DISCOVERY_MIN) or at DISCOVERY_MAX.
  wait      other nodes are joining ahead of us (earlier start, then lower node id), or some
            node is asking right now: wait for them to settle.  One asker at a time is what
            gives simultaneous joins the roles of one-after-another joins.  A joiner backing
            off (nobody could advise it) is not waited for.
  ask       broadcast IDENTIFY with a fresh request id; every established member's advisor
            answers ADVICE; the retries go by unicast to the members whose advice is missing.
            Ends when every expected advisor answered, or at ADVICE_TIMEOUT; a node ahead of
            us asking at the same moment sends us back to wait.
            Batched rounds (mass joins): the asker lists in its IDENTIFY (``batch``) the joiners
            behind it in the join order, and the advisors advise all of them in this one round,
            in that order, each as if those before it had joined already.  A joiner that hears
            itself listed by a joiner ahead of it *follows* that round (phase ask, the round's
            request id; no IDENTIFY of its own unless advice is missing at 1.2 s, then by
            unicast to the advisors that did not answer) and decides by its own advice, as an
            asker does; one that gets no advice in the round takes its turn afterwards.  (Not
            with a guard: etcd's guard settles one at a time.)
  backoff   nobody advised: say so (STATUS 'backoff'), go to the end of the queue, discover
            again after an increasing pause.
  operate   identity settled: the agent heartbeats, answers HELLO, keeps peers.json and heals.
  move      healing chose this node: broadcast IDENTIFY (reask, current role); the advisors
            answer from the hive's plan; consensus as for a join.  A lower-id member moving at
            the same moment makes us give way.
A node that finds no established member and nobody joining ahead of it founds the hive.

A ``guard`` (optional: etcd's role guard, build_agent.etcd.RoleGuard) wraps the consensus: it is
asked before asking or founding (``begin``: it may hold us in wait a moment) and before a role
is settled (``claim``): a claim it refuses means another node took a role meanwhile, so the
advice may not have counted it: we ask again (a move ends, a founder discovers again).
"""

from __future__ import annotations

import collections
import enum
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from . import consensus, timing
from .membership import Membership, join_order_key
from .protocol import (MAX_ADVISORS, MAX_BATCH, Message, ProtocolError, format_ts, parse_ts,
                       sha256)

LOG = logging.getLogger(__name__)

# A batch's node ids take at most this many characters of the IDENTIFY (which must fit in
# protocol.MAX_DATAGRAM with its other fields): 100 UUIDs take 3,900.
BATCH_CHARS = 4800


class Phase(str, enum.Enum):
    NEW = "new"
    DISCOVER = "discover"
    WAIT = "wait"
    ASK = "ask"
    BACKOFF = "backoff"
    OPERATE = "operate"
    MOVE = "move"

    def __str__(self) -> str:
        return self.value


# What a node says of itself in STATUS while in each phase.
STATUS_STATE = {Phase.ASK: "asking", Phase.BACKOFF: "backoff", Phase.MOVE: "moving",
                Phase.OPERATE: "active"}


@dataclass(frozen=True)
class Send:
    """A message to send: to every member (``to`` None) or to one address.  For STATUS the
    fields hold only ``state``; the agent adds its heartbeat's load, capacity and the like."""
    kind: str
    fields: dict = field(default_factory=dict)
    to: str | None = None


@dataclass(frozen=True)
class Settle:
    """The hive decided this node's role (``move``: a change of role, not a join).  The agent
    writes it, then logs it (`Consensus: ...`): a user who sees that line finds the file."""
    identity: dict
    move: bool = False


class Guard(Protocol):
    def begin(self, now: float, founding: bool = False, move: bool = False) -> float | None:
        """Before asking (or founding, or moving): None to go on, or hold (wait) until then."""

    def claim(self, role: str) -> bool:
        """Before settling ``role``: False if the hive's answer is stale (ask again)."""


class Lifecycle:
    def __init__(self, node_id: str, membership: Membership, clock: Callable[[], float],
                 capabilities: dict, guard: Guard | None = None) -> None:
        self.node_id = node_id
        self.guard = guard
        self.membership = membership
        self.clock = clock  # wall clock: joining_since is compared with other nodes' starts
        self.capabilities = capabilities
        self.outbox: list[Send] = []
        self.decisions: list[Settle] = []
        self.phase = Phase.NEW
        self.phase_start = 0.0
        self.sent = 0
        self.role: str | None = None
        self.joining_since: float | None = None
        self.max_members_reported = 0
        self.advice: dict[str, consensus.Advice] = {}
        self.request_id = ""
        self.expected_advisors = 0
        self.reask_backoff = timing.REASK_BACKOFF_FIRST
        self.next_keepalive = 0.0
        self.move_failed = False  # set when a move ended with the role unchanged (see agent)
        # Batched rounds: the joiners we ask for after us (our IDENTIFY's ``batch``), or the
        # joiner whose round we follow and its place in the join order.
        self.batching = guard is None
        self.batch: list[str] = []
        self.round_head: str | None = None
        self.round_key: tuple[float, str] | None = None
        # Everyone the round asks for (its asker and batch): none of them advises in it, even
        # if it settles (and so becomes a member) before the round is over.  A follower counts
        # only the advisors that were members when it began following (round_advisors).
        self.round_members: set[str] = set()
        self.round_advisors: set[str] = set()
        self.asked: list[str] = []  # asking: the members asked, if not all (_choose_advisors)
        self.round_subset = False  # following: the round asked only round_advisors
        self.head_settled: float | None = None  # following: when its asker had its role
        self.behind = False  # set by the agent: the loop left datagrams unread (Service.behind)
        self._start_at_tick = False
        self._now = 0.0  # the steady time of the current tick

    # --- in -----------------------------------------------------------------------------------
    def start(self, now: float, role: str | None) -> None:
        """Begin with the role identity.json holds (operate), or none (discover)."""
        self.role = role
        if role is not None:
            LOG.info("Already identified as: %s", role)
            self.phase = Phase.OPERATE
        else:
            self._begin_discovery(now)

    def restart(self) -> None:
        """Start over at the next tick (the hive knew our joining under another node id)."""
        if self.phase is not Phase.OPERATE:
            self.phase = Phase.NEW

    def on_message(self, message: Message) -> None:
        if message.kind == "WELCOME":
            if message.get("to") in (None, self.node_id) and message.get("role"):
                self.max_members_reported = max(self.max_members_reported,
                                                message.get("members") or 0)
        elif message.kind == "ADVICE":
            self._on_advice(message)
        elif message.kind == "IDENTIFY":
            self._on_identify(message)

    def _my_key(self) -> tuple[float, str]:
        return join_order_key(self.joining_since or 0.0, self.node_id)

    def _on_identify(self, message: Message) -> None:
        """A joiner ahead of us asks for us too (its ``batch`` lists us): follow its round."""
        batch, request_id = message.get("batch"), message.get("request_id")
        if not self.batching or not batch or self.node_id not in batch or not request_id \
                or message.get("reask") or self.joining_since is None \
                or self.phase not in (Phase.DISCOVER, Phase.WAIT, Phase.ASK):
            return
        try:
            since = parse_ts(message.get("joining_since")) if message.get("joining_since") \
                else message.ts
        except ProtocolError:
            since = message.ts
        head_key = join_order_key(since, message.node_id)
        if head_key >= self._my_key():
            return  # it is behind us: it should wait for us, not ask for us
        advisors = message.get("advisors") or []
        if self.phase is Phase.ASK and request_id == self.request_id:
            # The round we follow already (its ADVICE came first): now we know who is in it.
            self.round_members.update(batch)
            self.round_advisors.difference_update(batch)
            if advisors:
                self.round_advisors.intersection_update(advisors)
                self.round_subset = True
            return
        if self.phase is Phase.ASK and head_key >= (self.round_key or self._my_key()):
            return  # a round behind the one we are in
        self._follow(request_id, message.node_id, message.hostname, head_key, batch, advisors)

    def _follow(self, request_id: str, head_id: str, head_name: str,
                head_key: tuple[float, str] | None, batch: list[str],
                advisors: list[str] = ()) -> None:
        """Follow the round of ``head_id``, which lists us in its ``batch``; its ``advisors``
        (if it asked only those) are the ones we wait for."""
        if self.phase is Phase.ASK and self.round_head is None and self.batch:
            LOG.info("%s asks for me in its round: following it", head_name)
        # (Messages come without the time: the round's clock starts at the next tick, which
        # follows the datagrams just read.)
        self.phase, self.phase_start, self.sent = Phase.ASK, self._now, 0
        self._start_at_tick = True
        self.advice = {}
        self.request_id = request_id
        self.round_head, self.round_key, self.batch = head_id, head_key, []
        self.head_settled = None
        self.round_members, self.asked = {head_id, *batch}, []
        self.round_advisors, self.round_subset = set(advisors), bool(advisors)
        self.round_advisors = {m.node_id for m in self._round_advisors()}
        self.expected_advisors = max(1, len(self._round_advisors()))
        LOG.info("Asking peers for role assignment in the round of %s%s...", head_name,
                 f" ({len(batch) + 1} joining together)" if batch else "")

    def _round_advisors(self) -> list:
        """The members whose advice a follower waits for."""
        return [m for m in self.membership.established() if m.node_id not in self.round_members
                and (not self.round_advisors or m.node_id in self.round_advisors)]

    def _on_advice(self, message: Message) -> None:
        if message.get("to") not in (None, self.node_id):
            return
        head = message.get("batch_of")
        if self.batching and head and self.phase in (Phase.DISCOVER, Phase.WAIT) \
                and message.get("request_id") and self.joining_since is not None:
            # Advice of a batched round whose IDENTIFY we missed: follow that round, unless
            # its asker is behind us (it should have waited for us).
            joiner = self.membership.joiners.get(head)
            if joiner is None or joiner.key < self._my_key():
                self._follow(message.get("request_id"), head,
                             joiner.hostname if joiner is not None else head,
                             joiner.key if joiner is not None else None, [])
        if self.phase not in (Phase.ASK, Phase.MOVE):
            return
        if message.get("request_id") not in (None, self.request_id):
            return  # advice for an earlier round (reference advisors send no request id)
        if message.node_id in self.advice:
            return  # one vote per advisor: a retransmission counts once
        if message.node_id in self.round_members or (
                self.round_advisors and message.node_id not in self.round_advisors):
            return  # settled in this very round (or after it began): it did not count the round
        if message.node_id not in self.membership.members:
            LOG.warning("Ignoring advice from %s (%s): not an established member of the hive",
                        message.hostname, message.primary_ip)
            return
        role = message.get("suggested_role")
        reason = message.get("reason")
        self.advice[message.node_id] = consensus.Advice(
            message.node_id, message.hostname, role, tuple(message.get("packages")),
            dict(message.get("config")), reason)
        LOG.info(" <- %s: become '%s' (%s)", message.hostname, role, reason)

    @property
    def status_state(self) -> str:
        return STATUS_STATE.get(self.phase, "joining")

    def joining_since_text(self) -> str | None:
        return format_ts(self.joining_since) if self.joining_since else None

    # --- time -----------------------------------------------------------------------------------
    def tick(self, now: float) -> float:
        """Advance the phase; returns when to be woken next.  Joining phases re-announce
        themselves (STATUS) every JOINING_KEEPALIVE; operate and move heartbeat in the agent."""
        self._now = now
        if self._start_at_tick:
            self._start_at_tick = False
            self.phase_start = now
        deadline = getattr(self, f"_tick_{self.phase.value}")(now)
        if self.phase not in (Phase.OPERATE, Phase.MOVE):
            if now >= self.next_keepalive:
                self._status()
            deadline = min(deadline, self.next_keepalive)
        return deadline

    @property
    def keepalive(self) -> float:
        """Seconds between our keep-alives while joining: JOINING_KEEPALIVE, stretched when many
        join at once (timing.JOINING_KEEPALIVE_PEERS)."""
        pace = min(timing.JOINING_PACE_MAX,
                   max(1.0, len(self.membership.joiners) / timing.JOINING_KEEPALIVE_PEERS))
        return timing.JOINING_KEEPALIVE * pace

    def _status(self, state: str | None = None) -> None:
        fields = {"state": state or self.status_state}
        keepalive = self.keepalive
        if keepalive > timing.JOINING_KEEPALIVE:
            fields["keepalive"] = round(keepalive, 2)  # the others wait for us that much longer
        self.outbox.append(Send("STATUS", fields))
        self.next_keepalive = self._now + keepalive

    def _tick_new(self, now: float) -> float:
        self._begin_discovery(now)  # (the agent calls start() first, with its identity)
        return now

    def _tick_operate(self, now: float) -> float:
        return float("inf")

    def _scheduled_sends(self, schedule: Sequence[float], now: float,
                         send: Callable[[], Send | list[Send]]) -> float:
        """Send what the schedule says is due; return when the next send is due.  A repeat
        waits while datagrams are still queued (``behind``; at most BEHIND_WAIT_MAX, a flood
        keeps the queue full): the answers it would ask for may be among them."""
        while self.sent < len(schedule) and now >= self.phase_start + schedule[self.sent]:
            if self.sent and self._wait_for_queue(self.phase_start + schedule[self.sent], now):
                return now
            due = send()
            self.outbox.extend(due if isinstance(due, list) else [due])
            self.sent += 1
            self.next_keepalive = now + timing.JOINING_KEEPALIVE
        if self.sent < len(schedule):
            return self.phase_start + schedule[self.sent]
        return float("inf")

    def _wait_for_queue(self, due: float, now: float) -> bool:
        """Whether a repeat due at ``due`` waits for the datagrams still queued."""
        return self.behind and now < due + timing.BEHIND_WAIT_MAX

    # --- joining --------------------------------------------------------------------------------
    def _begin_discovery(self, now: float) -> None:
        self._now = now
        if self.joining_since is None:
            self.joining_since = self.clock()  # wall time: compared with other nodes' starts
        self.phase, self.phase_start, self.sent = Phase.DISCOVER, now, 0
        self.next_keepalive = now + timing.JOINING_KEEPALIVE  # HELLO announces us for now
        self.max_members_reported = 0

    def _tick_discover(self, now: float) -> float:
        next_send = self._scheduled_sends(timing.HELLO_SCHEDULE, now, self._hello)
        elapsed = now - self.phase_start
        known = len(self.membership.established())
        heard_all = known > 0 and known >= self.max_members_reported
        if elapsed >= timing.DISCOVERY_MAX or (elapsed >= timing.DISCOVERY_MIN and heard_all):
            if self._wait_for_queue(self.phase_start + timing.DISCOVERY_MAX, now):
                # Datagrams still queued may be HELLOs of nodes joining with us (100 started
                # together: the first of them asked for 63 of the 99 behind it, the rest
                # needed a second round): read them before taking our turn.
                return now
            return self._take_turn(now)
        return min(next_send, self.phase_start + timing.DISCOVERY_MIN if heard_all
                   else self.phase_start + timing.DISCOVERY_MAX)

    def _hello(self) -> Send | list[Send]:
        """Our HELLO; its repeats (against a lost one) only while fewer than
        JOINING_KEEPALIVE_PEERS others are joining: in a crowd the members answer slowly (their
        WELCOMEs are late, not lost), and 100 joiners' repeats were 200 more datagrams for
        every node; a member that lost our HELLO hears of us from our keep-alive."""
        if self.sent and len(self.membership.joiners) >= timing.JOINING_KEEPALIVE_PEERS:
            return []
        return Send("HELLO", {"candidate_ip": None, "joining_since": self.joining_since_text(),
                              "capabilities": self.capabilities})

    def _take_turn(self, now: float) -> float:
        """After discovery or while waiting: ask, found, or keep waiting.

        We wait for every joining node ahead of us in the join order, and for any node that is
        asking the hive right now (even one behind us that did not know of us when it began):
        one asker at a time is what makes simultaneous joins equal sequential ones."""
        ahead = self.membership.joiners_ahead(join_order_key(self.joining_since, self.node_id))
        asking = self.membership.joiners_asking(now)
        if ahead or asking:
            if self.phase is not Phase.WAIT:
                if ahead:
                    LOG.info("Waiting for %d joining node(s) ahead of me: %s", len(ahead),
                             ", ".join(j.hostname for j in ahead))
                else:
                    LOG.info("Waiting while %s ask(s) the hive",
                             ", ".join(j.hostname for j in asking))
                self.phase = Phase.WAIT
            return min([now + timing.JOINING_KEEPALIVE] + [j.asking_until for j in asking])
        members = self.membership.established()
        hold = self.guard.begin(now, founding=not members) if self.guard is not None else None
        if hold is not None:
            self.phase = Phase.WAIT
            return hold
        if not members:
            self._found()
            return now
        LOG.info("Discovered %d peer(s)", len(members))
        LOG.info("Asking peers for role assignment...")
        self._begin_asking(now, Phase.ASK, len(members))
        self.asked = self._choose_advisors(members)
        if self.asked:
            LOG.info("Asking %d of them, chosen for this round", len(self.asked))
            self.expected_advisors = len(self.asked)
        if self.batching:
            self.batch = self._batch(self.membership.joiners_behind(self._my_key()),
                                     BATCH_CHARS - sum(len(n) + 3 for n in self.asked))
            if self.batch:
                LOG.info("Asking for %d joining node(s) behind me in the same round",
                         len(self.batch))
                self.round_members = set(self.batch)
        return self._tick_ask(now)

    def _choose_advisors(self, members: list) -> list[str]:
        """The members asked in this round (protocol.MAX_ADVISORS of them, by a hash of the
        round's request id: another set each round, so a few silent advisors cannot hold a
        node back for good); [] asks them all (a hive of up to MAX_ADVISORS)."""
        if len(members) <= MAX_ADVISORS:
            return []
        def rank(member) -> bytes:
            return sha256(f"{self.request_id}/{member.node_id}".encode())
        return [m.node_id for m in sorted(members, key=rank)[:MAX_ADVISORS]]

    @staticmethod
    def _batch(behind: list, room: int = BATCH_CHARS) -> list[str]:
        """The node ids of the joiners to take along, in order, within the datagram's room."""
        ids, size = [], 0
        for joiner in behind[:MAX_BATCH]:
            size += len(joiner.node_id) + 3
            if size > room:
                break
            ids.append(joiner.node_id)
        return ids

    def _end_round(self) -> None:
        self.batch, self.round_head, self.round_key = [], None, None
        self.round_members, self.round_advisors = set(), set()
        self.round_subset = False

    def _begin_asking(self, now: float, phase: Phase, advisors: int) -> None:
        self.phase, self.phase_start, self.sent = phase, now, 0
        self.advice = {}
        self.request_id = os.urandom(8).hex()  # advice for another round never counts here
        self.expected_advisors = advisors
        self.asked = []  # the members asked, if not all (_choose_advisors)
        self._end_round()

    def _tick_wait(self, now: float) -> float:
        return self._take_turn(now)

    def _identify(self, batch: list[str]) -> Send:
        fields = {"request": "who_am_i", "request_id": self.request_id, "candidate_ip": None,
                  "capabilities": self.capabilities, "attempt": self.sent,
                  "joining_since": self.joining_since_text(),
                  "members": len(self.membership.established())}
        if self.asked and self.round_head is None:
            fields["advisors"] = self.asked
        return Send("IDENTIFY", {**fields, "batch": batch} if batch else fields)

    def _majority_of_asked(self) -> bool:
        """When only some members were asked (``advisors``: ours, or our round's), or in the
        batched round of a crowd (JOINING_KEEPALIVE_PEERS joining together): more than half of
        the advisors agreeing on a role decides it (no later answer can change the winner), so
        the slowest of 16 busy advisors, or of the advisors answering 100 joiners in turn, does
        not set the join time.  Otherwise (a hive of up to 16) every advisor is waited for, and
        ``assigned_by`` names them all."""
        crowd = len(self.round_members) >= timing.JOINING_KEEPALIVE_PEERS
        if self.round_head is None:
            asked = len(self.asked) or (self.expected_advisors if crowd else 0)
        else:
            asked = len(self.round_advisors) if self.round_subset or crowd else 0
        if not asked or not self.advice:
            return False
        votes = collections.Counter(a.role for a in self.advice.values())
        return max(votes.values()) * 2 > asked

    def _asker_sends(self, now: float) -> float:
        """Asking: IDENTIFY by broadcast, then at IDENTIFY_SCHEDULE's later times again by
        unicast, only to the established members whose advice is missing (advice counts only
        from members we know).  Those that answered would only answer again: in a hive of 200,
        each repeated broadcast woke all 200 agents and advisors and brought 200 more ADVICE."""
        def sends() -> Send | list[Send]:
            send = self._identify(self.batch)
            if self.sent == 0:
                return send
            return [Send("IDENTIFY", send.fields, to=member.ip)
                    for member in self.membership.established()
                    if member.node_id not in self.advice
                    and member.node_id not in self.round_members
                    and (not self.asked or member.node_id in self.asked)]
        return self._scheduled_sends(timing.IDENTIFY_SCHEDULE, now, sends)

    def _follower_sends(self, now: float) -> float:
        """Following a round: ask again (same request id, no batch, ``batch_of`` the round's
        asker) once, only the advisors whose advice is missing, by unicast (their agent hands
        it to their advisor, which answers from its record of the round).  Not before the last
        retry time, nor before the round's asker has had its role for a retry interval: the
        advisors answer a batch in order, the asker first, and under load that takes longer
        than any fixed time (100 followers asking the 5 members again at 1.2 s made 500 more
        datagrams for the busiest agents of all).  If the asker never gets its role, the round
        ends at ADVICE_TIMEOUT as before."""
        if self.sent or self.round_head not in self.membership.members:
            return float("inf")  # (a tick follows the asker's STATUS that says its role)
        if self.head_settled is None:
            self.head_settled = now
        due = max(self.phase_start + timing.IDENTIFY_SCHEDULE[-1],
                  self.head_settled + timing.IDENTIFY_SCHEDULE[1])
        if now < due:
            return due
        if self._wait_for_queue(due, now):
            return now  # our advice may be queued: read it first
        self.sent = 1
        fields = {**self._identify([]).fields, "batch_of": self.round_head}
        for member in self._round_advisors():
            if member.node_id not in self.advice:
                self.outbox.append(Send("IDENTIFY", fields, to=member.ip))
        return float("inf")

    def _tick_ask(self, now: float) -> float:
        if self.round_head is None:
            next_send = self._asker_sends(now)
            key = self._my_key()
        else:
            self.expected_advisors = max(1, len(self._round_advisors()))
            next_send = self._follower_sends(now)
            key = self.round_key or (float("-inf"), "")
        rivals = [j for j in self.membership.joiners_asking(now)
                  if j.key < key and j.node_id != self.round_head]
        if rivals:
            # Someone ahead of us (or of the round we follow) is asking at the same time: its
            # turn first; this advice did not count it, so it is discarded and we ask again
            # after it settled.
            LOG.info("%s is asking the hive ahead of me; waiting for it",
                     ", ".join(j.hostname for j in rivals))
            self.phase = Phase.WAIT
            self.advice = {}
            self._end_round()
            self._status("joining")  # tell the others we stopped asking: nobody waits for us
            return now
        if len(self.advice) >= self.expected_advisors or self._majority_of_asked():
            self._decide()
            return now
        if now - self.phase_start >= timing.ADVICE_TIMEOUT:
            if self.behind and now - self.phase_start < timing.ADVICE_TIMEOUT * 2:
                # Datagrams are still queued (a busy moment: 200 WELCOMEs ahead of the
                # advice): read them before concluding that no advice came.
                return now
            if not self.advice and self.round_head is not None:
                # The round we followed gave us nothing (its advisors did not know us): our
                # own turn comes after it.
                LOG.warning("No advice for me in the round I followed; taking my own turn")
                self.phase = Phase.WAIT
                self._end_round()
                self._status("joining")
                return now
            if self.advice:
                LOG.warning("Only %d of %d peer(s) advised; deciding with their advice",
                            len(self.advice), self.expected_advisors)
                self._decide()
                return now
            LOG.warning("No advice received from peers; asking again in %.0fs "
                        "(is build-advisor running on them, with the same secret?)",
                        self.reask_backoff)
            self.phase, self.phase_start = Phase.BACKOFF, now + self.reask_backoff
            self.reask_backoff = min(self.reask_backoff * 2, timing.REASK_BACKOFF_MAX)
            # Whoever can be advised goes first: we pause saying so (STATUS 'backoff', never
            # waited for) and come back at the end of the queue, behind those now waiting.
            self.joining_since = self.clock()
            self._status("backoff")
            return self.phase_start
        return min(next_send, self.phase_start + timing.ADVICE_TIMEOUT)

    def _tick_backoff(self, now: float) -> float:
        if now >= self.phase_start:
            self._begin_discovery(now)
            return now
        return self.phase_start

    def _found(self) -> None:
        if self.guard is not None and not self.guard.claim("founder"):
            self._begin_discovery(self._now)  # another node founded the hive just now: join it
            return
        LOG.info("No peers found; this may be the first node (founder role).")
        self._settle({"role": "founder", "packages": [], "config": {}, "assigned_by": ["self"],
                      "reason": "no peers found", "votes": {}})

    def _decide(self) -> None:
        decision = consensus.decide(self.advice)
        if self.guard is not None and not self.guard.claim(decision.role):
            self.phase, self.advice = Phase.WAIT, {}  # the advice did not count that node
            self._end_round()
            self._status("joining")
            return
        self._settle({"role": decision.role, "packages": decision.packages,
                      "config": decision.config, "assigned_by": decision.assigned_by,
                      "reason": decision.reason, "votes": decision.votes})

    def _settle(self, identity: dict, move: bool = False) -> None:
        self._end_round()
        self.decisions.append(Settle(identity, move))
        self.role = identity["role"]
        self.phase = Phase.OPERATE
        self.joining_since = None
        self.reask_backoff = timing.REASK_BACKOFF_FIRST
        self.advice = {}

    # --- moving (healing) ---------------------------------------------------------------------
    def begin_move(self, now: float) -> None:
        """Healing chose this node: ask the hive for a new role."""
        self._now = now
        LOG.info("Asking peers for a new role (was '%s')...", self.role)
        self._begin_asking(now, Phase.MOVE,
                           len(self.membership.established(exclude=[self.node_id])))
        if self.guard is not None:
            self.guard.begin(now, move=True)
        self.outbox.append(Send("STATUS", {"state": "moving"}))

    def _tick_move(self, now: float) -> float:
        """Returns when to look again; a move that gives nothing ends with ``move_failed``."""
        next_send = self._scheduled_sends(timing.IDENTIFY_SCHEDULE, now, lambda: Send(
            "IDENTIFY", {"request": "who_am_i", "request_id": self.request_id, "reask": True,
                         "role": self.role, "candidate_ip": None,
                         "capabilities": self.capabilities, "attempt": self.sent}))
        rivals = [m for m in self.membership.members.values()
                  if m.is_moving(now) and m.node_id < self.node_id]
        if rivals:  # two movers from views that differed for a moment: the lower id goes on
            LOG.info("%s is moving too; giving way", ", ".join(m.hostname for m in rivals))
            return self._end_move()
        if len(self.advice) >= self.expected_advisors:
            return self._finish_move()
        if now - self.phase_start >= timing.ADVICE_TIMEOUT:
            if self.advice:
                LOG.warning("Only %d of %d peer(s) advised; deciding with their advice",
                            len(self.advice), self.expected_advisors)
                return self._finish_move()
            LOG.warning("No advice received for the move; staying '%s' for now", self.role)
            return self._end_move()
        return min(next_send, self.phase_start + timing.ADVICE_TIMEOUT)

    def _end_move(self) -> float:
        """Back to operate, role unchanged: the agent starts the grace again."""
        self.phase = Phase.OPERATE
        self.advice = {}
        self.move_failed = True
        self.outbox.append(Send("STATUS", {"state": "active"}))
        return self._now

    def _finish_move(self) -> float:
        decision = consensus.decide(self.advice)
        if decision.role == self.role:
            LOG.info("The hive advised me to stay '%s'", self.role)
            return self._end_move()
        if self.guard is not None and not self.guard.claim(decision.role):
            return self._end_move()
        self._settle({"role": decision.role, "packages": decision.packages,
                      "config": decision.config, "assigned_by": decision.assigned_by,
                      "reason": decision.reason, "votes": decision.votes,
                      "previous_role": self.role}, move=True)
        return self._now
