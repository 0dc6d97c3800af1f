"""Random datagram loss inside a lab host's network namespace, with nftables.

This kernel has no netem (see /work/shared/LAB-NOTES.md), so every host drops a share of the
hive's datagrams it receives (UDP port 50555) at random: an ``nft`` ``numgen random`` rule on
the input hook of the host's own namespace.  Two counters tell how many datagrams arrived and
how many were dropped.  The table lives and dies with the namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess

HIVE_PORT = 50555
TABLE = "lab"  # table inet lab, chain in (as in LAB-NOTES)


class LossError(Exception):
    pass


def nft_bin() -> str | None:
    return shutil.which("nft")


def ruleset(percent: int, port: int = HIVE_PORT, ports: tuple[int, ...] = ()) -> str:
    """``ports``: several UDP ports (e.g. ours and Serf's) instead of ``port``."""
    if not 0 <= percent <= 100 or isinstance(percent, bool):
        raise ValueError(f"loss must be a whole percentage 0..100, got {percent!r}")
    if any(isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536
           for p in (port, *ports)):
        raise ValueError(f"ports must be 1..65535, got {(port, *ports)!r}")
    match = f"{{ {', '.join(str(p) for p in ports)} }}" if ports else str(port)
    return (f"table inet {TABLE} {{\n"
            f"  chain in {{\n"
            f"    type filter hook input priority 0; policy accept;\n"
            f"    udp dport {match} counter\n"
            f"    udp dport {match} numgen random mod 100 < {percent} counter drop\n"
            f"  }}\n"
            f"}}\n")


def add_loss(ns: str, percent: int, port: int = HIVE_PORT, ports: tuple[int, ...] = ()) -> None:
    """Drop ``percent`` % of the UDP datagrams to ``port`` (or ``ports``) that namespace ``ns``
    receives."""
    result = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"],
                            input=ruleset(percent, port, ports), capture_output=True, text=True,
                            timeout=15)
    if result.returncode != 0:
        raise LossError(f"nft in {ns} failed: {result.stderr.strip() or result.returncode}")


def counters(ns: str) -> tuple[int, int] | None:
    """(datagrams that arrived, datagrams dropped) in ``ns``; None if it has no loss table."""
    result = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet",
                             TABLE], capture_output=True, text=True, timeout=15)
    if result.returncode != 0:
        return None
    return parse_counters(result.stdout)


def parse_counters(text: str) -> tuple[int, int] | None:
    """The two counters from ``nft -j list table``: the rule without a verdict counts every
    datagram, the one with ``drop`` counts the dropped ones."""
    try:
        items = json.loads(text).get("nftables", [])
    except (ValueError, AttributeError):
        return None
    seen = dropped = None
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule:
            continue
        exprs = rule.get("expr", [])
        count = next((e["counter"]["packets"] for e in exprs
                      if isinstance(e, dict) and isinstance(e.get("counter"), dict)), None)
        if count is None:
            continue
        if any(isinstance(e, dict) and "drop" in e for e in exprs):
            dropped = count
        else:
            seen = count
    if seen is None or dropped is None:
        return None
    return seen, dropped
