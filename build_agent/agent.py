"""build-agent: joins the hive, owns this node's identity and keeps peers.json live.

Phases of a node without an identity (each driven by ``tick`` and incoming messages):

  discover  broadcast HELLO (timing.HELLO_SCHEDULE); members answer WELCOME with their role and
            how many established members they know.  Ends once that many have answered (after
            DISCOVERY_MIN) or at DISCOVERY_MAX.
  wait      other nodes are joining ahead of us (earlier start, then lower node id), or some
            node is asking right now: wait for them to settle.  One asker at a time is what
            gives simultaneous joins the roles of one-after-another joins.
  ask       broadcast IDENTIFY; every established member's advisor answers ADVICE.  Ends when
            every expected advisor answered, or at ADVICE_TIMEOUT; a node ahead of us asking at
            the same moment sends us back to wait (its advice did not count that node).
  backoff   nobody advised: discover again after an increasing pause.
  operate   identity settled: heartbeats, WELCOMEs, membership, provisioning.
A node that finds no established member and nobody joining ahead of it founds the hive.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Sequence

from . import capabilities as caps_mod
from . import consensus, provision, state, timing
from .config import Config
from .daemon import Service
from .membership import Membership, join_order_key
from .netif import Interface
from .protocol import Message, format_ts, format_ts_seconds, make_payload

LOG = logging.getLogger(__name__)


class Agent(Service):
    def __init__(self, config: Config, secrets: Sequence[bytes], iface: Interface, node_id: str,
                 hostname: str, capabilities: dict | None = None,
                 clock: Callable[[], float] = time.time,
                 installer: Callable[[Sequence[str]], str | None] | None = None) -> None:
        super().__init__(config, secrets, node_id, clock)
        self.iface = iface
        self.hostname = hostname
        self.capabilities = capabilities if capabilities is not None else caps_mod.detect()
        self.provisioner = provision.Provisioner(
            installer if installer is not None else provision.SystemInstaller(config.state_dir),
            enabled=config.install_packages, clock=clock)
        self.membership = Membership(config.heartbeat_interval)
        self.identity: dict | None = None
        self.broadcast_sock = None
        self.unicast_sock = None
        self.phase = "new"
        self.phase_start = 0.0
        self.sent = 0
        self.joining_since: float | None = None
        self.max_members_reported = 0
        self.advice: dict[str, consensus.Advice] = {}
        self.expected_advisors = 0
        self.reask_backoff = timing.REASK_BACKOFF_FIRST
        self.next_heartbeat = 0.0
        self.next_keepalive = 0.0
        self.peers_dirty = True

    # --- wiring -----------------------------------------------------------------------------
    def attach(self, broadcast_sock, unicast_sock) -> None:
        self.broadcast_sock, self.unicast_sock = broadcast_sock, unicast_sock

    def start(self, now: float) -> None:
        self.identity = state.read_identity(self.config.identity_path)
        if self.identity is not None:
            LOG.info("Already identified as: %s", self.identity["role"])
            self.phase = "operate"
            self._broadcast("HELLO", role=self.identity["role"], capabilities=self.capabilities)
            self.next_heartbeat = now
            if self.identity.get("provisioned") is not True:
                self.provisioner.request(self.identity.get("packages") or [], now)
        else:
            self._begin_discovery(now)

    @property
    def role(self) -> str | None:
        return self.identity["role"] if self.identity else None

    # --- sending ----------------------------------------------------------------------------
    def _payload(self, kind: str, **fields) -> dict:
        return make_payload(kind, self.node_id, self.hostname, self.iface.address, self.clock(),
                            **fields)

    def _broadcast(self, kind: str, **fields) -> None:
        self.send(self.unicast_sock, self._payload(kind, **fields),
                  (self.iface.broadcast, self.config.port))

    def _reply(self, kind: str, ip: str, **fields) -> None:
        self.send(self.unicast_sock, self._payload(kind, **fields), (ip, self.config.port))

    def _joining_since_text(self) -> str | None:
        return format_ts(self.joining_since) if self.joining_since else None

    def _heartbeat(self, state_name: str = "active") -> None:
        try:
            load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            load = None
        health = "ok"
        if self.identity and self.identity.get("provision_error") and self.config.install_packages:
            health = "provisioning-failed"
        self._broadcast("STATUS", role=self.role, state=state_name, load=load,
                        capacity={"cpu_cores": self.capabilities.get("cpu_cores"),
                                  "ram_gb": self.capabilities.get("ram_gb")},
                        health=health, interval=self.config.heartbeat_interval,
                        capabilities=self.capabilities)

    # --- incoming ---------------------------------------------------------------------------
    def handle(self, message: Message, source_ip: str, now: float) -> None:
        if self.membership.observe(message, source_ip, now):
            self.peers_dirty = True
        kind = message.kind
        if kind == "HELLO":
            members = len(self.membership.established()) + (1 if self.identity else 0)
            self._reply("WELCOME", source_ip, to=message.node_id, role=self.role, members=members,
                        joining_since=None if self.identity else self._joining_since_text(),
                        capabilities=self.capabilities, interval=self.config.heartbeat_interval)
        elif kind == "WELCOME":
            if message.get("to") in (None, self.node_id) and message.get("role"):
                self.max_members_reported = max(self.max_members_reported,
                                                message.get("members") or 0)
        elif kind == "ADVICE":
            self._on_advice(message)

    def _on_advice(self, message: Message) -> None:
        if self.phase != "ask" or message.get("to") not in (None, self.node_id):
            return
        if message.node_id in self.advice:
            return  # one vote per advisor: a retransmission counts once
        role = message.get("suggested_role")
        reason = message.get("reason")
        self.advice[message.node_id] = consensus.Advice(
            message.node_id, message.hostname, role, tuple(message.get("packages")),
            dict(message.get("config")), reason)
        LOG.info(" <- %s: become '%s' (%s)", message.hostname, role, reason)

    # --- time -------------------------------------------------------------------------------
    def tick(self, now: float) -> float:
        if self.membership.expire(now):
            self.peers_dirty = True
        deadlines = [self.membership.next_deadline()]
        step = getattr(self, f"_tick_{self.phase}")
        deadlines.append(step(now))
        if self.phase == "operate":
            if now >= self.next_heartbeat:
                self._heartbeat()
                self.next_heartbeat = now + self.config.heartbeat_interval
                self.peers_dirty = True  # refresh last_seen once per interval
            deadlines.append(self.next_heartbeat)
            deadlines.append(self._tick_provisioning(now))
        else:
            if now >= self.next_keepalive:
                self._heartbeat("asking" if self.phase == "ask" else "joining")
                self.next_keepalive = now + timing.JOINING_KEEPALIVE
            deadlines.append(self.next_keepalive)
        if self.peers_dirty:
            self._write_peers(now)
        return min(deadlines)

    def _tick_new(self, now: float) -> float:
        self.start(now)
        return now

    def _scheduled_sends(self, schedule: Sequence[float], now: float, send: Callable[[], None]
                         ) -> float:
        """Send what the schedule says is due; return when the next send is due."""
        while self.sent < len(schedule) and now >= self.phase_start + schedule[self.sent]:
            send()
            self.sent += 1
            self.next_keepalive = now + timing.JOINING_KEEPALIVE
        if self.sent < len(schedule):
            return self.phase_start + schedule[self.sent]
        return float("inf")

    def _begin_discovery(self, now: float) -> None:
        if self.joining_since is None:
            self.joining_since = self.clock()  # wall time: compared with other nodes' starts
        self.phase, self.phase_start, self.sent = "discover", now, 0
        self.next_keepalive = now + timing.JOINING_KEEPALIVE  # HELLO announces us for now
        self.max_members_reported = 0
        LOG.info("Looking for hive peers on %s (%s, broadcast %s)", self.iface.name,
                 self.iface.address, self.iface.broadcast)

    def _tick_discover(self, now: float) -> float:
        next_send = self._scheduled_sends(timing.HELLO_SCHEDULE, now, lambda: self._broadcast(
            "HELLO", candidate_ip=None, joining_since=self._joining_since_text(),
            capabilities=self.capabilities))
        elapsed = now - self.phase_start
        known = len(self.membership.established())
        heard_all = known > 0 and known >= self.max_members_reported
        if elapsed >= timing.DISCOVERY_MAX or (elapsed >= timing.DISCOVERY_MIN and heard_all):
            return self._take_turn(now)
        return min(next_send, self.phase_start + timing.DISCOVERY_MIN if heard_all
                   else self.phase_start + timing.DISCOVERY_MAX)

    def _take_turn(self, now: float) -> float:
        """After discovery or while waiting: ask, found, or keep waiting.

        We wait for every joining node ahead of us in the join order, and for any node that is
        asking the hive right now (even one behind us that did not know of us when it began):
        one asker at a time is what makes simultaneous joins equal sequential ones."""
        ahead = self.membership.joiners_ahead(join_order_key(self.joining_since, self.node_id))
        asking = self.membership.joiners_asking(now)
        if ahead or asking:
            if self.phase != "wait":
                if ahead:
                    LOG.info("Waiting for %d joining node(s) ahead of me: %s", len(ahead),
                             ", ".join(j.hostname for j in ahead))
                else:
                    LOG.info("Waiting while %s ask(s) the hive",
                             ", ".join(j.hostname for j in asking))
                self.phase = "wait"
            return min([now + timing.JOINING_KEEPALIVE] + [j.asking_until for j in asking])
        members = self.membership.established()
        if not members:
            self._found(now)
            return now
        LOG.info("Discovered %d peer(s)", len(members))
        LOG.info("Asking peers for role assignment...")
        self.phase, self.phase_start, self.sent = "ask", now, 0
        self.advice = {}
        self.expected_advisors = len(members)
        return self._tick_ask(now)

    def _tick_wait(self, now: float) -> float:
        return self._take_turn(now)

    def _tick_ask(self, now: float) -> float:
        next_send = self._scheduled_sends(timing.IDENTIFY_SCHEDULE, now, lambda: self._broadcast(
            "IDENTIFY", request="who_am_i", candidate_ip=None, capabilities=self.capabilities,
            attempt=self.sent, joining_since=self._joining_since_text()))
        key = join_order_key(self.joining_since, self.node_id)
        rivals = [j for j in self.membership.joiners_asking(now) if j.key < key]
        if rivals:
            # Someone ahead of us is asking at the same time: its turn first; this advice
            # did not count it, so it is discarded and we ask again after it settled.
            LOG.info("%s is asking the hive ahead of me; waiting for it",
                     ", ".join(j.hostname for j in rivals))
            self.phase = "wait"
            self.advice = {}
            self._heartbeat("joining")  # tell the others we stopped asking: nobody waits for us
            self.next_keepalive = now + timing.JOINING_KEEPALIVE
            return now
        if len(self.advice) >= self.expected_advisors:
            self._decide(now)
            return now
        if now - self.phase_start >= timing.ADVICE_TIMEOUT:
            if self.advice:
                LOG.warning("Only %d of %d peer(s) advised; deciding with their advice",
                            len(self.advice), self.expected_advisors)
                self._decide(now)
                return now
            LOG.warning("No advice received from peers; asking again in %.0fs "
                        "(is build-advisor running on them, with the same secret?)",
                        self.reask_backoff)
            self.phase, self.phase_start = "backoff", now + self.reask_backoff
            self.reask_backoff = min(self.reask_backoff * 2, timing.REASK_BACKOFF_MAX)
            return self.phase_start
        return min(next_send, self.phase_start + timing.ADVICE_TIMEOUT)

    def _tick_backoff(self, now: float) -> float:
        if now >= self.phase_start:
            self._begin_discovery(now)
            return now
        return self.phase_start

    def _found(self, now: float) -> None:
        LOG.info("No peers found; this may be the first node (founder role).")
        LOG.info("Identity: founder")
        self._settle({"role": "founder", "packages": [], "config": {}, "assigned_by": ["self"],
                      "reason": "no peers found", "votes": {}}, now)

    def _decide(self, now: float) -> None:
        decision = consensus.decide(self.advice)
        LOG.info("Consensus: I am a '%s'", decision.role)
        if decision.packages:
            LOG.info("Packages: %s", ", ".join(decision.packages))
        self._settle({"role": decision.role, "packages": decision.packages,
                      "config": decision.config, "assigned_by": decision.assigned_by,
                      "reason": decision.reason, "votes": decision.votes}, now)

    def _settle(self, identity: dict, now: float) -> None:
        identity.update(assigned_at=format_ts_seconds(self.clock()), node_id=self.node_id,
                        hostname=self.hostname, provisioned=False, provision_error=None)
        state.write_json_atomic(self.config.identity_path, identity)
        self.identity = identity
        self.phase = "operate"
        self.joining_since = None
        self.reask_backoff = timing.REASK_BACKOFF_FIRST
        self.next_heartbeat = now  # announce the new role at once: waiting joiners go next
        self.provisioner.request(identity["packages"], now)
        self.peers_dirty = True

    def _tick_operate(self, now: float) -> float:
        return float("inf")

    # --- provisioning (provision.Provisioner does the work; here: identity.json) ---------------
    def _tick_provisioning(self, now: float) -> float:
        deadline, fields = self.provisioner.tick(now)
        if fields is not None and self.identity is not None:
            self.identity.update(fields)
            try:
                state.write_json_atomic(self.config.identity_path, self.identity)
            except OSError as exc:
                LOG.error("Cannot update %s: %s", self.config.identity_path, exc)
        return deadline

    # --- state files --------------------------------------------------------------------------
    def _write_peers(self, now: float) -> None:
        wall = self.clock()
        data = {
            "self": {"hostname": self.hostname, "primary_ip": self.iface.address,
                     "role": self.role, "node_id": self.node_id,
                     "status": "active" if self.identity else "joining"},
            "peers": [m.to_json(wall - now)
                      for m in self.membership.established(exclude=[self.node_id])],
            "updated_at": format_ts_seconds(wall),
        }
        try:
            state.write_json_atomic(self.config.peers_path, data)
            self.peers_dirty = False
        except OSError as exc:
            LOG.error("Cannot write %s: %s", self.config.peers_path, exc)
            self.peers_dirty = False

    # --- lifecycle ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        LOG.info("Leaving the hive")
        for _ in range(2):  # a goodbye so peers drop us at once; twice in case one is lost
            self._heartbeat("leaving")
