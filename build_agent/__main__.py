"""python3 -m build_agent --config FILE: run build-agent in the foreground."""

from __future__ import annotations

import logging
import os
import sys

from . import daemon, state
from .agent import Agent
from .netif import open_broadcast_sockets, open_unicast_socket

LOG = logging.getLogger("build_agent")


def build(config, secrets, iface):
    os.makedirs(config.state_dir, mode=0o755, exist_ok=True)
    node_id = state.load_or_create_node_id(config.node_id_path)
    hostname = daemon.local_hostname()
    unicast_sock = open_unicast_socket(iface.address, config.port)
    broadcast_socks = open_broadcast_sockets(iface, config.port)
    agent = Agent(config, secrets, iface, node_id, hostname)
    agent.attach(broadcast_socks, unicast_sock)
    LOG.info("build-agent %s on %s (node %s), port %d", agent.hostname, iface.address, node_id,
             config.port)
    return agent, [*broadcast_socks, unicast_sock]


def main(argv: list[str] | None = None) -> int:
    return daemon.main("build-agent", __doc__, argv, build)


if __name__ == "__main__":
    sys.exit(main())
