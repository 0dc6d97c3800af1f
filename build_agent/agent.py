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
  operate   identity settled: heartbeats, WELCOMEs, membership, provisioning, and healing:
            the hive's plan (plan.compute) is recomputed as the view changes; when it has
            needed the same move for a grace period (healing.Healer) and this node is the
            mover, it moves.
  move      re-ask: broadcast IDENTIFY (reask, current role); the advisors answer from the
            hive's plan; consensus as for a join; identity.json keeps previous_role.
A node that finds no established member and nobody joining ahead of it founds the hive.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from typing import Callable, Sequence

from . import capabilities as caps_mod
from . import consensus, control, plan as plans, provision, state, taskrun, tasks, timing
from .config import Config
from .daemon import Service
from .healing import Healer
from .membership import Membership, join_order_key, view_entry
from .netif import Interface
from .protocol import Message, format_ts, format_ts_seconds, make_payload, parse_ts

LOG = logging.getLogger(__name__)


def _ip_value(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


class Agent(Service):
    def __init__(self, config: Config, secrets: Sequence[bytes], iface: Interface, node_id: str,
                 hostname: str, capabilities: dict | None = None,
                 clock: Callable[[], float] = time.time,
                 installer: Callable[[Sequence[str]], str | None] | None = None,
                 desired_roles: Callable[[dict], object] | None = None,
                 task_runner=None) -> None:
        super().__init__(config, secrets, node_id, clock)
        # The policy's desired roles for a view (None: this agent does not heal).
        self.desired_roles = desired_roles
        self.healer = Healer(node_id, config.grace)
        self.plan: plans.Plan | None = None
        self._plan_dirty = True
        self._next_plan = 0.0
        self._plan_error = ""
        self.iface = iface
        self.hostname = hostname
        self.capabilities = capabilities if capabilities is not None else caps_mod.detect()
        self.provisioner = provision.Provisioner(
            installer if installer is not None else provision.SystemInstaller(config.state_dir),
            enabled=config.install_packages, clock=clock)
        self.membership = Membership(config.heartbeat_interval)
        # Build work (tasks.py); `hive` commands reach us on the control socket (open_control).
        slots = config.tasks.slots or self.capabilities.get("cpu_cores") or os.cpu_count() or 1
        self.tasks = tasks.TaskNode(config, hostname, task_runner or taskrun.system_runner(
            config, slots, self.watch, self.unwatch), clock, slots)
        self._tasks_started = False
        self.control: control.ControlServer | None = None
        self.identity: dict | None = None
        self.started_text = format_ts(clock())  # wall time this agent began using node_id
        self._clones_seen: set[str] = set()
        self._identity_removed = False
        self.broadcast_sock = None
        self.unicast_sock = None
        self.phase = "new"
        self.phase_start = 0.0
        self.sent = 0
        self.joining_since: float | None = None
        self.max_members_reported = 0
        self.advice: dict[str, consensus.Advice] = {}
        self.request_id = ""
        self.expected_advisors = 0
        self.reask_backoff = timing.REASK_BACKOFF_FIRST
        self.next_heartbeat = 0.0
        self.next_keepalive = 0.0
        self.peers_dirty = True

    # --- wiring -----------------------------------------------------------------------------
    def attach(self, broadcast_sock, unicast_sock) -> None:
        self.broadcast_sock, self.unicast_sock = broadcast_sock, unicast_sock

    def open_control(self) -> None:
        """The local control socket for `hive` commands (ControlError if it cannot be made)."""
        self.control = control.ControlServer(self.config.control_path, self._control,
                                             self.watch, self.unwatch, self.steady)
        self.control.open()

    def _control(self, request: dict, reply: control.Reply) -> dict | None:
        op = request.get("op")
        if op == "ping":
            return {"node_id": self.node_id, "hostname": self.hostname, "role": self.role}
        if isinstance(op, str) and op.startswith("task."):
            return self.tasks.control(request, reply, self.membership.members, self.role,
                                      self.steady())
        return {"error": f"unknown request '{op}' (is build-agent older than this hive command?)"}

    def _send_all(self, outs: Sequence[tasks.Out]) -> None:
        for out in outs:
            self._reply(out.kind, out.ip, **out.fields)

    def start(self, now: float) -> None:
        if not self._tasks_started:
            self._tasks_started = True
            self.tasks.start(now)
        self.identity = state.read_identity(self.config.identity_path)
        if self.identity is not None:
            LOG.info("Already identified as: %s", self.identity["role"])
            self.phase = "operate"
            self._broadcast("HELLO", role=self.identity["role"], capabilities=self.capabilities,
                            interval=self.config.heartbeat_interval)
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
        if kind in ("HELLO", "WELCOME", "STATUS"):
            fields["started"] = self.started_text  # settles who keeps a node id two nodes share
            if self.identity is not None:  # what healing plans need of us
                fields.update(joined_at=self.identity["assigned_at"],
                              role_since=self._role_since(), rebalance=self.config.rebalance)
        return make_payload(kind, self.node_id, self.hostname, self.iface.address, self.stamp(),
                            **fields)

    def _broadcast(self, kind: str, **fields) -> None:
        self.send(self.unicast_sock, self._payload(kind, **fields),
                  (self.iface.broadcast, self.config.port))

    def _reply(self, kind: str, ip: str, **fields) -> None:
        self.send(self.unicast_sock, self._payload(kind, **fields), (ip, self.config.port))

    def _joining_since_text(self) -> str | None:
        return format_ts(self.joining_since) if self.joining_since else None

    def _heartbeat(self, state_name: str = "active") -> None:
        queue = {"queue": self.tasks.queue_depth()} if self.tasks.controller is not None else {}
        self._broadcast("STATUS", role=self.role, state=state_name, load=self._load(),
                        capacity=self._capacity(), health=self._health(),
                        interval=self.config.heartbeat_interval, capabilities=self.capabilities,
                        **queue)

    # --- incoming ---------------------------------------------------------------------------
    def handle(self, message: Message, source_ip: str, now: float) -> None:
        if self.membership.observe(message, source_ip, now):
            self.peers_dirty = self._plan_dirty = True
        if message.kind == "IDENTIFY":
            self.peers_dirty = True  # the advisor waits for peers.json to show it (requests)
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
        elif kind in ("TASK", "RESULT", "ACK", "CANCEL", "LOGS", "LOGDATA"):
            self._send_all(self.tasks.handle(message, source_ip, self.membership.members,
                                             self.node_id, self.role, now))

    def _on_advice(self, message: Message) -> None:
        if self.phase not in ("ask", "move") or message.get("to") not in (None, self.node_id):
            return
        if message.get("request_id") not in (None, self.request_id):
            return  # advice for an earlier round (reference advisors send no request id)
        if message.node_id in self.advice:
            return  # one vote per advisor: a retransmission counts once
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

    def own_id_heard(self, message: Message, now: float) -> None:
        """Another machine uses our node id: a clone of one image.  Both sides see it; the
        younger one (the later ``started``, then the higher address; a sender stating no start
        counts as older) takes a fresh id, so both stay in the hive as two members."""
        if message.hostname == self.hostname and message.primary_ip == self.iface.address:
            return  # our own broadcast
        theirs = message.get("started")
        mine_key = (parse_ts(self.started_text), _ip_value(self.iface.address))
        their_key = (parse_ts(theirs) if theirs else float("-inf"), _ip_value(message.primary_ip))
        if mine_key > their_key:
            self._take_fresh_node_id(message)
        elif message.primary_ip not in self._clones_seen:
            self._clones_seen.add(message.primary_ip)
            LOG.warning("%s (%s) uses this node's id %s too (a cloned machine?); this node keeps "
                        "it and %s takes a fresh one", message.hostname, message.primary_ip,
                        self.node_id, message.hostname)

    def _take_fresh_node_id(self, other: Message) -> None:
        old, self.node_id = self.node_id, state.new_uuid4()
        self.healer.node_id = self.node_id
        state.write_node_id(self.config.node_id_path, self.node_id)
        self.started_text = format_ts(self.clock())
        LOG.warning("Node id %s is also used by %s (%s), which has had it longer (a cloned "
                    "machine?): this node now uses %s", old, other.hostname, other.primary_ip,
                    self.node_id)
        if self.identity is not None:
            self._update_identity(node_id=self.node_id)
            self._broadcast("HELLO", role=self.identity["role"], capabilities=self.capabilities,
                            interval=self.config.heartbeat_interval)
            self.next_heartbeat = float("-inf")  # and a heartbeat at the next tick
        else:
            self.phase = "new"  # the hive knew our joining under the old id: start over
        self.peers_dirty = True

    # --- time -------------------------------------------------------------------------------
    def tick(self, now: float) -> float:
        if self.membership.expire(now):
            self.peers_dirty = self._plan_dirty = True
        deadlines = [self.membership.next_deadline()]
        step = getattr(self, f"_tick_{self.phase}")
        deadlines.append(step(now))
        if self.phase in ("operate", "move"):
            if now >= self.next_heartbeat:
                self._heartbeat("moving" if self.phase == "move" else "active")
                self.next_heartbeat = now + self.config.heartbeat_interval
                self.peers_dirty = True  # refresh last_seen once per interval
            deadlines.append(self.next_heartbeat)
            deadlines.append(self._tick_provisioning(now))
            outs, due = self.tasks.tick(now, self.membership.members, self.role)
            self._send_all(outs)
            deadlines.append(due)
        else:
            if now >= self.next_keepalive:
                self._heartbeat({"ask": "asking", "backoff": "backoff"}.get(self.phase, "joining"))
                self.next_keepalive = now + timing.JOINING_KEEPALIVE
            deadlines.append(self.next_keepalive)
        if self.control is not None:
            deadlines.append(self.control.tick(now))
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
        self.request_id = os.urandom(8).hex()  # advice for another round never counts here
        self.expected_advisors = len(members)
        return self._tick_ask(now)

    def _tick_wait(self, now: float) -> float:
        return self._take_turn(now)

    def _tick_ask(self, now: float) -> float:
        next_send = self._scheduled_sends(timing.IDENTIFY_SCHEDULE, now, lambda: self._broadcast(
            "IDENTIFY", request="who_am_i", request_id=self.request_id, candidate_ip=None,
            capabilities=self.capabilities, attempt=self.sent,
            joining_since=self._joining_since_text()))
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
            # Whoever can be advised goes first: we pause saying so (STATUS 'backoff', never
            # waited for) and come back at the end of the queue, behind those now waiting.
            self.joining_since = self.clock()
            self._heartbeat("backoff")
            self.next_keepalive = now + timing.JOINING_KEEPALIVE
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
        self._identity_removed = False
        self.phase = "operate"
        self.joining_since = None
        self.reask_backoff = timing.REASK_BACKOFF_FIRST
        self.next_heartbeat = now  # announce the new role at once: waiting joiners go next
        self.provisioner.request(identity["packages"], now)
        self.peers_dirty = True

    def _tick_operate(self, now: float) -> float:
        return self._tick_heal(now)

    # --- healing ----------------------------------------------------------------------------
    def _role_since(self) -> str:
        return self.identity.get("changed_at") or self.identity["assigned_at"]

    def _load(self) -> list | None:
        try:
            return [round(x, 2) for x in os.getloadavg()]
        except OSError:
            return None

    def _capacity(self) -> dict:
        return {"cpu_cores": self.capabilities.get("cpu_cores"),
                "ram_gb": self.capabilities.get("ram_gb"), **self.tasks.capacity(self.role)}

    def _health(self) -> str:
        if self.identity and self.identity.get("provision_error") and self.config.install_packages:
            return "provisioning-failed"
        return "ok"

    def _self_view(self) -> dict:
        return view_entry(self.node_id, self.hostname, self.iface.address, self.role,
                          self.capabilities, self._load(), self._capacity(), self._health(),
                          parse_ts(self.identity["assigned_at"]), parse_ts(self._role_since()),
                          parse_ts(self.started_text), self.config.rebalance,
                          "moving" if self.phase == "move" else "active",
                          self.tasks.queue_depth())

    def policy_view(self, now: float) -> dict:
        """The hive as policies see it: this node and the established members, in one view."""
        me = self._self_view()
        peers = [m.view(now) for m in self.membership.established(exclude=[self.node_id])]
        return {"self": me, "peers": peers, "members": [me] + peers}

    def _compute_plan(self, now: float) -> plans.Plan | None:
        view = self.policy_view(now)
        try:
            desired = self.desired_roles(view)
            plan = plans.compute(plans.members_from_view(view["members"]), desired, self.clock(),
                                 self.config.cooldown)
        except Exception as exc:  # a policy's bug: no healing until it is fixed, said once
            error = f"{type(exc).__name__}: {exc}"
            if error != self._plan_error:
                LOG.error("Cannot plan the hive's roles (desired_roles: %s); not rebalancing",
                          error)
                self._plan_error = error
            return None
        self._plan_error = ""
        return plan

    def _tick_heal(self, now: float) -> float:
        if self.desired_roles is None or self.identity is None:
            return float("inf")
        if self._plan_dirty or now >= self._next_plan:
            self.plan = self._compute_plan(now)
            self._plan_dirty = False
            self._next_plan = now + self.config.heartbeat_interval
        moving = any(m.is_moving(now) for m in self.membership.members.values())
        step = self.healer.step(self.plan, now, moving)
        for line in step.lines:
            LOG.info("%s", line)
        if step.move is not None and self._identity_removed is False \
                and os.path.exists(self.config.identity_path):
            self._begin_move(now)
            return now
        return min(step.wake, self._next_plan)

    def _begin_move(self, now: float) -> None:
        LOG.info("Asking peers for a new role (was '%s')...", self.role)
        self.phase, self.phase_start, self.sent = "move", now, 0
        self.advice = {}
        self.request_id = os.urandom(8).hex()
        self.expected_advisors = len(self.membership.established(exclude=[self.node_id]))
        self._heartbeat("moving")
        self.next_heartbeat = now + self.config.heartbeat_interval
        self.peers_dirty = True

    def _tick_move(self, now: float) -> float:
        next_send = self._scheduled_sends(timing.IDENTIFY_SCHEDULE, now, lambda: self._broadcast(
            "IDENTIFY", request="who_am_i", request_id=self.request_id, reask=True,
            role=self.role, candidate_ip=None, capabilities=self.capabilities,
            attempt=self.sent))
        rivals = [m for m in self.membership.members.values()
                  if m.is_moving(now) and m.node_id < self.node_id]
        if rivals:  # two movers from views that differed for a moment: the lower id goes on
            LOG.info("%s is moving too; giving way", ", ".join(m.hostname for m in rivals))
            return self._end_move(now, retry=True)
        if len(self.advice) >= self.expected_advisors:
            return self._finish_move(now)
        if now - self.phase_start >= timing.ADVICE_TIMEOUT:
            if self.advice:
                LOG.warning("Only %d of %d peer(s) advised; deciding with their advice",
                            len(self.advice), self.expected_advisors)
                return self._finish_move(now)
            LOG.warning("No advice received for the move; staying '%s' for now", self.role)
            return self._end_move(now, retry=True)
        return min(next_send, self.phase_start + timing.ADVICE_TIMEOUT)

    def _end_move(self, now: float, retry: bool) -> float:
        self.phase = "operate"
        self.advice = {}
        if retry:
            self.healer.retry_later(now)
        self._plan_dirty = self.peers_dirty = True
        self.next_heartbeat = now  # say at once that we are not moving any more
        return now

    def _finish_move(self, now: float) -> float:
        decision = consensus.decide(self.advice)
        if decision.role == self.role:
            LOG.info("The hive advised me to stay '%s'", self.role)
            return self._end_move(now, retry=True)
        LOG.info("Consensus: I am a '%s'", decision.role)
        if decision.packages:
            LOG.info("Packages: %s", ", ".join(decision.packages))
        identity = dict(self.identity)
        identity.update(role=decision.role, packages=decision.packages, config=decision.config,
                        assigned_by=decision.assigned_by, reason=decision.reason,
                        votes=decision.votes, previous_role=self.role,
                        changed_at=format_ts_seconds(self.clock()), provisioned=False,
                        provision_error=None)
        if not os.path.exists(self.config.identity_path):
            return self._end_move(now, retry=True)  # hive reset meanwhile: not written back
        state.write_json_atomic(self.config.identity_path, identity)
        self.identity = identity
        self.provisioner.request(identity["packages"], now)
        return self._end_move(now, retry=False)

    # --- provisioning (provision.Provisioner does the work; here: identity.json) ---------------
    def _tick_provisioning(self, now: float) -> float:
        deadline, fields = self.provisioner.tick(now)
        if fields is not None and self.identity is not None:
            self._update_identity(**fields)
        return deadline

    # --- state files --------------------------------------------------------------------------
    def _update_identity(self, **fields) -> None:
        """Record fields in identity.json, unless it was removed behind our back (`hive reset
        --no-restart`): the user asked for a new identity at the next start, so the old one is
        not written back."""
        self.identity.update(fields)
        if not os.path.exists(self.config.identity_path):
            if not self._identity_removed:
                self._identity_removed = True
                LOG.warning("%s was removed (hive reset?): not writing it back; restart "
                            "build-agent to ask the hive for a new identity",
                            self.config.identity_path)
            return
        try:
            state.write_json_atomic(self.config.identity_path, self.identity)
        except OSError as exc:
            LOG.error("Cannot update %s: %s", self.config.identity_path, exc)

    def _write_peers(self, now: float) -> None:
        wall = self.clock()
        me = {"hostname": self.hostname, "primary_ip": self.iface.address, "role": self.role,
              "node_id": self.node_id,
              "status": {"operate": "active", "move": "moving"}.get(self.phase, "joining")}
        if self.identity is not None:  # what the advisor and `hive plan` need of us
            view = self._self_view()
            me.update(joined_at=self.identity["assigned_at"], role_since=self._role_since(),
                      started=self.started_text, rebalance=self.config.rebalance,
                      state=view["state"],
                      capabilities=view["capabilities"], load=view["load"],
                      capacity=view["capacity"], health=view["health"], queue=view["queue"])
        data = {
            "self": me,
            "plan": self.plan.to_json() if self.plan is not None and self.identity else None,
            "requests": self.membership.requests(),
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
        self.tasks.close()
        if self.control is not None:
            self.control.close()
        LOG.info("Leaving the hive")
        for _ in range(2):  # a goodbye so peers drop us at once; twice in case one is lost
            self._heartbeat("leaving")
