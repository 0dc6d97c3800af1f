"""The hive as an Ansible dynamic inventory (the script protocol: --list, --host NAME).

Built from this node's own files, peers.json (the agent's view of the live members, and of
itself) and identity.json, so on the controller, which is a member, `ansible -i hive-inventory
builder -m ping` reaches the hive's builders.  Pure: the files' contents and ``now`` in, the
inventory out.

- One group per role, holding the members the agent lists as alive with that role.  Ansible
  warns about group names with characters other than letters, digits and '_' (and about a
  leading digit), which roles may have ([a-z0-9][a-z0-9._-]*): a role's group is its name with
  every '-' and '.' turned into '_', 'role_' put in front of one that starts with a digit or
  would be a group Ansible or this inventory already uses (all, ungrouped, hive_*), and '_2',
  '_3', ... added when two roles would still get the same group.  ``hive_role`` always carries
  the exact role.
- peers.json lists only the members the agent keeps: heard within 3 of their heartbeats, or 6
  for one that takes part in probing (``probe`` > 0).  A listed member older than that *now* can only come from a stale file
  (build-agent is stopped or hung): it goes into the group ``hive_dead`` and into no role group,
  so a play against a role never waits on hosts the hive would have given up on, while
  `ansible hive_dead --list-hosts` still shows them.  A node that has no role yet (this node,
  while it joins) is in ``ungrouped``.
- Host variables: ``ansible_host`` (its address), the ``hive_*`` facts (node_id, role, status,
  ...), ``hive_capabilities`` (all of them) and each capability as a variable of its own
  (``cpu_cores``, ``ram_gb``, ``has_gpu``, ``arch``, ``os``, ``docker_installed``, ...) when its
  name is a plain variable name that cannot steer Ansible: names starting with ``ansible_`` or
  ``hive_`` and Ansible's magic variables are never set from a member's capabilities, since any
  member could otherwise tell the controller's Ansible how to connect to it (or to run locally).
"""

from __future__ import annotations

import ipaddress
import keyword
import re
from typing import Any

from . import timing
from .protocol import ProtocolError, parse_ts

DEAD_GROUP = "hive_dead"
# Groups Ansible makes itself, and the prefix of this inventory's own groups.
RESERVED_GROUPS = {"all", "ungrouped"}
OWN_PREFIX = "hive_"
_VARIABLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}\Z")
# Ansible's magic and special variables (besides everything ansible_*): never set from a member.
_MAGIC_VARIABLES = frozenset({
    "environment", "group_names", "groups", "hostvars", "inventory_dir", "inventory_file",
    "inventory_hostname", "inventory_hostname_short", "omit", "play_hosts", "playbook_dir",
    "role_name", "role_names", "role_path", "vars",
})
# A second of slack: peers.json stamps last_seen to the second.
_STAMP_SLACK = 1.0


def group_names(roles) -> dict[str, str]:
    """Each role -> its Ansible group (see the module's doc), the same for the same roles."""
    groups: dict[str, str] = {}
    taken: set[str] = set()
    for role in sorted(set(roles)):
        name = role.replace("-", "_").replace(".", "_")
        if name[:1].isdigit() or name in RESERVED_GROUPS or name.startswith(OWN_PREFIX):
            name = f"role_{name}"
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        groups[role] = candidate
        taken.add(candidate)
    return groups


def capability_variables(capabilities: Any) -> dict:
    """The capabilities that may become host variables of their own (see the module's doc)."""
    if not isinstance(capabilities, dict):
        return {}
    return {key: value for key, value in capabilities.items()
            if isinstance(key, str) and _VARIABLE_RE.match(key)
            and not key.startswith(("ansible_", OWN_PREFIX)) and key not in _MAGIC_VARIABLES
            and not keyword.iskeyword(key) and key not in {"true", "false", "none"}}


def _stamp(value: Any) -> float | None:
    try:
        return parse_ts(value)
    except ProtocolError:
        return None


