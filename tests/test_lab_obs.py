"""Integration: observing the hive on real hosts (network namespaces, both daemons running).

- the metrics file (node_exporter's textfile collector) matches the hive and passes promtool;
- `hive watch` shows every datagram a node sends and receives, unicast WELCOME and ADVICE too,
  and marks forged, unsigned and replayed ones; `hive send` is seen and accepted by the hive.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from lab import LAB_SCRIPT, REPO


def metric_samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def metrics_of(lab, i: int) -> dict[str, float] | None:
    try:
        return metric_samples((lab.host_dir(i) / "metrics" / "build_hive.prom").read_text())
    except FileNotFoundError:
        return None


def roles_in_peers_json(lab, i: int) -> collections.Counter:
    """Members by role as host i's peers.json has them, itself included."""
    data = lab.peers(i) or {}
    roles = collections.Counter(p["role"] for p in data.get("peers", []))
    if (data.get("self") or {}).get("role"):
        roles[data["self"]["role"]] += 1
    return roles


def roles_in_metrics(samples: dict[str, float]) -> collections.Counter:
    out = collections.Counter()
    for key, value in samples.items():
        if key.startswith("build_hive_members{") and value:
            role = key.split('role="', 1)[1].split('"', 1)[0]
            out[role] += int(value)
    return out


def in_host_python(lab, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return lab.exec(i, "env", f"PYTHONPATH={REPO}", sys.executable, *args, check=check)


def test_metrics_file_matches_the_hive_and_passes_promtool(make_lab):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    lab = make_lab(heartbeat=1)
    hosts = lab.add(4)
    for i in hosts[:3]:  # host 4 has no node_exporter folder: it must write nothing
        (lab.host_dir(i) / "metrics").mkdir()
    for i in hosts:
        lab.start(i)
        lab.wait(i)

    def consistent() -> bool:
        for i in hosts[:3]:
            samples = metrics_of(lab, i)
            peers = roles_in_peers_json(lab, i)
            if samples is None or sum(peers.values()) != 4 \
                    or roles_in_metrics(samples) != peers:
                return False
        return True
    took = lab.wait_for(consistent, 20, "every metrics file to count the 4 members by role "
                        "as peers.json does")
    size = (lab.host_dir(hosts[0]) / "metrics" / "build_hive.prom").stat().st_size
    print(f"metrics files consistent {took:.2f} s after the 4th identity; {size} bytes")

    for i in hosts[:3]:
        path = lab.host_dir(i) / "metrics" / "build_hive.prom"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        assert os.stat(path).st_uid == 0
        text = path.read_text()
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        samples = metric_samples(text)
        role = lab.role(i)
        assert samples[f'build_hive_role_info{{role="{role}"}}'] == 1
        assert samples['build_hive_agent_state{state="settled"}'] == 1
        assert samples["build_hive_provisioned"] == 1  # install_packages = false: settled
        assert samples["build_hive_own_joins_total"] == 1
        assert samples['build_hive_messages_sent_total{kind="STATUS"}'] >= 1
        assert 0 <= samples["build_hive_role_duration_seconds"] < 120
        assert [p.name for p in path.parent.iterdir()] == ["build_hive.prom"]  # no temp files
    assert not (lab.host_dir(hosts[3]) / "metrics").exists()

    first, third = metrics_of(lab, hosts[0]), metrics_of(lab, hosts[2])
    # build1 saw the three others join; build3 was welcomed and advised by two members.
    assert first["build_hive_peer_joins_total"] == 3
    assert third['build_hive_messages_received_total{kind="WELCOME"}'] >= 2
    assert first['build_hive_messages_sent_total{kind="WELCOME"}'] >= 3

    # A datagram signed with another secret is counted on build1 by reason.
    wrong = lab.dir / "wrong_secret"
    wrong.write_text("a-wrong-secret-0123456789abcdef\n")
    wrong.chmod(0o600)
    toml = lab.dir / "wrong.toml"
    toml.write_text((lab.host_dir(2) / "hive.toml").read_text().replace(
        str(lab.host_dir(2) / "shared_secret"), str(wrong)))
    in_host_python(lab, 2, "-m", "build_agent.cli", "--config", str(toml), "send", "STATUS",
                   "role=builder", "--to", lab.ip(hosts[0]))
    lab.wait_for(lambda: (metrics_of(lab, hosts[0]) or {}).get(
        'build_hive_messages_rejected_total{reason="bad signature"}', 0) >= 1, 5,
        "build1's metrics to count the forged datagram")


class Watch:
    """`hive watch --json` running on a lab host, its output in files; in its own process
    group, stopped as Ctrl-C would (SIGINT) once the test has seen what it needs."""

    def __init__(self, lab, i: int, seconds: float = 120) -> None:
        self.out = lab.dir / f"watch{i}.out"
        self.err = lab.dir / f"watch{i}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([str(LAB_SCRIPT), "hive", str(i), "watch", "--json",
                                          "--seconds", str(seconds)], env=lab.env,
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        lab.wait_for(lambda: "Watching" in self.err.read_text(), 10, "hive watch to start")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    def finish(self, timeout: float = 30) -> list[dict]:
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode == 0, self.err.read_text()
        return self.records()


