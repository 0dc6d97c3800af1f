"""hive: look at this node's place in the hive.

  hive status      role, who assigned it and when, peers count, hostname, IP, the agent's state
                   (--wait [--timeout S]: block until the node has settled, like
                   `cloud-init status --wait`)
  hive peers       the live members: hostname, IP, role, status, last seen
  hive identity    identity.json
  hive plan        what the hive would change now (healing) and why, without changing anything
  hive reset       remove identity.json and restart build-agent, which asks the hive again
  hive watch       live stream of hive messages on this LAN, verified and decoded
  hive task ...    build work on the hive's workers (run, submit, list, show, wait, cancel, logs;
                   on the controller, as root: see hive task --help)
  hive inventory   the hive as an Ansible dynamic inventory (--list, --host NAME)

Every command takes --config (default /etc/build/hive.toml) and --json.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from typing import Callable

from . import inventory, protocol, readiness, state, taskcli, timing
from .config import Config, ConfigError, load_config, load_secrets, secret_path
from .netif import NetworkError, find_interface, open_broadcast_sockets, open_multicast_socket


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _err(message: str) -> int:
    print(f"hive: {message}", file=sys.stderr)
    return 1


def _read(path) -> dict | None:
    try:
        data = state.read_json(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else None


def cmd_status(config: Config, args, sleep: Callable[[float], None] = time.sleep,
               monotonic: Callable[[], float] = time.monotonic,
               agent_state: Callable[[str], dict] = readiness.current) -> int:
    """With --wait: poll the agent's state until it is settled (exit 0) or failed (exit 1, the
    reason on stderr), or --timeout S seconds passed (exit 1); then print the status."""
    agent = agent_state(str(config.agent_state_path))
    if args.wait:
        deadline = None if args.timeout is None else monotonic() + args.timeout
        while agent["state"] not in readiness.FINAL and (deadline is None
                                                         or monotonic() < deadline):
            sleep(timing.STATUS_WAIT_POLL)
            agent = agent_state(str(config.agent_state_path))
    shown = _show_status(config, args, agent)
    if not args.wait or agent["state"] == "settled":
        return shown
    if agent["state"] == "failed":
        return _err(f"failed: {agent['reason']}")
    return _err(f"still {agent['state']} after {args.timeout:g} s: {agent['reason']}")


def _show_status(config: Config, args, agent: dict) -> int:
    identity = _read(config.identity_path) or {}
    peers = _read(config.peers_path) or {}
    me = peers.get("self") or {}
    summary = {
        "role": identity.get("role"),
        "assigned_by": identity.get("assigned_by"),
        "assigned_at": identity.get("assigned_at"),
        "provisioned": identity.get("provisioned"),
        "hostname": me.get("hostname") or identity.get("hostname"),
        "ip": me.get("primary_ip"),
        "node_id": me.get("node_id") or identity.get("node_id"),
        "peers": len(peers.get("peers") or []),
        "updated_at": peers.get("updated_at"),
        "previous_role": identity.get("previous_role"),
        "changed_at": identity.get("changed_at"),
        "state": me.get("status"),
        "needs": _needs(peers.get("plan")),
        "moving": sorted(p.get("hostname") for p in peers.get("peers") or []
                         if isinstance(p, dict) and p.get("state") == "moving")
        + (["(this node)"] if me.get("status") == "moving" else []),
        "agent": agent,
        "discovery": _discovery(peers.get("discovery"), config),
        "reached": {str(p.get("hostname")): {"ip": p.get("ip"), "via": p.get("reached")}
                    for p in peers.get("peers") or [] if isinstance(p, dict)},
    }
    if args.json:
        _print_json(summary)
        return 0
    if summary["role"] is None:
        print("Role:        (none yet: joining the hive; see journalctl -u build-agent)")
    else:
        print(f"Role:        {summary['role']}")
        print(f"Assigned by: {', '.join(summary['assigned_by'] or [])}")
        print(f"Assigned at: {summary['assigned_at']}")
        print(f"Provisioned: {'yes' if summary['provisioned'] else 'no'}"
              + (f" ({identity.get('provision_error')})" if identity.get("provision_error") else ""))
    if summary["previous_role"]:
        print(f"Changed at:  {summary['changed_at']} (was '{summary['previous_role']}')")
    print(f"Hostname:    {summary['hostname'] or '?'}")
    print(f"IP:          {summary['ip'] or '?'}")
    print(f"Peers:       {summary['peers']}")
    print(f"State:       {agent['state']} ({agent['reason']})")
    print(f"Discovery:   {_methods_line(summary['discovery'])}")
    for name, where in sorted(summary["reached"].items()):
        print(f"  {name:<16} {where['ip'] or '?':<15} {where['via'] or '?'}")
    if summary["role"] is not None:
        print(f"Hive needs:  {summary['needs'] or 'nothing (every role the policy wants is held)'}")
        if summary["moving"]:
            print(f"Moving now:  {', '.join(summary['moving'])}")
    return 0


def _discovery(described: dict | None, config: Config) -> dict:
    """The agent's discovery methods and their state (peers.json), or the configured ones."""
    if isinstance(described, dict) and isinstance(described.get("methods"), list):
        return described
    return {"methods": list(config.discovery)}