def _address(value: Any) -> str | None:
    try:
        return str(ipaddress.IPv4Address(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _entries(peers: dict, identity: dict | None) -> list[dict]:
    """This node and its peers as peers.json has them (this node first)."""
    entries = []
    me = peers.get("self")
    if isinstance(me, dict):
        me = dict(me)
        me["ip"] = me.get("primary_ip")
        if not isinstance(me.get("role"), str) and isinstance(identity, dict):
            me["role"] = identity.get("role")
        me.setdefault("hostname", (identity or {}).get("hostname"))
        me["_self"] = True
        entries.append(me)
    entries += [p for p in peers.get("peers") or [] if isinstance(p, dict)]
    return entries


def build(peers: dict | None, identity: dict | None, now: float) -> tuple[dict, list[str]]:
    """The `--list` inventory from peers.json and identity.json at wall time ``now``, and the
    problems met (members skipped, a stale view), one line each for standard error."""
    peers = peers if isinstance(peers, dict) else {}
    problems: list[str] = []
    hostvars: dict[str, dict] = {}
    members: list[tuple[str, str | None, bool]] = []   # (host, role, dead)
    for entry in _entries(peers, identity):
        hostname, ip = entry.get("hostname"), _address(entry.get("ip"))
        if not isinstance(hostname, str) or not hostname or ip is None:
            problems.append(f"skipped a member without a hostname or an IPv4 address: "
                            f"{entry.get('hostname')!r} {entry.get('ip')!r}")
            continue
        role = entry.get("role") if isinstance(entry.get("role"), str) else None
        is_self = entry.get("_self") is True
        last_seen = _stamp(entry.get("last_seen"))
        interval = entry.get("interval")
        probed = isinstance(entry.get("probe"), (int, float)) and entry["probe"] > 0
        intervals = timing.DEAD_AFTER_INTERVALS_PROBED if probed else timing.DEAD_AFTER_INTERVALS
        dead = (not is_self and last_seen is not None and isinstance(interval, (int, float))
                and now - last_seen > intervals * interval + _STAMP_SLACK)
        name = hostname
        if name in hostvars:   # two members with one hostname (clones): both stay reachable
            name = f"{hostname}_{str(entry.get('node_id'))[:8]}"
        capabilities = entry.get("capabilities") if isinstance(entry.get("capabilities"),
                                                               dict) else {}
        variables = capability_variables(capabilities)
        variables.update({
            "ansible_host": ip,
            "hive_hostname": hostname,
            "hive_node_id": entry.get("node_id"),
            "hive_role": role,
            "hive_status": "dead" if dead else str(entry.get("status") or "alive"),
            "hive_self": is_self,
            "hive_last_seen": entry.get("last_seen") if not is_self else peers.get("updated_at"),
            "hive_state": entry.get("state"),
            "hive_health": entry.get("health"),
            "hive_joined_at": entry.get("joined_at"),
            "hive_role_since": entry.get("role_since"),
            "hive_capabilities": capabilities,
        })
        hostvars[name] = variables
        members.append((name, role, dead))
    groups = group_names(role for _name, role, _dead in members if role is not None)
    inventory: dict[str, Any] = {}
    for name, role, dead in members:
        group = DEAD_GROUP if dead else groups[role] if role is not None else "ungrouped"
        inventory.setdefault(group, {"hosts": []})["hosts"].append(name)
        hostvars[name]["hive_group"] = group
    for group in inventory.values():
        group["hosts"].sort()
    inventory["_meta"] = {"hostvars": hostvars}
    updated = _stamp(peers.get("updated_at"))
    if dead_hosts := inventory.get(DEAD_GROUP, {}).get("hosts"):
        problems.append(f"peers.json was last written at {peers.get('updated_at')} and lists "
                        f"{len(dead_hosts)} member(s) the agent no longer hears: they are in "
                        f"group {DEAD_GROUP}, not in their role's group (is build-agent "
                        f"running? systemctl status build-agent)")
    elif not peers:
        problems.append("no peers.json: this node has not joined a hive yet, or build-agent "
                        "is not running (hive status)")
    elif updated is None:
        problems.append("peers.json has no valid updated_at")
    return inventory, problems


def host(inventory: dict, name: str) -> dict:
    """`--host NAME`: that host's variables ({} for a host the hive does not know)."""
    return inventory["_meta"]["hostvars"].get(name, {})
