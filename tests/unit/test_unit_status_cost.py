"""A heartbeat's cost does not grow with the hive, and the deadlines it keeps are unchanged.

The agent's loop ticks after every datagram; at 200 members that is 20 STATUS a second per
node.  These tests count the walks of the member table (a fake dict that counts its
iterations) and the deadline computations, not time: a STATUS that changes nothing but
freshness must cost the same at 20 and at 200 members.  The deadlines themselves (a lazy
heap in membership.py) are checked against the plain rule: the earliest member or joiner
deadline, every member or joiner due removed at once, none earlier.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from build_agent import protocol, state, timing
from build_agent.agent import Agent
from build_agent.membership import Member, Membership
from hive_fakes import SECRET, T0, message
from test_unit_agent import CAPS, deliver, make_agent, step  # noqa: F401 (a fixture)


class CountingDict(dict):
    """The member table, counting how often something walks it."""
    walks = 0

    def values(self):
        CountingDict.walks += 1
        return super().values()

    def items(self):
        CountingDict.walks += 1
        return super().items()

    def keys(self):
        CountingDict.walks += 1
        return super().keys()

    def __iter__(self):
        CountingDict.walks += 1
        return super().__iter__()


def _operating(make_agent, config, role: str = "builder") -> Agent:
    """An agent that has its identity and operates (``role``), in ``config``'s state dir."""
    state.write_json_atomic(config.identity_path, {
        "role": role, "packages": [], "config": {}, "assigned_by": ["self"],
        "assigned_at": "2026-11-25T10:00:00Z", "provisioned": True})
    agent = make_agent(cfg=config)
    agent.start(T0)
    step(agent, agent.clock, T0)
    return agent


def _peer(i: int) -> tuple[str, str, str]:
    return f"aaaa-{i:04d}", f"build{i:04d}", f"10.9.{1 + i // 250}.{i % 250 + 3}"


def _status_round(agent: Agent, size: int, start: float, span: float, role=lambda i: "runner"):
    """Every member's STATUS once, spread over ``span`` seconds, each followed by the loop's
    tick (as daemon.run does after a datagram)."""
    for i in range(size):
        now = start + i * span / size
        node_id, hostname, ip = _peer(i)
        deliver(agent, "STATUS", node_id, hostname, ip, now, role=role(i), state="active",
                interval=10.0, capabilities=CAPS)
        step(agent, agent.clock, now)


def _walks_per_round(make_agent, config, monkeypatch, size: int, role: str
                     ) -> tuple[int, float]:
    """(walks of the member table, deadline computations per datagram) for a round of
    STATUS that change nothing but freshness, between two of the agent's heartbeats."""
    if role == "controller":  # with tasks on: it places the queued ones on the members
        config = replace(config, tasks=replace(config.tasks, enabled=True))
    agent = _operating(make_agent, config, role)
    assert agent.role == role
    _status_round(agent, size, T0 + 0.5, 0.5)  # they join the view (peers.json, plan: once)
    step(agent, agent.clock, T0 + 1.5)  # (the metrics file, written at most every second)
    agent.membership.members = CountingDict(agent.membership.members)
    CountingDict.walks = 0
    deadlines = 0
    real = Member.deadline

    def counting(self):
        nonlocal deadlines
        deadlines += 1
        return real(self)
    monkeypatch.setattr(Member, "deadline", counting)
    _status_round(agent, size, T0 + 3.0, 5.0)  # a whole round, before the next heartbeat
    monkeypatch.setattr(Member, "deadline", real)
    assert len(agent.membership.members) == size
    return CountingDict.walks, deadlines / size


@pytest.mark.parametrize("role", ["builder", "controller"])  # (a controller places tasks)
def test_a_status_costs_the_same_at_20_and_200_members(make_agent, config, monkeypatch,
                                                        tmp_path, role):
    small = _walks_per_round(make_agent, config, monkeypatch, 20, role)
    (tmp_path / "big").mkdir()  # a fresh agent: its own state files
    big = _walks_per_round(make_agent, replace(config, state_dir=str(tmp_path / "big")),
                           monkeypatch, 200, role)
    print(f"\nmember-table walks per round of STATUS: {small[0]} at 20 members, {big[0]} at 200;"
          f" deadline computations per STATUS: {small[1]:.2f}, {big[1]:.2f}")
    # No walk of the table per datagram: the few there are (the prober's round, once a
    # second) do not grow with the number of datagrams (10 times as many at 200).
    assert big[0] <= small[0] <= 10
    assert big[1] == small[1] <= 5  # (a few: the one heard, the heap's first entry)


