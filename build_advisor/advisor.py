"""build-advisor: answers a newcomer's IDENTIFY with ADVICE from the policy.

Its view of the hive is the shared Membership code fed with the same broadcasts the agent hears
(STATUS heartbeats, HELLO, goodbyes), topped up from the local agent's peers.json, which holds
what the agent learned from WELCOMEs before this advisor started.  Only a node that has an
identity advises, and never itself.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Sequence

from build_agent import state, timing
from build_agent.config import Config
from build_agent.daemon import Service
from build_agent.membership import Member, Membership
from build_agent.netif import Interface
from build_agent.protocol import Message, make_payload

from .policy import Policy, advise

LOG = logging.getLogger(__name__)


def member_view(member: Member) -> dict:
    return {"node_id": member.node_id, "hostname": member.hostname, "ip": member.ip,
            "role": member.role, "capabilities": dict(member.capabilities)}


def _echo_request_id(identify: Message) -> dict:
    """ADVICE carries the asker's round id, when it sent one (reference nodes do not)."""
    request_id = identify.get("request_id")
    return {"request_id": request_id} if request_id else {}


class Advisor(Service):
    def __init__(self, config: Config, secrets: Sequence[bytes], iface: Interface, hostname: str,
                 policy: Policy, clock: Callable[[], float] = time.time) -> None:
        super().__init__(config, secrets, state.read_node_id(config.node_id_path), clock)
        self.iface = iface
        self.hostname = hostname
        self.policy = policy
        self.membership = Membership(config.heartbeat_interval)
        self.sock = None
        self._peers_mtime = 0.0
        self._next_id_read = 0.0
        self.advised = 0

    def attach(self, sock) -> None:
        self.sock = sock

    def _refresh_from_agent(self, now: float) -> None:
        """Merge members the local agent knows (peers.json) that we have not heard ourselves."""
        if self.node_id is None:
            self.node_id = state.read_node_id(self.config.node_id_path)
        try:
            mtime = os.stat(self.config.peers_path).st_mtime
        except OSError:
            return
        if mtime == self._peers_mtime:
            return
        self._peers_mtime = mtime
        try:
            data = state.read_json(self.config.peers_path) or {}
        except (ValueError, OSError) as exc:
            LOG.warning("Cannot read %s: %s", self.config.peers_path, exc)
            return
        peers = data.get("peers") if isinstance(data, dict) else None
        if isinstance(peers, list):
            self.membership.merge((p for p in peers if isinstance(p, dict)), now, self.clock())

    def handle(self, message: Message, source_ip: str, now: float) -> None:
        self.membership.observe(message, source_ip, now)
        if message.kind == "IDENTIFY":
            self._advise(message, source_ip, now)

    def _advise(self, message: Message, source_ip: str, now: float) -> None:
        self._refresh_from_agent(now)
        if message.node_id == self.node_id:
            return  # a node never advises itself
        identity = state.read_identity(self.config.identity_path)
        if identity is None:
            LOG.debug("Not advising %s: this node has no identity yet", message.hostname)
            return
        me = {"node_id": self.node_id, "hostname": self.hostname, "ip": self.iface.address,
              "role": identity["role"], "capabilities": {}}
        peers = [member_view(m) for m in
                 self.membership.established(exclude=[self.node_id, message.node_id])]
        view = {"self": me, "peers": peers, "members": [me] + peers}
        newcomer = {"node_id": message.node_id, "hostname": message.hostname, "ip": source_ip,
                    "capabilities": dict(message.get("capabilities") or {})}
        advice = advise(self.policy, view, newcomer)
        payload = make_payload("ADVICE", self.node_id, self.hostname, self.iface.address,
                               self.stamp(),
                               to=message.node_id, suggested_role=advice["role"],
                               packages=advice["packages"], config=advice["config"],
                               reason=advice["reason"], **_echo_request_id(message))
        self.send(self.sock, payload, (source_ip, self.config.port))
        self.advised += 1
        LOG.info(" -> %s: become '%s' (%s) [%d peer(s) in view]", message.hostname,
                 advice["role"], advice["reason"], len(peers))

    def tick(self, now: float) -> float:
        self.membership.expire(now)
        if self.node_id is None or now >= self._next_id_read:
            # The agent creates the node id, and replaces it on a cloned machine: follow it
            # (read at most once per PEERS_FILE_POLL, when awake anyway).
            self.node_id = state.read_node_id(self.config.node_id_path) or self.node_id
            self._next_id_read = now + timing.PEERS_FILE_POLL
        return min(self.membership.next_deadline(),
                   now + timing.PEERS_FILE_POLL if self.node_id is None else float("inf"))
