"""What an idle hive costs each node: fewer STATUS, fewer ticks, fewer WELCOMEs.

- A member that probes broadcasts its routine STATUS every STATUS_INTERVALS_PROBED heartbeat
  intervals and states that interval (others judge its silence by it); a change others act on
  (capacity, health, the queue, capabilities) goes out at the next heartbeat; without probes,
  every heartbeat, as before.
- A routine STATUS or an answered probe needs no tick of its own (Service.quiet).
- A node still joining answers a newcomer's HELLO only when it is ahead of it in the join
  order, once per join, and always when the HELLO came by unicast; its keep-alive STATUS says
  since when it joins.  Nobody answers a HELLO membership set aside (older than its sender's
  role), nor, as a member, one said before it became a member.
"""

from __future__ import annotations

from dataclasses import replace

from build_agent import protocol, timing
from hive_fakes import SECRET, T0
from test_unit_agent import CAPS, deliver, make_agent, step  # noqa: F401 (a fixture)
from test_unit_status_cost import _operating, _peer


def _statuses(sock) -> list[protocol.Message]:
    return [m for m, _ in sock.messages() if m.kind == "STATUS"]


def _heartbeats(agent, sock, start: float, intervals: int) -> list[float]:
    """Tick at each heartbeat for ``intervals`` intervals; when a STATUS went out."""
    sent = []
    for k in range(1, intervals + 1):
        now = start + k * agent.config.heartbeat_interval
        sock.clear()
        step(agent, agent.clock, now)
        if _statuses(sock):
            sent.append(round(now - start, 3))
    return sent


def test_a_probing_member_states_and_keeps_a_slower_status_cadence(make_agent, config, fake_sock):
    agent = _operating(make_agent, config)
    assert agent.prober.enabled
    step(agent, agent.clock, T0 + 0.5)
    [status] = [m for m, _ in fake_sock.messages() if m.kind == "STATUS"][-1:]
    assert status.get("interval") == 3 * config.heartbeat_interval == agent.status_interval
    sent = _heartbeats(agent, fake_sock, T0, 9)
    assert sent == [30.0, 60.0, 90.0]  # every third heartbeat


def test_without_probes_every_heartbeat_carries_a_status(make_agent, config, fake_sock):
    agent = _operating(make_agent, replace(config, probe_interval=0.0))
    assert not agent.prober.enabled and agent.status_interval == config.heartbeat_interval
    assert _heartbeats(agent, fake_sock, T0, 3) == [10.0, 20.0, 30.0]


def test_a_change_others_act_on_goes_out_at_the_next_heartbeat(make_agent, config, fake_sock,
                                                                monkeypatch):
    agent = _operating(make_agent, config)
    _heartbeats(agent, fake_sock, T0, 3)  # the routine one at 30 s
    monkeypatch.setattr(agent, "_health", lambda: "degraded")
    assert _heartbeats(agent, fake_sock, T0 + 30, 2) == [10.0]  # at once, then quiet again
    # A change of load alone waits for the routine STATUS.
    monkeypatch.setattr(agent, "_load", lambda: [9.0, 9.0, 9.0])
    assert _heartbeats(agent, fake_sock, T0 + 50, 2) == [20.0]


def test_a_refutation_is_not_held_back_by_the_cadence(make_agent, config, fake_sock):
    agent = _operating(make_agent, config)
    _heartbeats(agent, fake_sock, T0, 3)
    fake_sock.clear()
    node_id, hostname, ip = _peer(1)
    deliver(agent, "SUSPECT", node_id, hostname, ip, T0 + 31, to=agent.node_id,
            target=agent.node_id, incarnation=protocol.format_ts(T0))
    step(agent, agent.clock, T0 + 31)
    assert [m.get("incarnation") for m in _statuses(fake_sock)] != []