def test_a_status_that_changes_nothing_does_not_rewrite_peers_json(make_agent, config,
                                                                   monkeypatch):
    agent = _operating(make_agent, config)
    _status_round(agent, 50, T0 + 0.5, 0.5)
    writes = []
    real = state.write_json_atomic
    monkeypatch.setattr(state, "write_json_atomic",
                        lambda path, data, *a, **kw: (writes.append(str(path)),
                                                      real(path, data, *a, **kw))[1])
    _status_round(agent, 50, T0 + 3.0, 5.0)
    assert str(config.peers_path) not in writes


def test_a_status_changing_a_role_updates_peers_json_at_once(make_agent, config):
    agent = _operating(make_agent, config)
    _status_round(agent, 50, T0 + 0.5, 0.5)
    before = json.loads(config.peers_path.read_text())
    assert {p["role"] for p in before["peers"]} == {"runner"}
    node_id, hostname, ip = _peer(7)
    deliver(agent, "STATUS", node_id, hostname, ip, T0 + 4, role="builder", state="active",
            interval=10.0, capabilities=CAPS)
    step(agent, agent.clock, T0 + 4)  # long before the next heartbeat (T0 + 10)
    after = json.loads(config.peers_path.read_text())
    assert [p["role"] for p in after["peers"] if p["node_id"] == node_id] == ["builder"]
    assert agent.counters.peer_moves == 1


def test_a_member_still_expires_at_its_deadline_after_many_heartbeats(make_agent, config):
    agent = _operating(make_agent, config)
    _status_round(agent, 20, T0 + 0.5, 0.5)
    last = {}
    for k in range(1, 4):  # three more rounds: the deadlines keep moving later
        _status_round(agent, 20, T0 + 10 * k, 5.0)
        last = {_peer(i)[0]: T0 + 10 * k + i * 5.0 / 20 for i in range(20)}
    # Member 3 falls silent after the last round; the others keep talking.  Nobody probes
    # (no `probe` in their STATUS): the heartbeat rule, 3 intervals of 10 s.
    silent = _peer(3)[0]
    due = last[silent] + timing.DEAD_AFTER_INTERVALS * 10.0
    for k in range(4, 7):
        for i in range(20):
            now = T0 + 10 * k + i * 5.0 / 20
            if i != 3 and now < due - 0.01:
                deliver(agent, "STATUS", *_peer(i), now, role="runner", state="active",
                        interval=10.0, capabilities=CAPS)
                assert step(agent, agent.clock, now) <= due
    assert agent.membership.next_deadline() == due
    step(agent, agent.clock, due - 0.001)
    assert silent in agent.membership.members
    step(agent, agent.clock, due)
    assert silent not in agent.membership.members
    assert silent not in [p["node_id"] for p in json.loads(config.peers_path.read_text())["peers"]]
    assert len(agent.membership.members) == 19


# --- the heap against the plain rule -------------------------------------------------------------

def _plain_next(ms: Membership) -> float:
    deadlines = [m.deadline() for m in ms.members.values()]
    deadlines += [j.last_heard + timing.JOINING_PEER_TIMEOUT for j in ms.joiners.values()]
    return min(deadlines, default=float("inf"))


def _plain_due(ms: Membership, now: float) -> set[tuple[str, str]]:
    dead = {m.node_id for m in ms.members.values() if now >= m.deadline()}
    return {("m", n) for n in dead} | \
        {("j", j.node_id) for j in ms.joiners.values()  # (a dead member's joining entry too)
         if now - j.last_heard >= timing.JOINING_PEER_TIMEOUT or j.node_id in dead}


def _everyone(ms: Membership) -> set[tuple[str, str]]:
    """Members and joiners (a node can be both for a while: a merged member still joining)."""
    return {("m", n) for n in ms.members} | {("j", n) for n in ms.joiners}


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_deadlines_match_the_plain_rule(seed):
    """Random heartbeats, interval changes, probing, joiners getting roles, members re-joining,
    goodbyes and DEADs: next_deadline() is always the earliest deadline of all, and expire()
    removes exactly those due."""
    rnd = random.Random(seed)
    ms = Membership(default_interval=10.0)
    ids = [f"n{i:02d}" for i in range(12)]
    now = T0
    for _ in range(150):
        now += rnd.choice([0.0, 0.01, 0.3, 1.0, 2.5, 7.0])
        node = rnd.choice(ids)
        op = rnd.random()
        if op < 0.55:
            fields = {"role": rnd.choice(["builder", "runner"]), "state": "active",
                      "interval": rnd.choice([1.0, 2.0, 10.0])}
            if rnd.random() < 0.4:
                fields["probe"] = 1.0
            ms.observe(message("STATUS", node, "h-" + node, "10.0.0.9", now, **fields),
                       "10.0.0.9", now)
        elif op < 0.75:
            ms.observe(message("HELLO", node, "h-" + node, "10.0.0.9", now,
                               joining_since=protocol.format_ts(now)), "10.0.0.9", now)
        elif op < 0.8:
            ms.observe(message("STATUS", node, "h-" + node, "10.0.0.9", now, role="runner",
                               state="leaving", interval=1.0), "10.0.0.9", now)
        elif op < 0.85:
            member = ms.members.get(node)
            if member is not None:
                ms.declare_dead(node, member.incarnation + 1, now, "test")
        elif op < 0.9:  # another view's member (the advisor merges the agent's peers.json)
            ms.merge([{"node_id": node, "role": "runner", "hostname": "h-" + node,
                       "ip": "10.0.0.9", "interval": rnd.choice([1.0, 10.0]),
                       "last_seen": protocol.format_ts_seconds(now - rnd.choice([0, 1, 2]))}],
                     now)
        assert ms.next_deadline() == _plain_next(ms)
        due = _plain_due(ms, now)
        before = _everyone(ms)
        ms.expire(now)
        assert before - _everyone(ms) == due
        assert ms.next_deadline() == _plain_next(ms)
        assert ms.next_deadline() > now - 1e-6