def _methods_line(discovery: dict) -> str:
    """'broadcast, seeds (10.77.1.21), etcd (unreachable: ...)'"""
    parts = []
    for method in discovery.get("methods") or []:
        if method == "multicast" and discovery.get("multicast_group"):
            parts.append(f"multicast ({discovery['multicast_group']})")
        elif method == "seeds" and discovery.get("seeds") is not None:
            parts.append(f"seeds ({', '.join(discovery['seeds']) or 'none resolved'})")
        elif method == "etcd" and isinstance(discovery.get("etcd"), dict):
            etcd = discovery["etcd"]
            where = ", ".join(etcd.get("endpoints") or [])
            if etcd.get("reachable") is False:
                parts.append(f"etcd ({where}: unreachable since {etcd.get('since')}: "
                             f"{etcd.get('error')})")
            else:
                parts.append(f"etcd ({where})")
        else:
            parts.append(method)
    return ", ".join(parts) or "?"


def _needs(plan: dict | None) -> str:
    """'1 controller (0 of 1)' for each missing role of the agent's current plan."""
    if not isinstance(plan, dict):
        return ""
    desired, have = plan.get("desired") or {}, plan.get("have") or {}
    return ", ".join(f"{n} {role} ({have.get(role, 0)} of {desired.get(role, 0)})"
                     for role, n in (plan.get("missing") or {}).items())


def cmd_plan(config: Config, args) -> int:
    """The healing plan the local agent computed from its view (peers.json): read, not made,
    so it is exactly what the agent would do; nothing is changed."""
    peers = _read(config.peers_path) or {}
    plan = peers.get("plan")
    if not isinstance(plan, dict):
        return _err("no plan: this node has no identity yet, or build-agent is not running "
                    "(see hive status)")
    if args.json:
        _print_json(plan)
        return 0
    desired, have = plan.get("desired") or {}, plan.get("have") or {}
    roles = list(desired) + sorted(set(have) - set(desired))
    print("ROLE         WANTED  HAVE")
    for role in roles:
        print(f"{role:<12} {desired.get(role, '-')!s:>6}  {have.get(role, 0):>4}")
    if plan.get("disabled"):
        print(f"Rebalancing is off: {plan['disabled']}.")
    elif not plan.get("moves") and not plan.get("blocked"):
        print("Nothing to change: the hive has every role its policy wants.")
    for move in plan.get("moves") or []:
        print(f"Would move: {move['hostname']} from '{move['from']}' to '{move['to']}' "
              f"({move['why']})")
    for why in plan.get("blocked") or []:
        print(f"Cannot fill: {why}")
    print(f"(as of {peers.get('updated_at')}; a move waits for its need to last the grace "
          f"period, then only the mover acts)")
    return 0


def cmd_peers(config: Config, args) -> int:
    peers = (_read(config.peers_path) or {}).get("peers") or []
    if args.json:
        _print_json(peers)
        return 0
    rows = [("HOSTNAME", "IP", "ROLE", "STATUS", "LAST SEEN")]
    rows += [(str(p.get("hostname")), str(p.get("ip")), str(p.get("role")),
              str(p.get("status", "alive")), str(p.get("last_seen", ""))) for p in peers]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    if not peers:
        print("(no peers yet)")
    return 0


def cmd_identity(config: Config, args) -> int:
    identity = _read(config.identity_path)
    if identity is None:
        return _err(f"no identity yet ({config.identity_path} does not exist): "
                    "the agent is joining or not running; see journalctl -u build-agent")
    _print_json(identity)
    return 0


def cmd_reset(config: Config, args, run: Callable = subprocess.run) -> int:
    if os.geteuid() != 0:
        return _err("reset needs root: sudo hive reset")
    try:
        os.unlink(config.identity_path)
        removed = True
    except FileNotFoundError:
        removed = False
    except OSError as exc:
        return _err(f"cannot remove {config.identity_path}: {exc.strerror}")
    restarted = False
    if not args.no_restart:
        if not os.path.isdir("/run/systemd/system") or shutil.which("systemctl") is None:
            return _err("identity removed, but systemd is not running here: "
                        "restart build-agent yourself to ask the hive again")
        result = run(["systemctl", "restart", "build-agent.service"], check=False)
        if result.returncode != 0:
            return _err("identity removed, but 'systemctl restart build-agent' failed: "
                        "see systemctl status build-agent")
        restarted = True
    if args.json:
        _print_json({"removed": removed, "restarted": restarted})
    else:
        print(f"Identity {'removed' if removed else 'was already absent'}; "
              + ("build-agent restarted: it is asking the hive again (journalctl -u build-agent -f)"
                 if restarted else "restart build-agent to ask the hive again"))
    return 0


