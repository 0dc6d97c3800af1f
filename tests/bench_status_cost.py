"""How much one STATUS heartbeat costs an operating agent, by hive size (in process).

Not a test (timing belongs in measurements): `python3 tests/bench_status_cost.py [--profile N]`.
It builds an agent as build-agent does (the default policy heals; fake clock, recording socket,
a temporary state dir), fills its view with N members, then feeds it each member's periodic
STATUS the way the daemon's loop does: receive() (verify, replay guard), handle(), tick().
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "unit")]

from build_advisor.policy import default_suggest_role, desired_roles_of  # noqa: E402
from build_agent import protocol, state  # noqa: E402
from build_agent.agent import Agent  # noqa: E402
from build_agent.config import Config  # noqa: E402
from build_agent.netif import Interface  # noqa: E402
from hive_fakes import SECRET, T0, FakeClock, FakeSocket  # noqa: E402

CAPS = {"cpu_cores": 4, "ram_gb": 8.0, "has_gpu": False, "arch": "x86_64", "os": "Ubuntu",
        "docker_installed": False}
ROLES = ["controller", "builder", "builder", "runner", "cache"]


def make(members: int, tmp: str):
    config = Config(state_dir=tmp, install_packages=False, heartbeat_interval=10.0,
                    secret_file=f"{tmp}/secret", role_hooks_dir=f"{tmp}/role.d",
                    metrics_file=f"{tmp}/metrics/build_hive.prom",
                    rebalance=False)  # steady: this node never moves
    state.write_json_atomic(config.identity_path, {
        "role": "builder", "packages": [], "config": {}, "assigned_by": ["self"],
        "assigned_at": "2026-11-25T10:00:00Z", "provisioned": True})
    clock = FakeClock()
    sock = FakeSocket()
    agent = Agent(config, [SECRET], Interface("veth0", "10.9.0.2", "255.255.0.0", "10.9.255.255"),
                  "eeee-agent-self", "build-self", capabilities=dict(CAPS), clock=clock,
                  installer=lambda packages: None,
                  desired_roles=desired_roles_of(default_suggest_role))
    agent.attach(sock, sock)
    agent.start(T0)
    agent.tick(T0)
    peers = [(f"aaaa-{i:04d}", f"build{i:04d}", f"10.9.{i // 250}.{i % 250 + 3}",
              ROLES[i % len(ROLES)]) for i in range(members)]
    return agent, clock, sock, peers


def status(node_id, hostname, ip, role, now):
    return protocol.encode(protocol.make_payload(
        "STATUS", node_id, hostname, ip, now, role=role, state="active", load=[0.1, 0.2, 0.3],
        capacity={"cpu_free": 3}, health="ok", interval=10.0, capabilities=CAPS,
        started=protocol.format_ts(T0 - 100), joined_at="2026-11-25T10:00:00Z",
        role_since="2026-11-25T10:00:00.000000Z", rebalance=True), SECRET)


def feed(agent, clock, sock, peers, rounds: int, start: float) -> tuple[list[float], float]:
    """Every member's STATUS, ``rounds`` times, spread evenly over the heartbeat interval
    (10 s); the loop's tick after each.  Returns (seconds per datagram, the fake clock's end)."""
    n = len(peers)
    costs = []
    now = start
    for r in range(rounds):
        for i, (node_id, hostname, ip, role) in enumerate(peers):
            now = start + r * 10.0 + i * 10.0 / n
            data = status(node_id, hostname, ip, role, now)  # the sender's cost, not timed
            sock.clear()
            t = time.perf_counter()
            clock.now = now
            message = agent.receive(data, (ip, 50555), now)
            agent.handle(message, ip, now)
            agent.tick(now)
            costs.append(time.perf_counter() - t)
    return costs, now


def measure(members: int, rounds: int, profile: bool = False) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        agent, clock, sock, peers = make(members, tmp)
        _, now = feed(agent, clock, sock, peers, 1, T0 + 1)  # everyone joins the view
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        costs, _ = feed(agent, clock, sock, peers, rounds, now + 1)
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        assert len(agent.membership.members) == members
        costs.sort()
        return sum(costs) / len(costs), costs[len(costs) // 2]


def measure_keepalive(members: int, joiners: int = 100) -> float:
    """The median cost of a joining node's keep-alive STATUS (every JOINING_KEEPALIVE while
    it joins: a mass join) at an agent with ``members`` members."""
    with tempfile.TemporaryDirectory() as tmp:
        agent, clock, sock, peers = make(members, tmp)
        _, now = feed(agent, clock, sock, peers, 1, T0 + 1)
        since = protocol.format_ts(now + 0.5)
        costs = []
        for r in range(3):
            for j in range(joiners):
                at, ip = now + 1 + r + j * 0.9 / joiners, f"10.9.200.{j % 250 + 3}"
                data = protocol.encode(protocol.make_payload(
                    "STATUS", f"jjjj-{j:04d}", f"new{j:04d}", ip, at, state="joining",
                    joining_since=since, capabilities=CAPS), SECRET)
                t = time.perf_counter()
                clock.now = at
                message = agent.receive(data, (ip, 50555), at)
                agent.handle(message, ip, at)
                agent.tick(at)
                costs.append(time.perf_counter() - t)
        costs.sort()
        return costs[len(costs) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,50,200")
    parser.add_argument("--rounds", type=int, default=5, help="heartbeat intervals to feed")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile N members instead of measuring")
    args = parser.parse_args()
    if args.profile:
        measure(args.profile, args.rounds, profile=True)
        return 0
    for size in (int(s) for s in args.sizes.split(",")):
        runs = [measure(size, args.rounds) for _ in range(3)]
        mean, median = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"{size:4d} members: per STATUS (receive + handle + tick) median "
              f"{median * 1e3:.3f} ms, mean {mean * 1e3:.3f} ms (with the once-per-interval work)")
    for size in (int(s) for s in args.sizes.split(",")):
        best = min(measure_keepalive(size) for _ in range(3))
        print(f"{size:4d} members: a joiner's keep-alive STATUS (100 joining) median "
              f"{best * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