def test_a_shorter_interval_brings_the_deadline_earlier():
    ms = Membership(default_interval=10.0)
    ms.observe(message("STATUS", "n1", "h1", "10.0.0.9", T0, role="runner", interval=10.0),
               "10.0.0.9", T0)
    assert ms.next_deadline() == T0 + 30
    ms.observe(message("STATUS", "n1", "h1", "10.0.0.9", T0 + 1, role="runner", interval=1.0),
               "10.0.0.9", T0 + 1)
    assert ms.next_deadline() == T0 + 4
    assert not ms.expire(T0 + 3.99) and ms.expire(T0 + 4)


@pytest.mark.parametrize("size", [20, 200])
def test_moving_is_walked_only_while_a_move_may_last(size):
    ms = Membership(default_interval=10.0)
    for i in range(size):
        ms.observe(message("STATUS", f"n{i}", f"h{i}", "10.0.0.9", T0, role="runner",
                           state="active", interval=10.0), "10.0.0.9", T0)
    ms.members = CountingDict(ms.members)
    CountingDict.walks = 0
    assert ms.any_moving(T0 + 1) is False and CountingDict.walks == 0
    ms.observe(message("STATUS", "n5", "h5", "10.0.0.9", T0 + 2, role="runner",
                       state="moving", interval=10.0), "10.0.0.9", T0 + 2)
    assert ms.any_moving(T0 + 2) is True
    assert ms.any_moving(T0 + 2 + timing.MOVE_TIMEOUT - 0.01) is True
    CountingDict.walks = 0
    assert ms.any_moving(T0 + 2 + timing.MOVE_TIMEOUT) is False and CountingDict.walks == 0


def test_repeated_stamps_are_parsed_once_and_bad_ones_still_refused():
    stamp = protocol.format_ts(T0 + 0.123456)
    protocol.parse_ts(stamp)
    before = protocol._parse_ts.cache_info()
    for _ in range(10):
        assert protocol.parse_ts(stamp) == pytest.approx(T0 + 0.123456, abs=1e-6)
    after = protocol._parse_ts.cache_info()
    assert after.hits - before.hits == 10 and after.misses == before.misses
    for bad in ("2026-13-40T00:00:00.000000Z", "yesterday", 12.5, None):
        for _ in range(2):  # a refusal is not remembered as a value
            with pytest.raises(protocol.ProtocolError):
                protocol.parse_ts(bad)


# --- peers.json: the same bytes, with the unchanged entries' text remembered ----------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=6), _json, max_size=5), max_size=6),
       st.dictionaries(st.sampled_from(["self", "plan", "joiners", "discovery", "zz"]), _json),
       st.integers(0, 5))
def test_peers_json_text_is_what_json_dumps_writes(peers, rest, changed):
    writer = state.JsonListWriter("peers", "joiners")
    first = {**rest, "peers": peers}
    assert writer.text(first) == json.dumps(first, indent=2, sort_keys=True) + "\n"
    # The next write: one entry changed, one gone, one new; the others' text is remembered.
    later = [dict(p) for p in peers]
    if later:
        later[changed % len(later)]["last_seen"] = "2026-11-27T15:00:00Z"
        later.pop(0)
    later.append({"node_id": "new", "role": "runner"})
    second = {**rest, "peers": later}
    assert writer.text(second) == json.dumps(second, indent=2, sort_keys=True) + "\n"


def test_the_agent_writes_peers_json_as_before(make_agent, config):
    agent = _operating(make_agent, config)
    _status_round(agent, 30, T0 + 0.5, 0.5)
    node_id, hostname, ip = _peer(4)
    deliver(agent, "STATUS", node_id, hostname, ip, T0 + 4, role="builder", state="active",
            interval=10.0, capabilities=CAPS)
    step(agent, agent.clock, T0 + 4)
    text = config.peers_path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert len(json.loads(text)["peers"]) == 30
