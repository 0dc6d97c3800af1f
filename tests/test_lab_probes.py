"""Integration: failure detection by probing across lab hosts, at the default heartbeat (10 s).

A kill -9 is noticed by every member long before the heartbeat rule could (it needs 20-30 s), a
member whose agent stalls for 1.5 s (SIGSTOP) or whose input is dropped for 1.5 s stays a member,
and a reference-script node (which answers no PING) stays a member of a probing hive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from lab import REPO

DATA = REPO / "tests" / "data"


def everyone_lists_everyone(lab, hosts) -> bool:
    return all(lab.peer_names(i) >= {f"build{j}" for j in hosts if j != i} for i in hosts)


def deaths(lab, hosts, name: str) -> list[str]:
    return [f"build{i}: {line}" for i in hosts for line in lab.log(i).splitlines()
            if f"Peer {name} (" in line and " is dead" in line]


def test_a_killed_member_is_dropped_everywhere_within_seconds_at_heartbeat_10(make_lab):
    lab = make_lab(heartbeat=10)
    lab.up(5)
    hosts = [1, 2, 3, 4, 5]
    lab.wait_for(lambda: everyone_lists_everyone(lab, hosts), 20, "everyone to list everyone")
    time.sleep(1.3)  # a few probe rounds of the full ring
    lab.kill(3)
    killed = time.monotonic()
    lab.wait_for(lambda: all("build3" not in lab.peer_names(i) for i in (1, 2, 4, 5)), 25,
                 "build3 to leave every peers.json", step=0.02)
    took = time.monotonic() - killed
    print(f"kill -9 dropped by every member after {took:.2f} s (heartbeat 10 s, probes 1 s)")
    # The heartbeat rule alone needs 3 heartbeats after the last one: at least 20 s.
    assert took < 15, took
    lines = deaths(lab, [1, 2, 4, 5], "build3")
    assert any("no answer to probes, direct or indirect" in line for line in lines), lines
    assert sum("declared by" in line for line in lines) == 3, lines  # the others applied DEAD
    assert all(len(lab.peer_names(i)) == 3 for i in (1, 2, 4, 5))


def test_a_member_that_stalls_or_goes_deaf_for_1_5_s_is_not_declared_dead(make_lab):
    lab = make_lab(heartbeat=10)
    lab.up(4)
    hosts = [1, 2, 3, 4]
    lab.wait_for(lambda: everyone_lists_everyone(lab, hosts), 20, "everyone to list everyone")
    time.sleep(1.3)
    victim = 2
    pid = lab.pid(victim)
    os.kill(pid, signal.SIGSTOP)  # the agent stalls: a starved or paused process
    try:
        time.sleep(1.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(2.0)
    # Its input dropped for 1.5 s (nft, in its namespace): it hears no PING, no PINGREQ
    rules = ("table inet probetest {\n  chain in {\n"
             "    type filter hook input priority 0; policy accept;\n"
             "    udp dport 50555 drop\n  }\n}\n")
    ns = f"{lab.name}-h{victim}"
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, timeout=15)
    try:
        time.sleep(1.5)
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "probetest"],
                       check=True, timeout=15)
    end = time.monotonic() + 4.0  # longer than a detection takes
    while time.monotonic() < end:
        assert all("build2" in lab.peer_names(i) for i in (1, 3, 4)), \
            {i: lab.peer_names(i) for i in (1, 3, 4)}
        time.sleep(0.05)
    assert deaths(lab, [1, 3, 4], "build2") == []
    stalls = [line for i in (1, 3, 4) for line in lab.log(i).splitlines()
              if "Peer build2 (" in line and "suspected" in line]
    print(f"suspicions of build2 over two 1.5 s stalls: {len(stalls)}")


def test_a_reference_node_stays_a_member_of_a_probing_hive(make_lab):
    """A reference-script node answers no PING: it is never probed, never declared dead by
    probes, and stays listed (judged by its own heartbeat cadence, 32 s)."""
    lab = make_lab(heartbeat=10)
    lab.up(3)
    ref = lab.add(1)[0]  # runs no daemon of ours
    # Two HEARTBEATs, 1 s apart, then silence (its next one would come 32 s later).
    lab.exec(ref, lab.env["HIVE_LAB_PYTHON"], str(DATA / "reference_node.py"),
             str(lab.dir / "shared_secret"), f"{lab.subnet}.255", "refnode", lab.ip(ref), "2", "1")
    lab.wait_for(lambda: all("refnode" in lab.peer_names(i) for i in (1, 2, 3)), 5,
                 "every member to list the reference node")
    end = time.monotonic() + 8.0  # twice a probe detection, no answer to any PING meanwhile
    while time.monotonic() < end:
        assert all("refnode" in lab.peer_names(i) for i in (1, 2, 3)), \
            {i: lab.peer_names(i) for i in (1, 2, 3)}
        time.sleep(0.1)
    assert deaths(lab, [1, 2, 3], "refnode") == []
    assert not any("Peer refnode (" in line and "suspected" in line
                   for i in (1, 2, 3) for line in lab.log(i).splitlines())
    # ... while the probing members still watch one another: kill one, the others drop it fast
    lab.kill(3)
    killed = time.monotonic()
    lab.wait_for(lambda: all("build3" not in lab.peer_names(i) for i in (1, 2)), 25,
                 "build3 to leave every peers.json")
    print(f"kill -9 next to a reference node dropped after {time.monotonic() - killed:.2f} s")
    assert time.monotonic() - killed < 15
    assert all("refnode" in lab.peer_names(i) for i in (1, 2))
