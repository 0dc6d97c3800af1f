"""Integration: the advisor hears only its agent (issue 12: a node's two daemons must not both wake
for every broadcast of the hive).  Real hosts (network namespaces, scripts/hive-lab)."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

from lab import sequential_counts

PORT = 50555


def udp_sockets(lab, i: int, daemon: str) -> list[tuple[str, int]]:
    """The (address, port) of every UDP socket the daemon of host i has (ss, in its namespace)."""
    pid = lab.pid(i, daemon)
    out = lab.exec(i, "ss", "-H", "-u", "-a", "-n", "-p").stdout
    found = []
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        local = line.split()[3]  # State Recv-Q Send-Q Local Peer Process
        address, _, port = local.rpartition(":")
        found.append((address, int(port)))
    return sorted(found)


def usage(pid: int) -> tuple[float, int]:
    """(CPU seconds on the CPU, voluntary context switches, i.e. wake-ups) of a process."""
    cpu_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    switches = next(int(s.split()[1]) for s in status if s.startswith("voluntary_ctxt_switches"))
    return cpu_ns / 1e9, switches


def test_the_advisor_hears_only_its_agent_and_still_advises_every_join(make_lab):
    """(1) Joins one after another and four at once are advised by every member's advisor.
    (2) No advisor has a socket on the broadcast address (nor the wildcard, nor the hive's port
    on its interface): its only sockets are 127.0.0.1:50555 (the agent's hand-offs) and one to
    send ADVICE from the interface's address.  (3) While the hive exchanges STATUS every second,
    the advisors do not wake: their CPU time and wake-ups stay flat, the agents' do not."""
    lab = make_lab(heartbeat=1)
    lab.up(3)
    new = lab.add(4)
    lab.start(*new)
    lab.wait(*new, timeout=60)
    hosts = [1, 2, 3] + new
    roles = lab.roles()
    assert collections.Counter(roles.values()) == sequential_counts(7), roles
    for i in [2, 3] + new:  # every joiner heard ADVICE from every member before it
        members = [1, 2] if i == 3 else [1] if i == 2 else [1, 2, 3]
        log = lab.log(i)
        for m in members:
            assert f" <- build{m}: become '{roles[i]}'" in log, (i, m, log)
            assert f" -> build{i}: become '{roles[i]}'" in lab.log(m, "advisor"), (i, m)
        assert len(lab.identity(i)["votes"]) == 1, lab.identity(i)

    broadcast = lab.subnet + ".255"
    for i in hosts:
        sockets = udp_sockets(lab, i, "advisor")
        assert len(sockets) == 2 and ("127.0.0.1", PORT) in sockets, (i, sockets)
        [(address, port)] = [s for s in sockets if s != ("127.0.0.1", PORT)]
        assert address == lab.ip(i) and port != PORT, (i, sockets)  # sends ADVICE only
        assert not {a for a, _ in sockets} & {broadcast, "255.255.255.255", "0.0.0.0", "*"}
        assert (broadcast, PORT) in udp_sockets(lab, i, "agent")  # the hive's broadcasts: agent

    window = 10.0
    time.sleep(2)  # the joins' last datagrams are handled
    pids = {(i, d): lab.pid(i, d) for i in hosts for d in ("agent", "advisor")}
    before = {key: usage(pid) for key, pid in pids.items()}
    time.sleep(window)
    after = {key: usage(pid) for key, pid in pids.items()}
    delta = {key: (after[key][0] - before[key][0], after[key][1] - before[key][1])
             for key in pids}
    tck = os.sysconf("SC_CLK_TCK")  # (for the record: the resolution of utime/stime)
    for daemon in ("agent", "advisor"):
        cpu = sorted(delta[(i, daemon)][0] * 1000 for i in hosts)
        wakes = sorted(delta[(i, daemon)][1] for i in hosts)
        print(f"\n{daemon}s, 7 hosts exchanging STATUS every 1 s, over {window:g} s: CPU ms "
              f"median {cpu[3]:.2f} (min {cpu[0]:.2f}, max {cpu[-1]:.2f}); voluntary context "
              f"switches median {wakes[3]} (min {wakes[0]}, max {wakes[-1]}) [clock tick "
              f"{1000 / tck:g} ms]")
    for i in hosts:
        # Each agent hears 6 STATUS a second (60 in the window) and wakes for them; before,
        # its advisor woke as often.  Now it has nothing to wake for.
        assert delta[(i, "agent")][1] >= 30, delta
        assert delta[(i, "advisor")][1] <= 3, (i, delta[(i, "advisor")])
    for i in hosts:
        assert "Traceback" not in lab.log(i, "advisor") and "Traceback" not in lab.log(i)
