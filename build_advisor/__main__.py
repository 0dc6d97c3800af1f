"""python3 -m build_advisor --config FILE: run build-advisor in the foreground."""

from __future__ import annotations

import logging
import sys

from build_agent import daemon
from build_agent.netif import open_broadcast_sockets

from .advisor import Advisor
from .policy import load_policy

LOG = logging.getLogger("build_advisor")


def build(config, secrets, iface):
    policy = load_policy(config.policy)
    hostname = daemon.local_hostname()
    socks = open_broadcast_sockets(iface, config.port)
    advisor = Advisor(config, secrets, iface, hostname, policy)
    advisor.attach(socks[0])  # ADVICE is sent from it (the source address is the interface's)
    LOG.info("build-advisor %s on %s, port %d, policy %s", advisor.hostname, iface.address,
             config.port, config.policy or "default")
    return advisor, socks


def main(argv: list[str] | None = None) -> int:
    return daemon.main("build-advisor", __doc__, argv, build)


if __name__ == "__main__":
    sys.exit(main())