def test_routine_status_and_probes_are_quiet_but_news_is_not(make_agent, config):
    agent = _operating(make_agent, config)
    node_id, hostname, ip = _peer(1)
    fields = dict(role="runner", state="active", interval=30.0, capabilities=CAPS, probe=1.0,
                  capacity={"runner": 2})

    def heard(kind, now, **more):
        deliver(agent, kind, node_id, hostname, ip, now, **more)
        return agent.quiet

    assert not heard("STATUS", T0 + 1, **fields)  # a new member: the tick must see it
    assert heard("STATUS", T0 + 2, **fields, load=[0.5, 0.1, 0.0])  # load alone: quiet
    assert not heard("STATUS", T0 + 3, **{**fields, "capacity": {"runner": 1}})
    assert not heard("STATUS", T0 + 4, **{**fields, "role": "builder"})
    assert heard("PING", T0 + 5, to=agent.node_id, seq=1)  # answered at once (a PONG)
    assert not heard("PINGREQ", T0 + 6, to=agent.node_id, target="zzzz", target_ip="10.9.9.9",
                     seq=2)


def _joining(make_agent, config, node_id: str):
    agent = make_agent(node_id=node_id, hostname="build-" + node_id[:4], cfg=config)
    agent.start(T0)
    step(agent, agent.clock, T0)
    assert agent.identity is None
    return agent


def _hello(agent, node_id: str, since: float, now: float, channel: str = "broadcast") -> bool:
    """Whether ``agent`` answers a HELLO from a newcomer that began to join at ``since``."""
    agent.discovery.channel = channel
    before = len(agent.unicast_sock.sent)
    deliver(agent, "HELLO", node_id, "build-new", "10.9.0.77", now, candidate_ip=None,
            joining_since=protocol.format_ts(since), capabilities=CAPS)
    return any(m.kind == "WELCOME" for m, _ in agent.unicast_sock.messages()[before:])


def test_a_joiner_welcomes_only_newcomers_behind_it_once(make_agent, config, fake_sock):
    joiner = _joining(make_agent, config, "5555-joiner")
    mine = joiner.life.joining_since
    assert _hello(joiner, "9999-late", mine + 1, T0 + 0.1)  # behind us: must wait for us
    assert not _hello(joiner, "9999-late", mine + 1, T0 + 0.3)  # its repeated HELLO
    assert not _hello(joiner, "1111-early", mine - 1, T0 + 0.4)  # ahead of us: needs nothing
    assert _hello(joiner, "1111-early", mine - 1, T0 + 0.5, "unicast")  # may hear no broadcast


def test_a_hello_older_than_its_senders_role_is_not_answered(make_agent, config, fake_sock):
    """A node behind on the HELLOs of 100 joining together, whose senders have their roles by
    now, answered each (membership had set it aside, so it looked like an unknown newcomer's)."""
    for agent in (_joining(make_agent, config, "5555-joiner"), _operating(make_agent, config)):
        mine = agent.life.joining_since or T0
        deliver(agent, "STATUS", "9999-late", "build-new", "10.9.0.77", T0 + 2, role="runner",
                state="active", interval=30.0, capabilities=CAPS)
        hello = protocol.make_payload("HELLO", "9999-late", "build-new", "10.9.0.77", T0 + 1.5,
                                      candidate_ip=None, capabilities=CAPS,
                                      joining_since=protocol.format_ts(mine + 1))
        received = agent.receive(protocol.encode(hello, SECRET), ("10.9.0.77", 50555), T0 + 2.1)
        before = len(agent.unicast_sock.sent)
        agent.handle(received, "10.9.0.77", T0 + 2.1)
        assert not [m for m, _ in agent.unicast_sock.messages()[before:] if m.kind == "WELCOME"]
        assert agent.membership.members["9999-late"].role == "runner"


