"""hive: look at this node's place in the hive.

  hive status      role, who assigned it and when, peers count, hostname, IP, the agent's state
                   (--wait [--timeout S]: block until the node has settled, like
                   `cloud-init status --wait`)
  hive peers       the live members: hostname, IP, role, status, last seen
  hive identity    identity.json
  hive plan        what the hive would change now (healing) and why, without changing anything
  hive reset       remove identity.json and restart build-agent, which asks the hive again
  hive watch       every hive message this node sends and receives (unicast too), decoded,
                   verified (unsigned, forged, replayed ones marked)
  hive send KIND key=value...
                   sign one message with the hive's secret and send it (a test): broadcast,
                   or --to ADDR
  hive task ...    build work on the hive's workers (run, submit, list, show, wait, cancel, logs;
                   on the controller, as root: see hive task --help)
  hive inventory   the hive as an Ansible dynamic inventory (--list, --host NAME)

Every command takes --config (default /etc/build/hive.toml) and --json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Callable

from . import hivesend, inventory, protocol, readiness, state, taskcli, timing, wiretap
from .config import Config, ConfigError, load_config, load_secrets, secret_path
from .netif import NetworkError, find_interface


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


def cmd_watch(config: Config, args, clock: Callable[[], float] = time.time) -> int:
    """Every hive datagram this node sends or receives, from a packet socket (wiretap.py)."""
    if os.geteuid() != 0:
        return _err("watch needs root (it captures packets and verifies them with the secret): "
                    "sudo hive watch")
    secrets = load_secrets(secret_path(config))
    try:
        capture = wiretap.open_capture()
    except PermissionError:
        return _err("watch cannot open a packet socket (CAP_NET_RAW is missing here): "
                    "run it as root on the host, not in a restricted container")
    tap = wiretap.Tap(config.port)
    guard = protocol.ReplayGuard()
    end = time.monotonic() + args.seconds if args.seconds else None
    shown = 0
    print(f"Watching UDP {config.port} on every interface, both directions (Ctrl-C stops)",
          file=sys.stderr if args.json else sys.stdout, flush=True)
    try:
        while args.count is None or shown < args.count:
            timeout = None if end is None else end - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            capture.settimeout(timeout)
            try:
                frame, address = capture.recvfrom(65535)
            except TimeoutError:
                break
            now = clock()
            seen = tap.feed(frame, address, now)
            if seen is None:
                continue
            direction, datagram = seen
            # Replays are judged as the receiving daemons judge them: what arrives here.
            verdict = wiretap.classify(datagram.data, secrets, now,
                                       guard if direction == "in" else None)
            if direction == "in" and tap.copy_of_recent(datagram, now) \
                    and verdict.status == wiretap.REPLAYED:
                verdict.status, verdict.reason = wiretap.DUPLICATE, "a copy sent to another " \
                    "of this node's addresses (ignored by the daemons)"
            if args.json:
                print(json.dumps({"time": protocol.format_ts(now), "direction": direction,
                                  "from": f"{datagram.src}:{datagram.sport}",
                                  "to": f"{datagram.dst}:{datagram.dport}",
                                  "interface": address[0], "status": verdict.status,
                                  "verified": verdict.status == wiretap.OK,
                                  "reason": verdict.reason, "payload": verdict.payload,
                                  "bytes": len(datagram.data)}, sort_keys=True), flush=True)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(now))
                peer = datagram.dst if direction == "out" else datagram.src
                mark = verdict.status if not verdict.reason else \
                    f"{verdict.status} ({verdict.reason})"
                print(f"{stamp} {'->' if direction == 'out' else '<-'} {peer:<15} "
                      f"{wiretap.describe(verdict.payload, datagram.data)}"
                      + ("" if verdict.status == wiretap.OK else f"  [{mark}]"), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        capture.close()
    return 0


def cmd_send(config: Config, args, clock: Callable[[], float] = time.time) -> int:
    """Sign one message with the hive's secret and send it (hivesend.py)."""
    try:
        fields = hivesend.parse_fields(args.fields)
    except hivesend.SendError as exc:
        return _err(f"send: {exc}")
    secrets = load_secrets(secret_path(config))
    iface = find_interface(config.interface)
    node_id = state.read_node_id(config.node_id_path)
    if node_id is None and "node_id" not in fields:
        return _err(f"send: this node has no node id yet ({config.node_id_path}): give one, "
                    f"e.g. node_id=test-1")
    try:
        payload, data = hivesend.build(args.kind, fields, node_id or "", socket.gethostname(),
                                       iface.address, clock(), secrets[0])
        address = hivesend.destination(args.to, iface.broadcast, config.port)
    except hivesend.SendError as exc:
        return _err(f"send: {exc}")
    try:
        port = hivesend.send(data, iface.address, address)
    except OSError as exc:
        return _err(f"send: cannot send to {address[0]}:{address[1]}: {exc.strerror or exc}")
    if args.json:
        _print_json({"to": f"{address[0]}:{address[1]}", "from_port": port, "payload": payload,
                     "bytes": len(data)})
    else:
        print(f"Sent {payload['kind']} ({len(data)} bytes, signed) from {iface.address}:{port} "
              f"to {address[0]}:{address[1]}")
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
            "plan": cmd_plan, "reset": cmd_reset, "watch": cmd_watch, "send": cmd_send,
            "task": taskcli.cmd_task, "inventory": cmd_inventory}


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
    watch = sub.add_parser("watch", parents=[common],
                           help="every hive message this node sends and receives")
    watch.add_argument("--count", type=int, default=None, metavar="N",
                       help="stop after N messages")
    watch.add_argument("--seconds", type=_seconds, default=None, metavar="S",
                       help="stop after S seconds")
    send = sub.add_parser("send", parents=[common],
                          help="sign and send one hive message (a test)",
                          description="Sign one message with the hive's secret and send it "
                          "from an ephemeral port.  Values: numbers, true/false/null, [lists] "
                          "and {objects} as JSON, anything else as text.  node_id, hostname "
                          "and primary_ip default to this node's.",
                          epilog="example: sudo hive send STATUS node_id=test-1 hostname=ghost1 "
                          "role=tester interval=30")
    send.add_argument("kind", metavar="KIND", help="HELLO, STATUS, ... (any kind of the "
                      "protocol)")
    send.add_argument("fields", metavar="key=value", nargs="*", help="the payload's fields")
    send.add_argument("--to", metavar="ADDR", default=None,
                      help="send to ADDR[:PORT] only (default: the interface's broadcast "
                      "address)")
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
