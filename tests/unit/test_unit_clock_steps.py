"""Wall-clock steps (NTP at boot, a VM resumed) must not disturb the daemons' timers.

Timers run on the steady clock (``now``); only message stamps use the wall clock.
"""

from __future__ import annotations

import json

from build_agent import protocol, timing
from build_agent.agent import Agent
from build_agent.config import Config
from build_agent.netif import Interface
from hive_fakes import SECRET, FakeClock, FakeSocket

STEADY0 = 5000.0  # a monotonic reading: unrelated to the wall clock
WALL0 = 1_795_694_400.0
CAPS = {"cpu_cores": 2, "ram_gb": 4.0, "has_gpu": False, "arch": "x86_64", "os": "Debian",
        "docker_installed": False}


def make_agent(tmp_path, wall):
    config = Config(state_dir=str(tmp_path), heartbeat_interval=10.0, install_packages=False)
    agent = Agent(config, [SECRET], Interface("eth0", "10.9.0.2", "255.255.255.0", "10.9.0.255"),
                  "node-me", "build9", capabilities=dict(CAPS), clock=wall)
    sock = FakeSocket()
    agent.attach(sock, sock)
    return agent, sock


def founded(tmp_path) -> bool:
    return (tmp_path / "identity.json").exists()


def test_a_forward_wall_step_does_not_cut_discovery_short(tmp_path):
    wall = FakeClock(WALL0)
    agent, _ = make_agent(tmp_path, wall)
    agent.tick(STEADY0)
    wall.now += 3600  # the wall clock jumps an hour ahead just after HELLO went out
    agent.tick(STEADY0 + 0.1)
    assert agent.phase == "discover" and not founded(tmp_path)
    agent.tick(STEADY0 + timing.DISCOVERY_MAX)
    assert founded(tmp_path)
    identity = json.loads((tmp_path / "identity.json").read_text())
    assert identity["assigned_at"] == protocol.format_ts_seconds(WALL0 + 3600)


def test_a_backward_wall_step_does_not_silence_heartbeats_or_keep_the_dead(tmp_path):
    wall = FakeClock(WALL0)
    agent, sock = make_agent(tmp_path, wall)
    now = STEADY0
    while not founded(tmp_path):
        now = max(agent.tick(now), now + 0.01)
    peer = protocol.make_payload("STATUS", "node-peer", "build1", "10.9.0.11", wall.now,
                                 role="builder", state="active", interval=10.0)
    message = agent.receive(protocol.encode(peer, SECRET), ("10.9.0.11", 50555), wall.now)
    agent.handle(message, "10.9.0.11", now)
    assert [m.hostname for m in agent.membership.established()] == ["build1"]
    sock.clear()
    wall.now -= 3600  # the wall clock steps an hour back
    # A routine STATUS is due after status_interval (steady), whatever the wall clock says ...
    agent.tick(now + agent.status_interval)
    assert "STATUS" in sock.kinds()
    # ... and the silent peer is dead after 3 of its intervals, not an hour later.
    agent.tick(now + 30.0)
    assert agent.membership.established() == []
