"""Integration: hives beyond one broadcast domain, across real hosts (scripts/hive-lab).

Labs of two or three subnets (one bridge each) joined by a router namespace: unicast crosses
it, broadcast and multicast do not.  Every host runs both daemons from this checkout.  Timings
are printed (measurements), never asserted tightly: the machine is shared.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import time

from lab import REPO, log_lines, sequential_counts, sequential_role

DATA = REPO / "tests" / "data"


def seeds_toml(*ips: str) -> str:
    return ('discovery = ["broadcast", "seeds"]\n'
            f'seeds = [{", ".join(json.dumps(ip) for ip in ips)}]\n')


def etcd_toml(url: str) -> str:
    return f'discovery = ["etcd"]\n[etcd]\nendpoints = ["{url}"]\n'


def identity_time(lab, i: int) -> float:
    return os.stat(lab.host_dir(i) / "state" / "identity.json").st_mtime


def start_and_time(lab, i: int, timeout: int = 30) -> float:
    """Start host i; seconds from just before `hive-lab start` to identity.json written."""
    before = time.time()
    lab.start(i)
    lab.wait(i, timeout=timeout)
    return identity_time(lab, i) - before


def gone_everywhere(lab, name: str, observers, timeout: float = 20) -> float:
    return lab.wait_for(lambda: all(name not in lab.peer_names(j) for j in observers), timeout,
                        f"every member to drop {name}", step=0.01)


def listed_everywhere(lab, hosts, timeout: float = 15) -> None:
    names = {i: f"build{i}" for i in hosts}
    lab.wait_for(lambda: all(lab.peer_names(i) == set(names.values()) - {names[i]}
                             for i in hosts), timeout, "every member to list every other")


def summary(values) -> str:
    return (f"median {statistics.median(values):.2f} s "
            f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})")


def test_two_subnets_joined_through_seeds(make_lab):
    """(1) Members on two subnets, joined through seeds (plus a seed that is down and seeds that
    are the newcomer itself): the one-after-another roles, every member lists every other,
    and failure detection and goodbyes work across the router.  Measures join time and failure
    detection across the router against within one subnet."""
    lab = make_lab(heartbeat=1, subnets=2)
    down_seed = f"{lab.subnets[1]}.99"  # no host there
    hosts = [lab.add(1, subnet=s)[0] for s in (1, 2, 1, 2, 2, 1)]
    seeds = seeds_toml(lab.ip(hosts[0]), lab.ip(hosts[1]), down_seed)
    for i in hosts:
        lab.configure(i, seeds)
    for i in hosts:  # one after another, alternating subnets
        lab.start(i)
        lab.wait(i, timeout=30)
    assert [lab.role(i) for i in hosts] == [sequential_role(n) for n in range(1, 7)], \
        lab.roles()
    listed_everywhere(lab, hosts)
    # How each member is reached: broadcast on its own subnet, unicast across the router.
    status = json.loads(lab.hive(hosts[1], "status", "--json").stdout)
    assert status["discovery"]["methods"] == ["broadcast", "seeds"]
    reached = {name: where["via"] for name, where in status["reached"].items()}
    assert reached == {f"build{i}": ("broadcast" if lab.subnet_of(i) == 2 else "unicast")
                       for i in hosts if i != hosts[1]}, reached
    for i in hosts:
        assert "Traceback" not in lab.log(i)

    # Join time: a node on subnet 2 (all seeds' answers come across the router) against one
    # on subnet 1, into the same hive.  Each leaves again (goodbye) before the next sample.
    joins: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(3):
        for s in (1, 2):
            i = lab.add(1, subnet=s)[0]
            lab.configure(i, seeds)
            joins[s].append(start_and_time(lab, i))
            assert lab.role(i) == "runner"
            listed_everywhere(lab, hosts + [i])
            lab.stop(i)  # its goodbye reaches both subnets
            gone_everywhere(lab, f"build{i}", hosts, timeout=5)

    # Failure detection (kill -9) across the router against within the subnet: observers on
    # subnet 1 watch a killed node of subnet 2 and a killed node of subnet 1.
    observers_1 = [i for i in hosts if lab.subnet_of(i) == 1]
    detect: dict[str, list[float]] = {"same subnet": [], "across the router": []}
    leave: dict[str, list[float]] = {"same subnet": [], "across the router": []}
    for victim_subnet, label in ((1, "same subnet"), (2, "across the router")):
        for _ in range(3):
            victim = lab.add(1, subnet=victim_subnet)[0]
            lab.configure(victim, seeds)
            lab.start(victim)
            lab.wait(victim, timeout=30)
            listed_everywhere(lab, hosts + [victim])
            watchers = [i for i in observers_1 if i != victim]
            started = time.monotonic()
            lab.kill(victim)
            gone_everywhere(lab, f"build{victim}", watchers)
            detect[label].append(time.monotonic() - started)  # from just before the kill
            # ... and a graceful stop of a node there: its goodbye crosses the router.
            other = lab.add(1, subnet=victim_subnet)[0]
            lab.configure(other, seeds)
            lab.start(other)
            lab.wait(other, timeout=30)
            listed_everywhere(lab, hosts + [other])
            started = time.monotonic()
            lab.stop(other)
            gone_everywhere(lab, f"build{other}", watchers, timeout=5)
            leave[label].append(time.monotonic() - started)
    for label in detect:
        assert all(t < 3 * 1 + 3 for t in detect[label]), detect  # 3 heartbeats + slack
        assert all(t < 3 for t in leave[label]), leave  # a goodbye, not a timeout
    print(f"\nseeds, heartbeat 1 s: join (start -> identity.json): subnet 1 (broadcast) "
          f"{summary(joins[1])}; subnet 2 (seeds, across the router) {summary(joins[2])}")
    for label in detect:
        print(f"kill -9 -> dropped by every member on subnet 1, {label}: {summary(detect[label])}"
              f"; graceful stop -> dropped: {summary(leave[label])}")
    for i in hosts:
        assert "Traceback" not in lab.log(i)
        assert "Traceback" not in lab.log(i, "advisor")


def test_multicast_forms_the_hive_where_the_bridge_drops_broadcast(make_lab):
    """(2) A LAN whose switch drops broadcast frames (nft bridge rule): with broadcast every
    node founds its own hive; with multicast they form one hive with the sequential roles."""
    lab = make_lab(heartbeat=1, subnets=2)
    broadcast_only = lab.add(3, subnet=2)
    lab.nobcast(2)
    for i in broadcast_only:
        lab.start(i)
        lab.wait(i, timeout=30)
    assert [lab.role(i) for i in broadcast_only] == ["founder"] * 3  # nobody heard anybody

    group = "239.255.0.1"
    hosts = lab.add(4, subnet=2)  # the same dropping bridge
    for i in hosts:
        lab.configure(i, 'discovery = ["multicast"]\n')
    for i in hosts:
        lab.start(i)
        lab.wait(i, timeout=30)
    assert [lab.role(i) for i in hosts] == [sequential_role(n) for n in range(1, 5)], lab.roles()
    listed_everywhere(lab, hosts)
    status = json.loads(lab.hive(hosts[0], "status", "--json").stdout)
    assert status["discovery"] == {"methods": ["multicast"], "multicast_group": group}
    assert {w["via"] for w in status["reached"].values()} == {"multicast"}
    # Every member heard the IDENTIFY on the group (its agent handed it to its advisor): the last
    # one was advised by all.
    assert lab.identity(hosts[3])["assigned_by"] == [f"build{i}" for i in hosts[:3]]
    # And the multicast hive is not the broadcast nodes' business (and the other way round).
    assert all(lab.peer_names(i) == set() for i in broadcast_only)
    # A kill is noticed through multicast heartbeats.
    lab.kill(hosts[3])
    gone_everywhere(lab, f"build{hosts[3]}", hosts[:3], timeout=10)


def test_etcd_backed_hive_across_three_subnets(make_lab):
    """(3) etcd across three subnets: 10 nodes joining at the same moment across the subnets
    get the sequential role counts; a killed member's key expires and every view drops it;
    etcd stopped and restarted while the hive runs: the hive goes on, says so, and registers
    again; a newcomer then joins through etcd."""
    lab = make_lab(heartbeat=1, subnets=3)
    url = lab.etcd("start", subnet=1)
    assert url == f"http://{lab.subnets[0]}.10:2379"
    toml = etcd_toml(url)
    founder = lab.add(1, subnet=2)[0]
    lab.configure(founder, toml)
    founder_join = start_and_time(lab, founder)
    assert lab.role(founder) == "founder"
    joiners = lab.add(3, subnet=1) + lab.add(3, subnet=2) + lab.add(4, subnet=3)
    for i in joiners:
        lab.configure(i, toml)
    started = time.time()
    lab.start(*joiners)  # all ten at the same moment
    lab.wait(*joiners, timeout=90)
    last = max(identity_time(lab, i) for i in joiners) - started
    hosts = [founder] + joiners
    counts = collections.Counter(lab.role(i) for i in hosts)
    assert counts == sequential_counts(11), lab.roles()
    for i in joiners:  # no split advice
        assert len(lab.identity(i)["votes"]) == 1, (lab.identity(i), [
            f"{j}: {line}" for j in hosts for line in lab.log(j, "advisor").splitlines()
            + lab.log(j).splitlines() if f"build{i}" in line])
    listed_everywhere(lab, hosts, timeout=20)
    guarded = sum(log_lines(lab.log(i)).count("Another node took a role while the hive "
                                              "answered this one (etcd's guard): asking again")
                  for i in hosts)

    def keys():
        out = lab.exec(founder, lab.env["HIVE_LAB_PYTHON"], str(DATA / "etcd_keys.py"), url,
                       "/build-hive/members/")
        return {key.rsplit("/", 1)[1]: json.loads(value)
                for key, value in json.loads(out.stdout)["keys"].items()}
    registered = keys()
    assert {r["hostname"] for r in registered.values()} == {f"build{i}" for i in hosts}
    assert collections.Counter(r["role"] for r in registered.values()) == counts

    # A member killed: its key expires with its lease, and every view drops it.
    victim = joiners[4]
    rest = [i for i in hosts if i != victim]
    started = time.monotonic()
    lab.kill(victim)
    gone_everywhere(lab, f"build{victim}", rest)
    detect = time.monotonic() - started
    lab.wait_for(lambda: f"build{victim}" not in {r["hostname"] for r in keys().values()}, 15,
                 "the killed member's key to expire")

    # etcd stopped while the hive runs: members stay members (no false deaths), say so.
    lab.etcd("stop")
    lab.wait_for(lambda: all("etcd is unreachable" in lab.log(i) for i in rest), 15,
                 "every agent to say etcd is unreachable")
    time.sleep(4)  # four heartbeats without etcd
    for i in rest:
        assert lab.peer_names(i) == {f"build{j}" for j in rest if j != i}, lab.peer_names(i)
    status = json.loads(lab.hive(rest[0], "status", "--json").stdout)
    assert status["discovery"]["etcd"]["reachable"] is False
    assert "unreachable since" in lab.hive(rest[0], "status").stdout
    lab.etcd("start", subnet=1)
    lab.wait_for(lambda: all("etcd answers again" in lab.log(i) for i in rest), 15,
                 "every agent to register in etcd again")
    lab.wait_for(lambda: {r["hostname"] for r in keys().values()}
                 == {f"build{i}" for i in rest}, 15, "every live member's key in etcd again")
    # A newcomer joins through etcd, across the router, with the role the hive needs.
    newcomer = lab.add(1, subnet=3)[0]
    lab.configure(newcomer, toml)
    newcomer_join = start_and_time(lab, newcomer)
    assert lab.role(newcomer) == sequential_role(len(rest) + 1)
    listed_everywhere(lab, rest + [newcomer], timeout=20)
    print(f"\netcd, heartbeat 1 s: founder start -> identity.json {founder_join:.2f} s; "
          f"10 joiners at once across 3 subnets: last identity {last:.2f} s after the start "
          f"({guarded} claim(s) refused by the guard); newcomer after etcd's restart "
          f"{newcomer_join:.2f} s; kill -9 -> dropped everywhere {detect:.2f} s")
    for i in hosts + [newcomer]:
        assert "Traceback" not in lab.log(i)
        assert "Traceback" not in lab.log(i, "advisor")


def test_a_broadcast_hive_and_one_node_through_seeds(make_lab):
    """(4) A broadcast-only hive (default configuration) on subnet 1 and one node on subnet 2
    that knows one seed: it joins, everyone lists everyone, its advisor advises the next
    newcomer of subnet 1 (IDENTIFY by unicast, handed to the advisor by the agent)."""
    lab = make_lab(heartbeat=1, subnets=2)
    lab.up(3, subnet=1)
    remote = lab.add(1, subnet=2)[0]
    lab.configure(remote, 'discovery = ["seeds"]\n' f'seeds = ["{lab.ip(1)}"]\n')
    lab.start(remote)
    lab.wait(remote, timeout=30)
    assert lab.role(remote) == "builder"
    assert lab.identity(remote)["assigned_by"] == ["build1", "build2", "build3"]
    listed_everywhere(lab, [1, 2, 3, remote])
    local = lab.join(subnet=1)  # broadcast-only, like the others
    lab.wait(local, timeout=30)
    assert lab.role(local) == "runner"
    assert lab.identity(local)["assigned_by"] == ["build1", "build2", "build3", f"build{remote}"]
    assert f" -> build{local}: become 'runner'" in lab.log(remote, "advisor")
    listed_everywhere(lab, [1, 2, 3, remote, local])
    status = json.loads(lab.hive(1, "status", "--json").stdout)
    assert status["discovery"] == {"methods": ["broadcast"]}
    assert status["reached"][f"build{remote}"]["via"] == "unicast"
    assert status["reached"]["build2"]["via"] == "broadcast"
    lab.stop(remote)  # its goodbye reaches the broadcast hive by unicast
    gone_everywhere(lab, f"build{remote}", [1, 2, 3, local], timeout=5)


def test_bad_discovery_configuration_is_refused_at_start(make_lab):
    lab = make_lab()
    i = lab.add(1)[0]
    bad = {
        'discovery = ["broadcast", "carrier-pigeon"]\n': "unknown method 'carrier-pigeon'",
        'discovery = ["seeds"]\nseeds = ["10.1.2.3:99999"]\n': "is not an address",
        'discovery = ["etcd"]\n[etcd]\nendpoints = ["ftp://10.1.2.3:2379"]\n':
            "is not an etcd client URL",
        'discovery = ["seeds"]\n': "no seeds are set",
        'multicast_group = "10.1.2.3"\n': "multicast address",
    }
    config = lab.host_dir(i) / "hive.toml"
    base = config.read_text()
    for text, expected in bad.items():
        config.write_text(base + text)
        for module in ("build_agent", "build_advisor"):
            result = lab.exec(i, "env", f"PYTHONPATH={REPO}", lab.env["HIVE_LAB_PYTHON"], "-m",
                              module, "--config", str(config), check=False, timeout=20)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 1 and len(lines) == 1, result.stderr
            assert expected in lines[0], lines


def test_etcds_transaction_lets_exactly_one_of_simultaneous_claims_through(make_lab):
    """The role guard against a real etcd: eight nodes that read the same revision claim the
    same role at the same moment; exactly one transaction succeeds, the others must ask
    again, and etcd records the winner's role only."""
    lab = make_lab(subnets=2)
    url = lab.etcd("start", subnet=2)
    host = lab.add(1, subnet=1)[0]  # the racers run here, across the router from etcd
    out = json.loads(lab.exec(host, lab.env["HIVE_LAB_PYTHON"], str(DATA / "etcd_race.py"), url,
                              "/race/", "8").stdout)
    results = out["results"]
    assert len(results) == 8 and len(out["revisions"]) == 1
    assert sorted(results.values()) == ["conflict"] * 7 + ["ok"], results
    winner = next(node for node, result in results.items() if result == "ok")
    assert out["settled"]["node_id"] == winner and out["settled"]["role"] == "controller"
    assert [node for node, role in out["roles"].items() if role == "controller"] == [winner]