def describe(message: protocol.Message) -> str:
    """One line for a verified message: its kind-specific fields as key=value."""
    skip = {"kind", "node_id", "hostname", "primary_ip", "ts", "capabilities"}
    fields = " ".join(f"{key}={json.dumps(value, separators=(',', ':'))}"
                      for key, value in message.payload.items() if key not in skip)
    return f"{message.kind:<9} {message.hostname:<12} {fields}".rstrip()


def cmd_watch(config: Config, args) -> int:
    secrets = load_secrets(secret_path(config))
    # The broadcast addresses (and the multicast group), shared with the daemons; the agent's
    # own address is its alone, so unicast from other subnets is not seen here.
    iface = find_interface(config.interface)
    socks = open_broadcast_sockets(iface, config.port)
    if "multicast" in config.discovery:
        socks.append(open_multicast_socket(iface, config.multicast_group, config.port))
    guard = protocol.ReplayGuard()
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    end = time.monotonic() + args.seconds if args.seconds else None
    shown = 0
    if not args.json:
        print(f"Watching UDP {config.port} (broadcasts"
              f"{', multicast' if 'multicast' in config.discovery else ''}; Ctrl-C stops)",
              flush=True)
    try:
        while args.count is None or shown < args.count:
            timeout = None if end is None else end - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            ready = selector.select(timeout)
            if not ready:
                continue
            data, (ip, _port) = ready[0][0].fileobj.recvfrom(protocol.MAX_DATAGRAM + 1)
            now = time.time()
            stamp = time.strftime("%H:%M:%S", time.localtime(now))
            try:
                message = protocol.decode(data, secrets, now, seen=guard)
                if guard.is_replay(message, now):
                    raise protocol.ProtocolError("replayed")
            except protocol.ProtocolError as exc:
                record = {"from": ip, "verified": False, "reason": str(exc), "bytes": len(data)}
                line = f"{stamp} {ip:<15} REJECTED  {exc}"
            else:
                record = {"from": ip, "verified": True, "payload": message.payload}
                line = f"{stamp} {ip:<15} {describe(message)}"
            print(json.dumps(record, sort_keys=True) if args.json else line, flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        for sock in socks:
            sock.close()
    return 0


def cmd_inventory(config: Config, args, now: Callable[[], float] = time.time) -> int:
    """An Ansible dynamic inventory from this node's peers.json and identity.json (the script
    protocol: --list, or --host NAME), as JSON whatever --json says."""
    hive, problems = inventory.build(_read(config.peers_path), _read(config.identity_path), now())
    for problem in problems:
        print(f"hive inventory: {problem}", file=sys.stderr)
    print(json.dumps(inventory.host(hive, args.host) if args.host is not None else hive,
                     indent=2, sort_keys=True))
    return 0


COMMANDS = {"status": cmd_status, "peers": cmd_peers, "identity": cmd_identity,
            "plan": cmd_plan, "reset": cmd_reset, "watch": cmd_watch, "task": taskcli.cmd_task,
            "inventory": cmd_inventory}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    # --config/--json work before or after the command (SUPPRESS keeps the subcommand's
    # absent option from overwriting one given before it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="hive.toml (default /etc/build/hive.toml)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    parser = argparse.ArgumentParser(prog="hive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = sub.add_parser("status", parents=[common], help="this node's role and hive")
    status.add_argument("--wait", action="store_true",
                        help="wait until the node has settled (exit 0) or failed (exit 1)")
    status.add_argument("--timeout", type=_seconds, default=None, metavar="S",
                        help="with --wait: give up after S seconds (exit 1)")
    sub.add_parser("peers", parents=[common], help="the live members")
    sub.add_parser("identity", parents=[common], help="print identity.json")
    sub.add_parser("plan", parents=[common], help="what healing would change now, and why")
    reset = sub.add_parser("reset", parents=[common], help="forget the identity and ask again")
    reset.add_argument("--no-restart", action="store_true",
                       help="only remove identity.json (restart build-agent yourself)")
    watch = sub.add_parser("watch", parents=[common], help="live stream of hive messages")
    watch.add_argument("--count", type=int, default=None, help="stop after N messages")
    watch.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    taskcli.add_parser(sub, common)
    ansible = sub.add_parser("inventory", parents=[common],
                             help="the hive as an Ansible dynamic inventory")
    which = ansible.add_mutually_exclusive_group()
    which.add_argument("--list", action="store_true",
                       help="every group and host with its variables (the default)")
    which.add_argument("--host", metavar="NAME", default=None, help="one host's variables")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        return COMMANDS[args.command](config, args)
    except (ConfigError, NetworkError) as exc:
        return _err(str(exc))
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
