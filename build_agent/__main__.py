"""python3 -m build_agent --config FILE: run build-agent in the foreground."""

from __future__ import annotations

import logging
import os
import sys

from . import daemon, state, timing
from .agent import Agent
from .discovery import Discovery
from .netif import (Listener, enable_multicast_sending, open_broadcast_sockets,
                    open_multicast_socket, open_unicast_socket)
from .offloop import OffLoop

LOG = logging.getLogger("build_agent")


def build(config, secrets, iface):
    os.makedirs(config.state_dir, mode=0o755, exist_ok=True)
    node_id = state.load_or_create_node_id(config.node_id_path)
    hostname = daemon.local_hostname()
    unicast_sock = open_unicast_socket(iface.address, config.port)
    broadcast_socks = open_broadcast_sockets(iface, config.port)
    discovery = Discovery(config, iface, registry=_registry(config, node_id))
    heard = discovery.note_channel
    listeners = [Listener(sock, "broadcast", heard) for sock in broadcast_socks]
    listeners.append(Listener(unicast_sock, "unicast", heard))
    if "multicast" in config.discovery:
        enable_multicast_sending(unicast_sock, iface, config.multicast_ttl)
        listeners.append(Listener(open_multicast_socket(iface, config.multicast_group,
                                                        config.port), "multicast", heard))
    agent = Agent(config, secrets, iface, node_id, hostname,
                  desired_roles=_desired_roles(config), discovery=discovery)
    agent.attach(broadcast_socks, unicast_sock)
    LOG.info("build-agent %s on %s (node %s), port %d, discovery: %s", agent.hostname,
             iface.address, node_id, config.port, ", ".join(config.discovery))
    return agent, listeners


def _registry(config, node_id):
    """The etcd registration, with "etcd" in discovery."""
    if "etcd" not in config.discovery:
        return None
    from .etcd import Registry
    return Registry(config.etcd.endpoints, config.etcd.prefix, node_id,
                    config.heartbeat_interval)


def _desired_roles(config):
    """What the hive wants, for healing: from the same policy file as the advisor (checked and
    loaded the same way); a user's policy runs with a deadline, off the agent's loop."""
    from build_advisor.policy import default_suggest_role, desired_roles_of, load_policy
    policy = load_policy(config.policy)
    desired = desired_roles_of(policy)
    return desired if policy is default_suggest_role else OffLoop(desired, timing.POLICY_TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    return daemon.main("build-agent", __doc__, argv, build)


if __name__ == "__main__":
    sys.exit(main())
