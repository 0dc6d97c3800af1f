"""python3 -m build_advisor --config FILE: run build-advisor in the foreground."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from build_agent.config import ConfigError, load_config, load_secrets, secret_path
from build_agent.daemon import add_config_argument, notify, run, setup_logging
from build_agent.netif import NetworkError, find_interface, open_broadcast_socket

from .advisor import Advisor
from .policy import PolicyError, load_policy

LOG = logging.getLogger("build_advisor")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-advisor", description=__doc__)
    add_config_argument(parser)
    args = parser.parse_args(argv)
    setup_logging("info")
    try:
        config = load_config(args.config)
        setup_logging(config.log_level)
        secrets = load_secrets(secret_path(config))
        policy = load_policy(config.policy)
        iface = find_interface(config.interface)
        sock = open_broadcast_socket(config.port)
    except (ConfigError, NetworkError, PolicyError) as exc:
        LOG.error("build-advisor: %s", exc)
        return 1
    advisor = Advisor(config, secrets, iface, socket.gethostname(), policy)
    advisor.attach(sock)
    LOG.info("build-advisor %s on %s, port %d, policy %s", socket.gethostname(), iface.address,
             config.port, config.policy or "default")
    notify("READY=1", f"STATUS=advising on {iface.address}:{config.port}")
    return run(advisor, [sock])


if __name__ == "__main__":
    sys.exit(main())
