"""build-agent: joins the hive, owns this node's identity and keeps peers.json live.

The agent is the glue between the hive and this machine:
- joining and moving are the state machine in ``lifecycle`` (pure: messages and ``now`` in,
  messages to send and decisions out); the agent feeds it, sends what it asks, and writes the
  identity it settles on;
- membership (``membership``) is fed every verified message, and is the one view of the hive
  (peers.json, which the advisor and ``hive plan`` read);
- healing: the hive's plan (``plan.compute``, with the policy's desired roles) is recomputed as
  the view changes; ``healing.Healer`` says when a need is real and whether this node moves;
- provisioning (``provision.Provisioner``) installs the role's packages.
It also answers HELLO with WELCOME, heartbeats (STATUS), resolves a node id shared by cloned
machines, and says goodbye when it stops.

Messages for everyone go where ``discovery.Discovery`` says: the group addresses of hive.toml's
``discovery`` methods, and by unicast every node those do not reach (another subnet, a LAN
without broadcast).  A WELCOME to a node that came by unicast lists the hive's addresses.  Every
IDENTIFY the agent accepts, however it came, is handed to the local advisor (the advisor hears
nothing else: it does not wake for the hive's heartbeats).  With etcd, the node keeps its
record there (``etcd.Registry``) and the role it takes is guarded by an etcd transaction
(``etcd.RoleGuard``, a guard of the state machine).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import time
from typing import Callable, Sequence

from . import capabilities as caps_mod
from . import control, hooks, metrics, plan as plans, probe, provision, readiness, state
from . import taskrun, tasks, timing
from .config import Config
from .daemon import Service
from .discovery import Discovery, welcome_addresses
from .healing import Healer
from .lifecycle import Lifecycle, Phase, Send, Settle
from .offloop import OffLoop
from .membership import Membership, join_order_key, view_entry
from .netif import LOOPBACK, Interface, relay_datagram
from .protocol import Message, format_ts, format_ts_seconds, make_payload, parse_ts, sha256

LOG = logging.getLogger(__name__)


PROBE_KINDS = ("PING", "PINGREQ", "PONG", "SUSPECT", "DEAD")
REPEAT_WELCOMERS = 32  # members that answer a repeated HELLO in a big hive (_welcomes_as_member)
REJOIN_WELCOME_GAP = 0.2  # s: the copies of one HELLO of a member starting again get one WELCOME
# What a member at rest may handle without a tick (see handle): routine STATUS, probes answered.
QUIET_KINDS = ("STATUS", "PING", "PONG")


def _ip_value(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


class Agent(Service):
    def __init__(self, config: Config, secrets: Sequence[bytes], iface: Interface, node_id: str,
                 hostname: str, capabilities: dict | None = None,
                 clock: Callable[[], float] = time.time,
                 installer: Callable[[Sequence[str]], str | None] | None = None,
                 desired_roles: Callable[[dict], object] | None = None,
                 discovery: Discovery | None = None, task_runner=None) -> None:
        super().__init__(config, secrets, node_id, clock)
        self.discovery = discovery if discovery is not None else Discovery(config, iface)
        self.now = 0.0  # the loop's steady time of the current tick or datagram
        self._discovery_started = False
        # The policy's desired roles for a view (None: this agent does not heal).
        self.desired_roles = desired_roles
        self.healer = Healer(node_id, config.grace)
        self.plan: plans.Plan | None = None
        self._plan_dirty = True
        self._next_plan = 0.0
        self._plan_error = ""
        self._plan_late = False
        self.iface = iface
        self.hostname = hostname
        self.capabilities = capabilities if capabilities is not None else caps_mod.detect()
        self.provisioner = provision.Provisioner(
            installer if installer is not None else provision.SystemInstaller(config.state_dir),
            enabled=config.install_packages, clock=clock)
        self.role_hooks = hooks.RoleHooks(config.role_hooks_dir, str(config.identity_path),
                                          clock=clock)
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
        self.life = Lifecycle(node_id, self.membership, clock, self.capabilities,
                              guard=self._role_guard())
        self.next_heartbeat = 0.0
        self._last_status = float("-inf")  # steady time of our last STATUS (see _status_due)
        self._last_summary: tuple | None = None
        # Failure detection (probe.py): this node probes its ring successor, helps others probe,
        # and refutes a suspicion of itself with a STATUS carrying a new incarnation.
        self.prober = probe.Prober(node_id, config.probe_interval)
        self.incarnation: str | None = None  # set by the first refutation (else: started)
        self._last_refute = float("-inf")
        self._suspected_by: dict[str, float] = {}  # prober -> when its last SUSPECT came
        self._welcomed_members: dict[tuple, float] = {}  # (member, its start) -> answered at
        self._member_since = float("-inf")  # wall time this run's join gave us our identity
        self._probe_due = 0.0  # the prober's next deadline (nothing to do before it)
        self.peers_dirty = True
        # peers.json: rewritten after a change, at most every peers_gap(); at once for an
        # IDENTIFY (urgent: the advisor waits to see it), with everything else heard before it.
        self.peers_urgent = False
        self._peers_written = float("-inf")  # steady time of the last rewrite
        # IDENTIFY for the advisor, handed over once peers.json shows them: it answers from the
        # file at once, rather than look for the request every VIEW_SYNC_POLL until it does
        # (200 advisors polling for each join were most of a join's advisor cost at 200).
        self._relays: list[tuple[Message, str]] = []
        # (the unchanged entries' text kept)
        self._peers_writer = state.JsonListWriter("peers", "joiners")
        self.state_file = readiness.StateFile(str(config.agent_state_path), clock)
        # The metrics file (metrics.py): on changes (at most every METRICS_MIN_GAP) and at
        # every heartbeat interval.
        self.exporter = metrics.Exporter(config.metrics_file)
        self.started_wall = clock()
        self.metrics_dirty = True
        self.metrics_written = float("-inf")

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
        self._start_discovery()
        self.life.start(now, self.role)
        if self.identity is not None:
            self._broadcast("HELLO", role=self.identity["role"], capabilities=self.capabilities)
            self._status_at_once(now)
            if self.identity.get("provisioned") is not True:
                self.provisioner.request(self.identity.get("packages") or [], now)
        else:
            self._looking()

    def _looking(self) -> None:
        LOG.info("Looking for hive peers on %s (%s, broadcast %s)", self.iface.name,
                 self.iface.address, self.iface.broadcast)

    @property
    def role(self) -> str | None:
        return self.identity["role"] if self.identity else None

    # The join/move state, for tests and status (the state machine owns it).
    phase = property(lambda self: self.life.phase)
    advice = property(lambda self: self.life.advice)
    expected_advisors = property(lambda self: self.life.expected_advisors)
    joining_since = property(lambda self: self.life.joining_since)
    request_id = property(lambda self: self.life.request_id)
    reask_backoff = property(lambda self: self.life.reask_backoff)

    # --- sending ----------------------------------------------------------------------------
    def _payload(self, kind: str, **fields) -> dict:
        if kind in ("HELLO", "WELCOME", "STATUS"):
            fields["interval"] = self.status_interval  # how often the hive hears our STATUS
            fields["started"] = self.started_text  # settles who keeps a node id two nodes share
            if self.prober.enabled:  # we answer PINGs: probe us (see probe.py)
                fields["probe"] = self.config.probe_interval
            if self.incarnation is not None:
                fields["incarnation"] = self.incarnation
            if self.identity is not None:  # what healing plans need of us
                fields.update(joined_at=self.identity["assigned_at"],
                              role_since=self._role_since(), rebalance=self.config.rebalance)
        return make_payload(kind, self.node_id, self.hostname, self.iface.address, self.stamp(),
                            **fields)

    def _broadcast(self, kind: str, **fields) -> None:
        """To everyone: the group addresses of the discovery methods, and by unicast every node
        they do not reach (a member on another subnet, one learned from a seed or etcd)."""
        payload = self._payload(kind, **fields)
        for address in self.discovery.targets(kind, self._known_ips(), self.now):
            self.send(self.unicast_sock, payload, address)

    def _reply(self, kind: str, ip: str, **fields) -> None:
        self.send(self.unicast_sock, self._payload(kind, **fields), (ip, self.config.port))

    # --- discovery beyond one broadcast domain (discovery, etcd) --------------------------------
    def _known_ips(self) -> list[str]:
        return [m.ip for m in self.membership.members.values()] + \
            [j.ip for j in self.membership.joiners.values()]

    def _hello_to(self, addresses: list[tuple[str, int]]) -> None:
        """HELLO by unicast to addresses just learned (a WELCOME's list, a seed, etcd): their
        WELCOME makes them known before discovery ends."""
        if not addresses:
            return
        if self.identity is not None:
            fields = dict(role=self.role, capabilities=self.capabilities)
        else:
            fields = dict(candidate_ip=None, joining_since=self.life.joining_since_text(),
                          capabilities=self.capabilities)
        payload = self._payload("HELLO", **fields)
        for address in addresses:
            self.send(self.unicast_sock, payload, address)

    def _relay(self, message: Message, source_ip: str) -> None:
        """Hand a verified IDENTIFY to the local advisor: the datagram as it came (signed by its
        sender: the advisor verifies it too) and the address it came from (the advisor answers
        there, as this agent would)."""
        try:
            self.unicast_sock.sendto(relay_datagram(message.data, source_ip),
                                     (LOOPBACK, self.config.port))
        except OSError as exc:
            LOG.debug("Cannot hand %s to the advisor: %s", message.kind, exc)

    def _start_discovery(self) -> None:
        """Seed names resolved and the etcd registration made (each bounded), once, before
        the first HELLO."""
        if self._discovery_started:
            return
        self._discovery_started = True
        self.discovery.start()
        if self.discovery.registry is not None:
            self.discovery.registry.start(self._etcd_record(), joining=self.identity is None)

    def _etcd_record(self, role: str | None = None) -> dict:
        """This node's record in etcd (with ``role``, or the one it has)."""
        return {"node_id": self.node_id, "hostname": self.hostname, "ip": self.iface.address,
                "port": self.config.port, "role": role if role is not None else self.role,
                "joining_since": self.life.joining_since_text() if self.identity is None
                else None}

    def _role_guard(self):
        registry = self.discovery.registry
        if registry is None:
            return None
        from .etcd import RoleGuard

        def in_view(node_id: str, role: str | None) -> bool:
            member = self.membership.members.get(node_id)
            return member is not None and role in (None, member.role)
        return RoleGuard(registry, self._etcd_record, in_view, self._hello_to)

    @property
    def status_interval(self) -> float:
        """How often this node's routine STATUS goes out (the ``interval`` it states; others
        judge its silence by it): every heartbeat interval, or every STATUS_INTERVALS_PROBED of
        them while it takes part in probing (probes, not heartbeats, notice its death then),
        more beyond STATUS_STRETCH_MEMBERS members (at most STATUS_INTERVALS_MAX)."""
        if not self.prober.enabled:
            return self.config.heartbeat_interval
        stretch = math.ceil(timing.STATUS_INTERVALS_PROBED * len(self.membership.members)
                            / timing.STATUS_STRETCH_MEMBERS)
        return self.config.heartbeat_interval * min(
            timing.STATUS_INTERVALS_MAX, max(timing.STATUS_INTERVALS_PROBED, stretch))

    def _status_at_once(self, now: float) -> None:
        """A STATUS at the tick at ``now``, whatever status_interval says."""
        self.next_heartbeat, self._last_status = now, float("-inf")

    def _status_due(self, now: float) -> bool:
        """At a heartbeat: whether to broadcast STATUS.  Yes once status_interval has passed
        since the last one, or when what others act on changed (capacity, health, the queue,
        capabilities: tasks and policies); a change of load alone waits for the routine one."""
        if now >= self._last_status + self.status_interval - self.config.heartbeat_interval / 2:
            return True
        return self._status_summary() != self._last_summary

    def _status_summary(self) -> tuple:
        """What our STATUS says that others act on: (role, capacity, health, the queue: a
        controller's, else None, capabilities)."""
        queue = self.tasks.queue_depth() if self.tasks.controller is not None else None
        return (self.role, self._capacity(), self._health(), queue, self.capabilities)

    def _heartbeat(self, state: str = "active", to: str | None = None, **more) -> None:
        """STATUS to everyone (a heartbeat: recorded for the cadence), or to ``to`` alone."""
        summary = self._status_summary()
        if to is None:
            self._last_status, self._last_summary = self.now, summary
        role, capacity, health, queue, capabilities = summary
        extra = {"queue": queue} if queue is not None else {}
        if self.identity is None:  # a joiner: who hears it only so learns its place in the order
            extra["joining_since"] = self.life.joining_since_text()
        fields = dict(role=role, state=state, load=self._load(), capacity=capacity,
                      health=health, capabilities=capabilities, **extra, **more)
        if to is None:
            self._broadcast("STATUS", **fields)
        else:
            self._reply("STATUS", to, **fields)

    # --- incoming ---------------------------------------------------------------------------
    def handle(self, message: Message, source_ip: str, now: float) -> None:
        self.now = now
        self.discovery.heard(source_ip, now)
        asks_me = message.kind == "IDENTIFY" and self.node_id in (message.get("advisors")
                                                                    or [self.node_id])
        if asks_me:  # the advisor hears nothing else (handed over by tick)
            self._relays.append((message, source_ip))
        before = self.membership.members.get(message.node_id)
        before_role = before.role if before is not None else None
        settled = before.settled() if before is not None else None
        changed = self.membership.observe(message, source_ip, now)
        if changed:
            self.peers_dirty = self._plan_dirty = True
            self._count_member(message.node_id, before_role)
        # A member at rest hearing a known member's routine STATUS or a probe it answers at
        # once: nothing for the tick to do before its next deadline (at most a probe interval
        # away), so none is run for it (the loop's cost per datagram at 200 members).
        self.quiet = (not changed and message.kind in QUIET_KINDS and before is not None
                      and self.life.phase is Phase.OPERATE and before.settled() == settled)
        if message.kind == "IDENTIFY":  # (requests) the advisor waits to see it, if asked
            self.peers_dirty = True
            self.peers_urgent = self.peers_urgent or asks_me
        self.prober.heard(message.node_id, now)  # every message is a sign of life
        if message.kind in PROBE_KINDS:
            self._handle_probe(message, source_ip, now)
        elif message.kind == "HELLO":
            if not self._welcomes(message, now):
                return
            members = len(self.membership.established()) + (1 if self.identity else 0)
            addresses = self.discovery.welcome_list(self._known_ips(), source_ip, now)
            self._reply("WELCOME", source_ip, to=message.node_id, role=self.role, members=members,
                        joining_since=None if self.identity else self.life.joining_since_text(),
                        capabilities=self.capabilities,
                        **({"addresses": addresses} if addresses is not None else {}))
        elif message.kind in ("TASK", "RESULT", "ACK", "CANCEL", "LOGS", "LOGDATA"):
            self._send_all(self.tasks.handle(message, source_ip, self.membership.members,
                                             self.node_id, self.role, now))
        else:
            if message.kind == "WELCOME":
                new = self.discovery.learn(welcome_addresses(message), now, self._known_ips())
                self._hello_to([(ip, self.config.port) for ip in new])
            self.life.on_message(message)

    def _welcomes(self, message: Message, now: float) -> bool:
        """Whether to answer a HELLO.  A member does (a repeat in a big hive: see
        _welcomes_as_member).  A node still joining answers only
        what the newcomer needs from it: that it is ahead in the join order (the newcomer must
        wait for it), once per join of the newcomer, unless the HELLO came by unicast (the
        newcomer may hear nobody's broadcasts).  Its keep-alive STATUS, which says when it
        began to join, tells the rest within JOINING_KEEPALIVE.  (100 nodes started together
        would otherwise answer each other's three HELLOs: 30,000 WELCOMEs.)"""
        newcomer = self.membership.joiners.get(message.node_id)
        if newcomer is None and message.get("role"):
            # A member starting again says HELLO by broadcast and by unicast to every member
            # it knew (it has not heard who its broadcasts reach yet): one answer for both.
            key = (message.node_id, message.get("started"))
            if now - self._welcomed_members.get(key, float("-inf")) < REJOIN_WELCOME_GAP:
                return False
            if len(self._welcomed_members) >= 1024:
                self._welcomed_members.clear()
            self._welcomed_members[key] = now
            return True
        if newcomer is None:
            # Membership set it aside: older than what its sender said since (a joiner behind
            # on the HELLOs of 100 nodes joining together, whose senders have their roles by
            # now), or from before its goodbye.  Nobody waits for this answer.
            return False
        if self.discovery.channel == "unicast":
            return True
        if self.identity is not None:
            if message.ts < self._member_since:
                # Said before we were a member (a backlog: 100 joining together, we among
                # them): it did not wait for us, and it hears of us from our STATUS.
                return False
            return self._welcomes_as_member(newcomer)
        since = self.life.joining_since
        if since is None:
            return True
        if newcomer.welcomed == newcomer.joining_since \
                or join_order_key(since, self.node_id) > newcomer.key:
            return False
        newcomer.welcomed = newcomer.joining_since
        return True

    def _welcomes_as_member(self, newcomer) -> bool:
        """A member answers a newcomer's first HELLO; in a hive of more than REPEAT_WELCOMERS
        members, a repeat of it (the same join) only if it is one of about REPEAT_WELCOMERS
        members picked by a hash of both node ids (the newcomer gets that many answers again,
        plenty to ask 16 of them, rather than 200 more WELCOMEs queued ahead of its advice)."""
        repeat = newcomer.welcomed == newcomer.joining_since
        newcomer.welcomed = newcomer.joining_since
        members = len(self.membership.members)
        if not repeat or members <= REPEAT_WELCOMERS:
            return True
        digest = sha256(f"{newcomer.node_id}/{self.node_id}".encode())
        return int.from_bytes(digest[:8], "big") % members < REPEAT_WELCOMERS

    # --- failure detection (probe.py) ----------------------------------------------------------
    def _handle_probe(self, message: Message, source_ip: str, now: float) -> None:
        get = message.get
        if message.kind == "PING":
            outs = self.prober.on_ping(message.node_id, get("to"), get("seq"), source_ip)
        elif get("to", get("target")) != self.node_id and message.kind != "DEAD":
            return  # for a node that had our address before us
        elif message.kind == "PINGREQ":
            outs = self.prober.on_pingreq(message.node_id, source_ip, get("target"),
                                          get("target_ip"), get("seq"), now)
            self._probe_due = now  # a helper's deadline: the prober's schedule changed
        elif message.kind == "PONG":
            if get("incarnation") and get("target") is None:
                self.membership.note_incarnation(message.node_id, parse_ts(get("incarnation")))
            outs = self.prober.on_pong(message.node_id, get("seq"), get("target"),
                                       get("ok") is not False, now)
        elif message.kind == "SUSPECT":
            self._refute(message, now, source_ip)
            return
        else:  # DEAD
            if get("target") == self.node_id:
                self._refute(message, now)
            elif self.membership.declare_dead(
                    get("target"), parse_ts(get("incarnation")), now,
                    f"is dead: no answer to probes (declared by {message.hostname})",
                    self._refutation_window(message.node_id)):
                self.peers_dirty = self._plan_dirty = True
            return
        self._send_probes(outs)

    def _send_probes(self, outs: Sequence[probe.Out]) -> None:
        for out in outs:
            if out.ip is None:
                self._broadcast(out.kind, **out.fields)
            else:
                self._reply(out.kind, out.ip, **out.fields)

    def _refute(self, message: Message, now: float, source_ip: str | None = None) -> None:
        """A SUSPECT or DEAD about this node: say at once, to everyone, that it is alive (a
        STATUS with a new incarnation: a DEAD about the old one is refused by who hears it).
        A prober's first SUSPECT is answered by a STATUS to it alone: it is the only one that
        suspects us (SUSPECT goes to the suspect only), and any sign of life ends its suspicion.
        Its second SUSPECT (a failed round again: our answer was lost, or it cannot hear us)
        gets the STATUS to everyone, one round before it could declare us dead.  (In a hive of
        200 on a loaded machine, every suspicion answered by a broadcast fed the load.)"""
        if self.identity is None:
            return
        if message.kind == "SUSPECT" and source_ip is not None:
            accuser = message.node_id
            before = self._suspected_by.get(accuser)
            if len(self._suspected_by) >= 256:
                self._suspected_by.clear()
            self._suspected_by[accuser] = now
            if before is None or now - before > self._refutation_window(accuser):
                self._heartbeat(self.life.status_state, to=source_ip)
                LOG.info("%s suspects this node: telling it that it is alive", message.hostname)
                return
        if now - self._last_refute < timing.REFUTE_MIN_GAP:
            return
        self._last_refute = now
        self.incarnation = self.prober.incarnation = format_ts(self.stamp())
        self._status_at_once(now)  # the STATUS goes out at this tick
        LOG.info("%s says this node is %s: telling the hive it is alive", message.hostname,
                 "suspected" if message.kind == "SUSPECT" else "dead")

    def _refutation_window(self, accuser: str) -> float:
        """How recent a refutation must be to contradict a DEAD: the accuser's failed rounds
        (PROBE_FAILED_ROUNDS + 1 of its probe intervals) and a second of slack."""
        member = self.membership.members.get(accuser)
        interval = member.probe if member is not None and member.probe > 0 \
            else self.config.probe_interval or timing.PROBE_INTERVAL_DEFAULT
        return (timing.PROBE_FAILED_ROUNDS + 1) * interval + 1.0

    def _tick_probes(self, now: float) -> float:
        if now < self._probe_due:
            return self._probe_due  # (the ring is only built when the prober has work)
        ring = {m.node_id: probe.Target(m.node_id, m.ip, m.incarnation, m.hostname)
                for m in self.membership.members.values()
                if m.probe > 0 and m.node_id != self.node_id}
        outs, due = self.prober.tick(now, ring)
        for dead in self.prober.deaths:
            if self.membership.declare_dead(dead.node_id, dead.incarnation, now,
                                            "is dead: no answer to probes, direct or indirect"):
                self.peers_dirty = self._plan_dirty = True
        self.prober.deaths.clear()
        self._send_probes(outs)
        self._probe_due = due
        return due

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
        self.healer.node_id = self.life.node_id = self.prober.node_id = self.node_id
        state.write_node_id(self.config.node_id_path, self.node_id)
        self.started_text = format_ts(self.clock())
        LOG.warning("Node id %s is also used by %s (%s), which has had it longer (a cloned "
                    "machine?): this node now uses %s", old, other.hostname, other.primary_ip,
                    self.node_id)
        if self.identity is not None:
            self._update_identity(node_id=self.node_id)
            self._broadcast("HELLO", role=self.identity["role"], capabilities=self.capabilities)
            self._status_at_once(float("-inf"))  # and a heartbeat at the next tick
        else:
            self.life.restart()  # the hive knew our joining under the old id: start over
        self.peers_dirty = True

    # --- time -------------------------------------------------------------------------------
    def tick(self, now: float) -> float:
        self.now = now
        if self.membership.expire(now):
            self.peers_dirty = self._plan_dirty = True
        deadlines = [self.membership.next_deadline()]
        if self.life.phase in (Phase.OPERATE, Phase.MOVE):  # a member: probes and is probed
            deadlines.append(self._tick_probes(now))
        deadlines.append(self._tick_life(now))
        if self.life.phase in (Phase.OPERATE, Phase.MOVE):
            if self.life.phase is Phase.OPERATE:
                deadlines.append(self._tick_heal(now))
                deadlines.append(self._tick_life(now))  # a move may have begun
            if now >= self.next_heartbeat:
                if self._status_due(now):
                    self._heartbeat(self.life.status_state)
                self.next_heartbeat = now + self.config.heartbeat_interval
                self.peers_dirty = True  # refresh last_seen once per interval
                self._hello_to(self.discovery.seeds_due(
                    [m.ip for m in self.membership.members.values()], now))
            deadlines.append(self.next_heartbeat)
            deadlines.append(self._tick_provisioning(now))
            outs, due = self.tasks.tick(now, self.membership.members, self.role)
            self._send_all(outs)
            deadlines.append(due)
        if self.control is not None:
            deadlines.append(self.control.tick(now))
        if self.discovery.registry is not None and self._discovery_started:
            self.discovery.registry.set_record(self._etcd_record(),
                                               joining=self.identity is None)
        if self.peers_dirty:
            due = self._peers_written + self.peers_gap()
            if self.peers_urgent or now >= due:
                self.metrics_dirty = True
                self._write_peers(now)
            else:
                deadlines.append(due)
        for message, source_ip in self._relays:
            self._relay(message, source_ip)
        self._relays.clear()
        self.state_file.update(self.life.phase, self.identity, self.life.expected_advisors,
                               len(self.life.advice))
        deadlines.append(self._tick_metrics(now))
        return min(deadlines)

    def _tick_life(self, now: float) -> float:
        """Run the join/move state machine; send what it asks, apply what it decides."""
        if self.life.phase is Phase.NEW:
            self.start(now)  # reads identity.json: operate with it, or discover
        self.life.behind = self.behind
        deadline = self.life.tick(now)
        for send in self.life.outbox:
            self._send(send)
        self.life.outbox.clear()
        for decision in self.life.decisions:
            self._apply(decision, now)
        self.life.decisions.clear()
        if self.life.move_failed:  # the move gave nothing: the need must last another grace
            self.life.move_failed = False
            self.healer.retry_later(now)
            self._plan_dirty = self.peers_dirty = True
            self.next_heartbeat = now + self.config.heartbeat_interval
        return deadline

    def _send(self, send: Send) -> None:
        if send.kind == "STATUS":
            self._heartbeat(**send.fields)
        elif send.to is None:
            self._broadcast(send.kind, **send.fields)
        else:
            self._reply(send.kind, send.to, **send.fields)

    def _apply(self, decision: Settle, now: float) -> None:
        """Write the identity the hive decided on, then announce it and install its packages."""
        wall = format_ts_seconds(self.clock())
        if decision.move:
            if self.identity is None or not os.path.exists(self.config.identity_path):
                self.life.role = self.role  # hive reset meanwhile: not written back
                self.healer.retry_later(now)
                return
            identity = {**self.identity, **decision.identity, "changed_at": wall}
        else:
            identity = {**decision.identity, "assigned_at": wall, "node_id": self.node_id,
                        "hostname": self.hostname}
            self._member_since = self.clock()
        identity.update(provisioned=False, provision_error=None)
        if decision.move:
            self.counters.own_moves += 1
        else:
            self.counters.own_joins += 1
        state.write_json_atomic(self.config.identity_path, identity)
        if identity["assigned_by"] == ["self"]:
            LOG.info("Identity: %s", identity["role"])
        else:
            LOG.info("Consensus: I am a '%s'", identity["role"])
            if identity["packages"]:
                LOG.info("Packages: %s", ", ".join(identity["packages"]))
        self.identity = identity
        self._identity_removed = False
        self._plan_dirty = self.peers_dirty = True
        self._status_at_once(now)  # announce the new role at once: waiting joiners go next
        self.provisioner.request(identity["packages"], now)

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
                          "moving" if self.life.phase is Phase.MOVE else "active",
                          self.tasks.queue_depth())

    def policy_view(self, now: float) -> dict:
        """The hive as policies see it: this node and the established members, in one view."""
        me = self._self_view()
        peers = [m.view(now) for m in self.membership.established(exclude=[self.node_id])]
        return {"self": me, "peers": peers, "members": [me] + peers}

    def _plan_from(self, view: dict, answer: tuple[bool, object]) -> plans.Plan | None:
        """The plan for a view, given what desired_roles answered for it (ok, value)."""
        ok, desired = answer
        try:
            if not ok:
                error = f"{type(desired).__name__}: {desired}"  # what the policy raised
            else:
                plan = plans.compute(plans.members_from_view(view["members"]), desired,
                                     self.clock(), self.config.cooldown)
        except Exception as exc:  # a policy's bad answer: no healing until it is fixed
            ok, error = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            if error != self._plan_error:  # said once
                LOG.error("Cannot plan the hive's roles (desired_roles: %s); not rebalancing",
                          error)
                self._plan_error = error
            return None
        self._plan_error = ""
        return plan

    def _update_plan(self, now: float) -> float:
        """Recompute the plan when the view changed (and once per heartbeat).  A user's policy
        runs off the loop (OffLoop): the plan is updated when it answers; until then, and if it
        is late, the last plan stands."""
        if isinstance(self.desired_roles, OffLoop):
            job = self.desired_roles
            answer = job.result()
            if answer is not None:
                self.plan = self._plan_from(job.context, answer)
            elif job.late(now) and not self._plan_late:
                self._plan_late = True
                LOG.warning("The policy's desired roles take more than %gs; keeping the last "
                            "plan", job.timeout)
            if (self._plan_dirty or now >= self._next_plan) and not job.busy:
                view = self.policy_view(now)
                job.start(now, view, context=view)
                self._plan_dirty, self._plan_late = False, False
                self._next_plan = now + self.config.heartbeat_interval
            return now + timing.POLICY_POLL if job.busy else self._next_plan
        if self._plan_dirty or now >= self._next_plan:
            view = self.policy_view(now)
            try:
                answer = (True, self.desired_roles(view))
            except Exception as exc:  # (the built-in policy's: a bug)
                answer = (False, exc)
            self.plan = self._plan_from(view, answer)
            self._plan_dirty = False
            self._next_plan = now + self.config.heartbeat_interval
        return self._next_plan

    def _tick_heal(self, now: float) -> float:
        if self.desired_roles is None or self.identity is None:
            return float("inf")
        wake = self._update_plan(now)
        moving = self.membership.any_moving(now)
        step = self.healer.step(self.plan, now, moving)
        for line in step.lines:
            LOG.info("%s", line)
        if step.move is not None and self._identity_removed is False \
                and os.path.exists(self.config.identity_path):
            self.life.begin_move(now)
            self.next_heartbeat = now + self.config.heartbeat_interval
            self.peers_dirty = True
            return now
        return min(step.wake, wake)

    # --- provisioning and role hooks (provision.Provisioner and hooks.RoleHooks do the work;
    # here: identity.json) ------------------------------------------------------------------------
    def _tick_provisioning(self, now: float) -> float:
        deadline, fields = self.provisioner.tick(now)
        if fields is not None and self.identity is not None:
            self._update_identity(**fields)
        # The role's hooks run once its packages are settled (installed, failed or not to be
        # installed); at start, unless identity.json says they ran cleanly for this role.
        if self.identity is not None and not self.provisioner.busy:
            self.role_hooks.want(self.identity)
        hooks_deadline, fields = self.role_hooks.tick(now)
        if fields is not None and self.identity is not None:
            self._update_identity(**fields)
        return min(deadline, hooks_deadline)

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

    def peers_gap(self) -> float:
        """The least time between two rewrites of peers.json (timing.PEERS_WRITE_GAP_*): in
        proportion to the members and joining nodes it lists; PEERS_WRITE_GAP_JOINING while
        this node joins (its advisor advises nobody: the file is for the user alone) or a crowd
        does (JOINING_KEEPALIVE_PEERS or more: the file changes at every one that settles).
        A request this node's advisor must answer is written at once all the same."""
        joiners = len(self.membership.joiners)
        gap = min(timing.PEERS_WRITE_GAP_MAX,
                  timing.PEERS_WRITE_GAP_PER_MEMBER * (len(self.membership.members) + joiners))
        if self.identity is None or joiners >= timing.JOINING_KEEPALIVE_PEERS:
            return max(gap, timing.PEERS_WRITE_GAP_JOINING)
        return gap

    def _write_peers(self, now: float) -> None:
        wall = self.clock()
        me = {"hostname": self.hostname, "primary_ip": self.iface.address, "role": self.role,
              "node_id": self.node_id,
              "status": {Phase.OPERATE: "active", Phase.MOVE: "moving"}.get(self.life.phase,
                                                                             "joining")}
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
            "joiners": self.membership.joiners_json(),  # the advisor's batches (mass joins)
            "peers": [{**m.to_json(wall - now), "reached": self.discovery.reached(m.ip, now)}
                      for m in self.membership.established(exclude=[self.node_id])],
            "discovery": self.discovery.describe(now),
            "updated_at": format_ts_seconds(wall),
        }
        try:
            self._peers_writer.write(self.config.peers_path, data)
        except OSError as exc:
            LOG.error("Cannot write %s: %s", self.config.peers_path, exc)
        self.peers_dirty = self.peers_urgent = False
        self._peers_written = now

    # --- metrics (metrics.py) -----------------------------------------------------------------
    def _count_member(self, node_id: str, before_role: str | None) -> None:
        """After the view changed for ``node_id``: a member that appeared, or changed role."""
        self.metrics_dirty = True
        member = self.membership.members.get(node_id)
        if member is not None and before_role is None:
            self.counters.peer_joins += 1
        elif member is not None and member.role != before_role:
            self.counters.peer_moves += 1

    def _tick_metrics(self, now: float) -> float:
        """Write the metrics file when the view changed (at most every METRICS_MIN_GAP) and
        at least every heartbeat interval; returns when to look again."""
        if not self.exporter.path:
            return float("inf")
        if self.metrics_dirty:
            if now < self.metrics_written + timing.METRICS_MIN_GAP:
                return self.metrics_written + timing.METRICS_MIN_GAP
        elif now < self.metrics_written + self.config.heartbeat_interval:
            return self.metrics_written + self.config.heartbeat_interval
        self.metrics_written, self.metrics_dirty = now, False
        if self.exporter.enabled:
            try:
                text = metrics.render(self.clock(), self._metrics_snapshot(now), self.counters,
                                      self.rejects.counts)
            except Exception:  # a bug here must not stop the agent
                LOG.exception("Cannot render the metrics")
            else:
                self.exporter.write(text)
        return now + self.config.heartbeat_interval

    def _metrics_snapshot(self, now: float) -> metrics.Snapshot:
        identity = self.identity or {}
        moving = self.life.phase is Phase.MOVE
        members = [(self.role, "moving" if moving else "active")] if self.role else []
        members += [(m.role, "moving" if m.is_moving(now) else "active")
                    for m in self.membership.established(exclude=[self.node_id])]
        skipped = str(identity.get("provision_error") or "").startswith(readiness.SKIPPED)
        return metrics.Snapshot(
            self.hostname, self.node_id, self.role,
            parse_ts(self._role_since()) if self.identity else None, self.started_wall,
            (self.state_file.current or ("joining", ""))[0],
            bool(self.identity) and (identity.get("provisioned") is True or skipped),
            members, len(self.membership.joiners))

    # --- lifecycle ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        self.tasks.close()
        if self.control is not None:
            self.control.close()
        LOG.info("Leaving the hive")
        for _ in range(2):  # a goodbye so peers drop us at once; twice in case one is lost
            self._heartbeat("leaving")
        if self.discovery.registry is not None and self._discovery_started:
            self.discovery.registry.stop()  # our etcd key goes with its lease, at once