def kinds(records, direction, status="ok", peer=None) -> collections.Counter:
    side = "to" if direction == "out" else "from"
    return collections.Counter(
        r["payload"]["kind"] for r in records
        if r["direction"] == direction and r["status"] == status and r["payload"]
        and (peer is None or r[side].split(":")[0] == peer))


def test_watch_shows_a_join_unicast_included_and_marks_bad_datagrams(make_lab):
    lab = make_lab(heartbeat=2)
    lab.up(2)
    (newcomer,) = lab.add(1)
    member_watch = Watch(lab, 1)
    newcomer_watch = Watch(lab, newcomer)
    started = time.monotonic()
    lab.start(newcomer)
    lab.wait(newcomer)
    ip1, ip2, ip3 = lab.ip(1), lab.ip(2), lab.ip(newcomer)

    # hive send from build2: a test member the hive accepts (it shows in build1's peers.json).
    sent = lab.hive(2, "send", "STATUS", "node_id=test-ghost-1", "hostname=ghost1",
                    "role=tester", "interval=30", "state=active").stdout
    assert f"from {ip2}:" in sent and ":50555 to" not in sent  # an ephemeral port
    lab.wait_for(lambda: "ghost1" in lab.peer_names(1), 5, "build1 to list ghost1 (hive send)")
    assert {p["hostname"]: p["role"] for p in lab.peers(1)["peers"]}["ghost1"] == "tester"
    # A bad field is refused in one line naming it, and nothing is sent.
    refused = lab.hive(2, "send", "STATUS", "role=Not-A-Role", check=False)
    assert refused.returncode == 1 and "bad field 'role'" in refused.stderr
    assert refused.stderr.count("\n") == 1

    # From build2 to build1: one datagram signed with another secret, one unsigned, and one
    # valid datagram sent twice (the second is a replay).
    script = f"""
import socket, time
from build_agent import protocol
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
now = time.time()
forged = protocol.encode(protocol.make_payload("STATUS", "forger-1", "forger", "{ip2}", now,
                                               role="builder"), b"not-the-hive-secret-0123")
s.sendto(forged, ("{ip1}", 50555))
s.sendto(b'{{"magic":"BUILD/HELLO/v1","payload":{{"kind":"HELLO","hostname":"nosig"}}}}',
         ("{ip1}", 50555))
secret = open("{lab.host_dir(2) / 'shared_secret'}", "rb").read().split()[0]
valid = protocol.encode(protocol.make_payload("STATUS", "replayer-1", "replayer", "{ip2}", now,
                                              role="tester", interval=30), secret)
s.sendto(valid, ("{ip1}", 50555))
time.sleep(0.2)
s.sendto(valid, ("{ip1}", 50555))
"""
    in_host_python(lab, 2, "-c", script)
    lab.wait_for(lambda: sum(1 for r in member_watch.records()
                             if r["payload"] and r["payload"].get("hostname") == "replayer")
                 >= 2, 10, "build1's watch to see the replayed datagram")
    # The member's own heartbeat (every 2 s here) may come after a quick join: wait for one.
    lab.wait_for(lambda: kinds(member_watch.records(), "out")["STATUS"] >= 1, 10,
                 "build1's watch to see one of its own heartbeats go out")
    print(f"join and checks took {time.monotonic() - started:.1f} s")
    member, joiner = member_watch.finish(), newcomer_watch.finish()

    # On the member: the newcomer's HELLO and IDENTIFY in, its own WELCOME (agent) and ADVICE
    # (advisor) out to the newcomer's address (unicast).
    assert kinds(member, "in", peer=ip3)["HELLO"] >= 1
    assert kinds(member, "in", peer=ip3)["IDENTIFY"] >= 1
    assert kinds(member, "out", peer=ip3)["WELCOME"] >= 1
    assert kinds(member, "out", peer=ip3)["ADVICE"] >= 1
    assert kinds(member, "out")["STATUS"] >= 1  # its own heartbeats
    # On the newcomer: WELCOME and ADVICE from both members, arriving by unicast.
    for ip in (ip1, ip2):
        assert kinds(joiner, "in", peer=ip)["WELCOME"] >= 1, ip
        assert kinds(joiner, "in", peer=ip)["ADVICE"] >= 1, ip
    assert all(r["to"].split(":")[0] == ip3 for r in joiner
               if r["direction"] == "in" and r["payload"]
               and r["payload"].get("kind") in ("WELCOME", "ADVICE"))
    assert kinds(joiner, "out")["HELLO"] >= 1 and kinds(joiner, "out")["IDENTIFY"] >= 1

    by_host = collections.defaultdict(list)
    for r in member:
        by_host[(r["payload"] or {}).get("hostname")].append(r)
    assert [r["status"] for r in by_host["forger"]] == ["FORGED"]
    assert by_host["forger"][0]["reason"] == "bad signature" and not by_host["forger"][0]["verified"]
    assert [r["status"] for r in by_host["nosig"]] == ["UNSIGNED"]
    assert [r["status"] for r in by_host["replayer"]] == ["ok", "REPLAYED"]
    ghost = by_host["ghost1"]
    assert [r["status"] for r in ghost] == ["ok"] and ghost[0]["from"].split(":")[0] == ip2
    assert ghost[0]["from"].split(":")[1] != "50555"
    # The secret is never printed.
    secret = (lab.dir / "shared_secret").read_text().strip()
    assert secret not in member_watch.out.read_text() + member_watch.err.read_text()
