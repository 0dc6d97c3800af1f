"""python3 -m build_advisor --config FILE: run build-advisor in the foreground."""

from __future__ import annotations

import logging
import sys

from build_agent import daemon
from build_agent.netif import (Listener, open_broadcast_sockets, open_multicast_socket,
                               open_relay_socket)

from .advisor import Advisor
from .policy import load_policy

LOG = logging.getLogger("build_advisor")


def build(config, secrets, iface):
    policy = load_policy(config.policy)
    hostname = daemon.local_hostname()
    socks = open_broadcast_sockets(iface, config.port)
    advisor = Advisor(config, secrets, iface, hostname, policy)
    advisor.attach(socks[0])  # ADVICE is sent from it (the source address is the interface's)
    heard = advisor.note_channel
    listeners = [Listener(sock, "broadcast", heard) for sock in socks]
    if "multicast" in config.discovery:
        listeners.append(Listener(open_multicast_socket(iface, config.multicast_group,
                                                        config.port), "multicast", heard))
    # IDENTIFY that reached the agent's own address (from another subnet), handed over by it.
    listeners.append(Listener(open_relay_socket(config.port), "relay", heard))
    LOG.info("build-advisor %s on %s, port %d, policy %s", advisor.hostname, iface.address,
             config.port, config.policy or "default")
    return advisor, listeners


def main(argv: list[str] | None = None) -> int:
    return daemon.main("build-advisor", __doc__, argv, build)


if __name__ == "__main__":
    sys.exit(main())