def test_a_new_member_does_not_answer_hellos_said_before_it_was_one(make_agent, config,
                                                                    fake_sock):
    """100 joining together: each one that got its role read the others' HELLOs queued
    meanwhile and answered them as a member, ~100 WELCOMEs nobody waited for."""
    from test_unit_agent import run_until
    agent = _joining(make_agent, config, "5555-joiner")
    became = T0 + timing.DISCOVERY_MAX + 0.01
    run_until(agent, agent.clock, became)
    assert agent.role == "founder"

    def answered(sent_at: float, node_id: str) -> bool:
        hello = protocol.make_payload("HELLO", node_id, "build-new", "10.9.0.77", sent_at,
                                      candidate_ip=None, capabilities=CAPS,
                                      joining_since=protocol.format_ts(T0 + 0.5))
        received = agent.receive(protocol.encode(hello, SECRET), ("10.9.0.77", 50555),
                                 became + 0.5)
        before = len(agent.unicast_sock.sent)
        agent.handle(received, "10.9.0.77", became + 0.5)
        return any(m.kind == "WELCOME" for m, _ in agent.unicast_sock.messages()[before:])

    assert not answered(became - 0.2, "9999-before")
    assert answered(became + 0.2, "9999-after")


def test_a_member_answers_every_hello(make_agent, config, fake_sock):
    member = _operating(make_agent, config)
    for k in range(3):
        assert _hello(member, "9999-late", T0, T0 + 0.1 + k)


def test_a_joiners_keepalive_says_since_when_it_joins(make_agent, config, fake_sock):
    joiner = _joining(make_agent, config, "5555-joiner")
    # One ahead of it joins too (heard by its keep-alive alone): it waits, keeping alive.
    deliver(joiner, "STATUS", "1111-early", "build-early", "10.9.0.70", T0 + 0.1, role=None,
            state="joining", joining_since=protocol.format_ts(T0 - 5), capabilities=CAPS)
    assert [j.joining_since for j in joiner.membership.joiners.values()] == [T0 - 5]
    for k in range(1, 40):
        step(joiner, joiner.clock, T0 + k * 0.1)
        deliver(joiner, "STATUS", "1111-early", "build-early", "10.9.0.70", T0 + k * 0.1 + 0.05,
                role=None, state="joining", joining_since=protocol.format_ts(T0 - 5),
                capabilities=CAPS)
    assert joiner.identity is None and joiner.phase == "wait"
    keepalives = [m for m in _statuses(fake_sock) if m.get("state") == "joining"]
    assert keepalives and keepalives[-1].get("joining_since") == joiner.life.joining_since_text()


def _joiner_status(agent, k: int, now: float, **more) -> None:
    deliver(agent, "STATUS", f"1111-{k:04d}", f"build-j{k}", f"10.9.1.{k + 1}", now, role=None,
            state="joining", joining_since=protocol.format_ts(T0 - 60 + k), capabilities=CAPS,
            **more)


def test_many_joiners_keep_alive_more_slowly_and_are_waited_for_longer(make_agent, config,
                                                                       fake_sock):
    joiner = _joining(make_agent, config, "ffff-joiner")  # the last in the join order
    for k in range(60):  # 60 others join, all ahead of it: it waits, keeping alive
        _joiner_status(joiner, k, T0 + 0.01)
    fake_sock.clear()
    for k in range(1, 101):
        step(joiner, joiner.clock, T0 + k * 0.1)
        for j in range(60):
            if k % 10 == 0:  # they keep alive every second
                _joiner_status(joiner, j, T0 + k * 0.1 + 0.001)
    keepalives = [m for m in _statuses(fake_sock) if m.get("state") == "joining"]
    pace = 60 / timing.JOINING_KEEPALIVE_PEERS
    sent = sorted({(m.ts, m.get("keepalive")) for m in keepalives})  # (one per address)
    assert [keepalive for _, keepalive in sent] == [pace * timing.JOINING_KEEPALIVE] * 3
    # Who hears a paced keep-alive waits JOINING_PEER_TIMEOUT times the pace for the next one.
    member = _operating(make_agent, config)
    _joiner_status(member, 1, T0 + 1, keepalive=3.0)
    _joiner_status(member, 2, T0 + 1)
    step(member, member.clock, T0 + 1 + timing.JOINING_PEER_TIMEOUT + 0.1)
    assert sorted(member.membership.joiners) == ["1111-0001"]
    step(member, member.clock, T0 + 1 + 3 * timing.JOINING_PEER_TIMEOUT + 0.1)
    assert sorted(member.membership.joiners) == []
