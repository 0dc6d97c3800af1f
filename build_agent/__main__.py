"""python3 -m build_agent --config FILE: run build-agent in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from . import state
from .agent import Agent
from .config import ConfigError, load_config, load_secrets, secret_path
from .daemon import add_config_argument, notify, run, setup_logging
from .netif import NetworkError, find_interface, open_broadcast_socket, open_unicast_socket

LOG = logging.getLogger("build_agent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-agent", description=__doc__)
    add_config_argument(parser)
    args = parser.parse_args(argv)
    setup_logging("info")
    try:
        config = load_config(args.config)
        setup_logging(config.log_level)
        secrets = load_secrets(secret_path(config))
        iface = find_interface(config.interface)
        os.makedirs(config.state_dir, mode=0o755, exist_ok=True)
        node_id = state.load_or_create_node_id(config.node_id_path)
        broadcast_sock = open_broadcast_socket(config.port)
        unicast_sock = open_unicast_socket(iface.address, config.port)
    except (ConfigError, NetworkError) as exc:
        LOG.error("build-agent: %s", exc)
        return 1
    except PermissionError as exc:
        LOG.error("build-agent: permission denied on %s: run as root (or via systemd)",
                  exc.filename)
        return 1
    agent = Agent(config, secrets, iface, node_id, socket.gethostname())
    agent.attach(broadcast_sock, unicast_sock)
    LOG.info("build-agent %s on %s (node %s), port %d", socket.gethostname(), iface.address,
             node_id, config.port)
    notify("READY=1", f"STATUS=listening on {iface.address}:{config.port}")
    return run(agent, [broadcast_sock, unicast_sock])


if __name__ == "__main__":
    sys.exit(main())
