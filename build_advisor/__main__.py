"""python3 -m build_advisor --config FILE: run build-advisor in the foreground."""

from __future__ import annotations

import logging
import sys

from build_agent import daemon
from build_agent.netif import RelayListener, open_relay_socket, open_sending_socket

from .advisor import Advisor
from .policy import load_policy

LOG = logging.getLogger("build_advisor")


def build(config, secrets, iface):
    policy = load_policy(config.policy)
    hostname = daemon.local_hostname()
    # It hears only its agent, on 127.0.0.1 (every IDENTIFY the agent accepted), never the
    # hive's broadcasts; it sends ADVICE from the interface's address (see build_agent.netif).
    relay = RelayListener(open_relay_socket(config.port), (iface.address, config.port))
    advisor = Advisor(config, secrets, iface, hostname, policy)
    advisor.attach(open_sending_socket(iface.address))
    LOG.info("build-advisor %s on %s, port %d, policy %s", advisor.hostname, iface.address,
             config.port, config.policy or "default")
    return advisor, [relay]


def main(argv: list[str] | None = None) -> int:
    return daemon.main("build-advisor", __doc__, argv, build)


if __name__ == "__main__":
    sys.exit(main())
