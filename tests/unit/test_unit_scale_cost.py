"""What a join costs every member of a big hive: fewer IDENTIFY, fewer peers.json rewrites.

- An asker's IDENTIFY retries go by unicast, only to the members whose advice is missing (a
  broadcast retry woke every agent and advisor of the hive and brought every ADVICE again).
- peers.json is rewritten after a change at most every ``Agent.peers_gap()`` (2 ms per member,
  at most 0.5 s), but at once for an IDENTIFY: the advisor waits to see it there.
- peers.json is written atomically without fsync (a live copy); identity.json with fsync.
"""

from __future__ import annotations

import json
import os

from build_agent import state, timing
from hive_fakes import T0
from test_unit_agent import (EPS, ME, advice_fields, deliver, make_agent, run_until,  # noqa: F401
                             sent, step)
from test_unit_status_cost import _operating, _peer, _status_round


def _near(i: int) -> tuple[str, str, str]:
    """A member on the agent's own subnet (broadcasts reach it: no unicast copies)."""
    return f"aaaa-{i:04d}", f"build{i:04d}", f"10.9.0.{20 + i}"


def _welcomed_by(agent, clock, members: int) -> float:
    """Start the agent and let ``members`` members welcome it; returns when it began asking."""
    agent.start(T0)
    step(agent, clock, T0)
    for i in range(members):
        node_id, hostname, ip = _near(i)
        deliver(agent, "WELCOME", node_id, hostname, ip, T0 + 0.01, to=ME, role="runner",
                members=members)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "ask"
    return clock.now


def test_an_askers_retries_go_by_unicast_to_the_members_whose_advice_is_missing(
        make_agent, clock, fake_sock):
    agent = make_agent()
    ask_start = _welcomed_by(agent, clock, 4)
    [(first, to)] = sent(fake_sock, "IDENTIFY")
    assert to == ("10.9.0.255", 50555)  # the first: by broadcast
    for i in (0, 1):
        node_id, hostname, ip = _near(i)
        deliver(agent, "ADVICE", node_id, hostname, ip, ask_start + 0.1,
                request_id=first.get("request_id"), **advice_fields(role="runner"))
    fake_sock.clear()
    run_until(agent, clock, ask_start + timing.IDENTIFY_SCHEDULE[1] + EPS)
    retries = sent(fake_sock, "IDENTIFY")
    assert sorted(to for _, to in retries) == [(_near(2)[2], 50555), (_near(3)[2], 50555)]
    assert {m.get("request_id") for m, _ in retries} == {first.get("request_id")}
    node_id, hostname, ip = _near(2)
    deliver(agent, "ADVICE", node_id, hostname, ip, clock.now + 0.1,
            request_id=first.get("request_id"), **advice_fields(role="runner"))
    fake_sock.clear()
    run_until(agent, clock, ask_start + timing.IDENTIFY_SCHEDULE[2] + EPS)
    assert [to for _, to in sent(fake_sock, "IDENTIFY")] == [(_near(3)[2], 50555)]


def _written(config) -> dict:
    return json.loads(config.peers_path.read_text())


def test_peers_json_rewrites_are_spaced_by_hive_size_but_an_identify_is_written_at_once(
        make_agent, config):
    agent = _operating(make_agent, config)
    _status_round(agent, 100, T0 + 0.5, 0.5)
    gap = agent.peers_gap()
    assert gap == 100 * timing.PEERS_WRITE_GAP_PER_MEMBER
    run_until(agent, agent.clock, T0 + 2)
    assert len(_written(config)["peers"]) == 100
    # A member changes role: written at once (nothing was written for a while) ...
    node_id, hostname, ip = _peer(0)
    deliver(agent, "STATUS", node_id, hostname, ip, T0 + 2, role="builder", state="active",
            interval=10.0)
    step(agent, agent.clock, T0 + 2)
    assert _written(config)["peers"][0]["role"] == "builder"
    # ... another, just after: it waits for the gap, and the loop is told when to come back.
    node_id, hostname, ip = _peer(1)
    deliver(agent, "STATUS", node_id, hostname, ip, T0 + 2.01, role="builder", state="active",
            interval=10.0)
    wake = step(agent, agent.clock, T0 + 2.01)
    assert wake <= T0 + 2 + gap + EPS
    assert [p["role"] for p in _written(config)["peers"][:2]] == ["builder", "runner"]
    step(agent, agent.clock, T0 + 2 + gap)
    assert [p["role"] for p in _written(config)["peers"][:2]] == ["builder", "builder"]
    # An IDENTIFY right after a write: written at once, with everything heard before it.
    node_id, hostname, ip = _peer(2)
    deliver(agent, "STATUS", node_id, hostname, ip, T0 + 2.3, role="builder", state="active",
            interval=10.0)
    deliver(agent, "IDENTIFY", "ffff-new", "newbie", "10.9.9.9", T0 + 2.31,
            request="who_am_i", request_id="00112233aabbccdd", capabilities={})
    step(agent, agent.clock, T0 + 2.31)
    data = _written(config)
    assert "ffff-new" in json.dumps(data["requests"])
    assert data["peers"][2]["role"] == "builder"


def test_peers_json_is_not_fsynced_and_identity_json_is(tmp_path, monkeypatch):
    flushed = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(fd), real(fd)))
    state.JsonListWriter("peers").write(tmp_path / "peers.json", {"peers": [{"a": 1}]})
    assert flushed == [] and json.loads((tmp_path / "peers.json").read_text()) == {
        "peers": [{"a": 1}]}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    state.write_json_atomic(tmp_path / "identity.json", {"role": "runner"})
    assert len(flushed) == 1
