"""A hive of real Agents on one fake clock and a lossy fake network, with a fake task runner.

Every datagram goes through protocol.encode/decode and the agents' replay guards exactly as on
the wire; the network drops, duplicates, delays and reorders them at random (seeded).  The
runner runs nothing: an attempt of ``["job", NAME, RC, SECONDS]`` "exits" RC after SECONDS.
"""

from __future__ import annotations

import heapq
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from build_agent import protocol
from build_agent.agent import Agent
from build_agent.config import Config, TasksConfig
from build_agent.netif import Interface
from hive_fakes import SECRET, T0, FakeClock

CAPS = {"cpu_cores": 2, "ram_gb": 4.0, "has_gpu": False, "arch": "x86_64", "os": "Test",
        "docker_installed": False}
BROADCAST = "10.9.0.255"


class FakeHandle:
    def __init__(self, run, end: float, rc: int) -> None:
        self.run, self.end, self.rc = run, end, rc
        self.cancelled = False

    def record(self) -> dict:
        return {"kind": "fake", "task": self.run.key}


class FakeRunner:
    """Records every start; an attempt ends RC after SECONDS (from its argv)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.starts: list[tuple[str, int]] = []
        self.abandoned: list[dict] = []

    def start(self, run, output_path: Path, now: float) -> FakeHandle:
        self.starts.append((run.task_id, run.attempt))
        _, label, rc, seconds = run.argv
        output_path.write_text(f"{label} ran on {self.name}\n" + "x" * 10 + "\n")
        return FakeHandle(run, now + float(seconds), int(rc))

    def poll(self, handle: FakeHandle, now: float):
        if handle.cancelled:
            return ("cancelled", None, None, "cancelled")
        if now >= handle.end:
            return ("exited", handle.rc, None, None)
        return None

    def next_check(self, handle: FakeHandle, now: float) -> float:
        return handle.end

    def cancel(self, handle: FakeHandle, now: float) -> None:
        handle.cancelled = True

    def abandon(self, record: dict, key: str = "") -> None:
        self.abandoned.append(record)


class NetSock:
    def __init__(self, net: "Net", ip: str) -> None:
        self.net, self.ip = net, ip

    def sendto(self, data: bytes, address) -> int:
        self.net.send(self.ip, data, address[0])
        return len(data)


class Net:
    def __init__(self, clock: FakeClock, seed: int = 1, loss: float = 0.0, dup: float = 0.0,
                 delay: tuple[float, float] = (0.0005, 0.003)) -> None:
        self.clock = clock
        self.rng = random.Random(seed)
        self.loss, self.dup, self.delay = loss, dup, delay
        self.agents: dict[str, Agent] = {}
        self.queue: list = []
        self.seq = 0
        self.down: set[str] = set()
        self.sent: dict[str, int] = {}
        self.dropped = 0

    def send(self, src: str, data: bytes, dst: str) -> None:
        kind = protocol.parse_envelope(data)[0]["kind"]
        self.sent[kind] = self.sent.get(kind, 0) + 1
        targets = [ip for ip in self.agents if ip != src] if dst == BROADCAST else [dst]
        for ip in targets:
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                if self.rng.random() < self.loss:
                    self.dropped += 1
                    continue
                self.seq += 1
                when = self.clock.now + self.rng.uniform(*self.delay)
                heapq.heappush(self.queue, (when, self.seq, src, ip, data))

    def next_time(self) -> float:
        return self.queue[0][0] if self.queue else float("inf")

    def deliver(self, until: float) -> None:
        while self.queue and self.queue[0][0] <= until:
            when, _, src, dst, data = heapq.heappop(self.queue)
            agent = self.agents.get(dst)
            if agent is None or src in self.down or dst in self.down:
                continue
            message = agent.receive(data, (src, 50555), self.clock.now)
            if message is not None:
                agent.handle(message, src, self.clock.now)


@dataclass
class Node:
    name: str
    ip: str
    node_id: str
    role: str
    config: Config
    runner: FakeRunner
    agent: Agent | None = None


class Hive:
    """Nodes (controller and workers) on one Net; run(until) drives every live agent."""

    def __init__(self, tmp: Path, net: Net, clock: FakeClock) -> None:
        self.tmp, self.net, self.clock = tmp, net, clock
        self.nodes: dict[str, Node] = {}

    def add(self, name: str, role: str, octet: int, tasks: TasksConfig | None = None,
            heartbeat: float = 1.0) -> Node:
        state_dir = self.tmp / name
        state_dir.mkdir()
        (state_dir / "identity.json").write_text(json.dumps({
            "role": role, "packages": [], "config": {}, "assigned_by": ["test"],
            "assigned_at": protocol.format_ts_seconds(T0 - 60), "provisioned": True}))
        config = Config(state_dir=str(state_dir), install_packages=False,
                        heartbeat_interval=heartbeat, secret_file=str(state_dir / "secret"),
                        tasks=tasks or TasksConfig(enabled=True, roles=("builder",), slots=2))
        node = Node(name, f"10.9.0.{octet}", f"node-{name}", role, config, FakeRunner(name))
        self.nodes[name] = node
        self.boot(node)
        return node

    def boot(self, node: Node) -> Agent:
        """Start (or restart, after a crash) the node's agent from its state directory."""
        iface = Interface("veth0", node.ip, "255.255.255.0", BROADCAST)
        agent = Agent(node.config, [SECRET], iface, node.node_id, node.name,
                      capabilities=dict(CAPS), clock=self.clock, installer=lambda p: None,
                      task_runner=node.runner)
        sock = NetSock(self.net, node.ip)
        agent.attach([sock], sock)
        node.agent = agent
        self.net.agents[node.ip] = agent
        self.net.down.discard(node.ip)
        return agent

    def crash(self, node: Node) -> None:
        """kill -9: the agent stops, nothing more reaches it or leaves it."""
        self.net.down.add(node.ip)
        node.agent = None
        self.net.agents.pop(node.ip, None)

    def run(self, until: float, stop=None, max_steps: int = 200_000) -> float:
        now = self.clock.now
        for _ in range(max_steps):
            self.clock.now = now
            deadlines = []
            for node in self.nodes.values():
                if node.agent is not None:
                    deadlines.append(node.agent.tick(now))
            self.net.deliver(now)
            if stop is not None and stop():
                return now
            if now >= until:
                return now
            later = min(deadlines + [self.net.next_time(), until])
            now = max(later, now + 0.0005)
        raise AssertionError("the simulation did not settle")

    def submit(self, node: Node, argv: list[str], **fields) -> dict:
        answer = node.agent._control({"op": "task.submit", "argv": argv, **fields}, Reply())
        assert "error" not in answer, answer
        return answer["task"]

    def control(self, node: Node, **request) -> dict:
        reply = Reply()
        answer = node.agent._control(request, reply)
        return answer if answer is not None else reply


class Reply:
    """Stands in for control.Reply."""

    def __init__(self) -> None:
        self.done = False
        self.answer = None
        self.expires = None

    @property
    def open(self) -> bool:
        return not self.done

    def send(self, answer: dict) -> None:
        self.done, self.answer = True, answer

    def defer(self, until, fallback) -> None:
        self.expires = until
