"""What a join costs every member of a big hive: fewer IDENTIFY, fewer peers.json rewrites.

- A join round asks at most protocol.MAX_ADVISORS (16) members' advisors, chosen afresh for
  each round (IDENTIFY ``advisors``); a member not asked does not hand the IDENTIFY to its
  advisor nor rewrite peers.json for it at once; a joiner following another's round waits
  for that round's advisors.
- An asker's IDENTIFY retries go by unicast, only to the members whose advice is missing (a
  broadcast retry woke every agent and advisor of the hive and brought every ADVICE again).
- peers.json is rewritten after a change at most every ``Agent.peers_gap()`` (2 ms per member,
  at most 0.5 s), but at once for an IDENTIFY: the advisor waits to see it there.
- peers.json is written atomically without fsync (a live copy); identity.json with fsync.
"""

from __future__ import annotations

import json
import os
import uuid

from build_agent import protocol, state, timing
from hive_fakes import SECRET, T0
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


def test_an_identify_is_handed_to_the_advisor_once_peers_json_shows_it(make_agent, config,
                                                                       monkeypatch):
    agent = _operating(make_agent, config)
    _status_round(agent, 50, T0 + 0.5, 0.5)
    step(agent, agent.clock, T0 + 1.1)  # written just now: the next change waits for the gap
    shown = []
    monkeypatch.setattr(agent, "_relay", lambda message, source_ip: shown.append(
        (message.node_id, source_ip, _written(config)["requests"])))
    deliver(agent, "IDENTIFY", "ffff-new", "newbie", "10.9.9.9", T0 + 1.11,
            request="who_am_i", request_id="00112233aabbccdd", capabilities={})
    assert shown == []  # not from handle(): the file does not show it yet
    step(agent, agent.clock, T0 + 1.11)
    [(node_id, source_ip, requests)] = shown
    assert (node_id, source_ip) == ("ffff-new", "10.9.9.9")
    assert "00112233aabbccdd" in json.dumps(requests)


def _advise(agent, i: int, request_id: str, now: float) -> None:
    node_id, hostname, ip = _near(i)
    deliver(agent, "ADVICE", node_id, hostname, ip, now, request_id=request_id,
            **advice_fields(role="runner"))


def test_a_join_into_a_big_hive_asks_16_members_chosen_for_the_round(make_agent, clock,
                                                                     fake_sock, config):
    agent = make_agent()
    ask_start = _welcomed_by(agent, clock, 40)
    [(identify, to)] = sent(fake_sock, "IDENTIFY")
    asked = identify.get("advisors")
    members = {_near(i)[0]: i for i in range(40)}
    assert to == ("10.9.0.255", 50555) and len(asked) == protocol.MAX_ADVISORS == 16
    assert set(asked) <= set(members) and len(set(asked)) == 16
    assert agent.life.expected_advisors == 16
    # The retry goes to the asked ones that are silent, and only to them.
    for node_id in asked[:5]:
        _advise(agent, members[node_id], identify.get("request_id"), ask_start + 0.1)
    fake_sock.clear()
    run_until(agent, clock, ask_start + timing.IDENTIFY_SCHEDULE[1] + EPS)
    assert sorted(to for _, to in sent(fake_sock, "IDENTIFY")) == sorted(
        (_near(members[n])[2], 50555) for n in asked[5:])
    # Once 9 of the 16 (a strict majority) agree, it decides: no waiting for the others.
    for node_id in asked[5:9]:
        _advise(agent, members[node_id], identify.get("request_id"), clock.now + 0.01)
    step(agent, clock, clock.now + 0.01)
    assert agent.role == "runner" and clock.now < ask_start + timing.ADVICE_TIMEOUT
    assert sorted(agent.identity["assigned_by"]) == sorted(
        _near(members[n])[1] for n in asked[:9])


def test_with_16_asked_eight_agreeing_is_not_yet_a_decision(make_agent, clock, fake_sock):
    agent = make_agent()
    ask_start = _welcomed_by(agent, clock, 40)
    [(identify, _)] = sent(fake_sock, "IDENTIFY")
    members = {_near(i)[0]: i for i in range(40)}
    asked = identify.get("advisors")
    for node_id in asked[:8]:
        _advise(agent, members[node_id], identify.get("request_id"), ask_start + 0.1)
    step(agent, clock, ask_start + 0.1)
    assert agent.phase == "ask" and agent.identity is None  # 8 of 16: not more than half


def test_another_round_asks_another_set_and_a_small_hive_is_asked_whole(make_agent, clock,
                                                                        fake_sock):
    agent = make_agent()
    _welcomed_by(agent, clock, 40)
    first = sent(fake_sock, "IDENTIFY")[0][0].get("advisors")
    agent.life._begin_asking(clock.now, agent.life.phase, 40)
    again = agent.life._choose_advisors(agent.membership.established())
    assert len(again) == 16 and set(again) != set(first)
    assert agent.life._choose_advisors(agent.membership.established()[:16]) == []


def test_a_member_not_asked_leaves_the_identify_to_the_others(make_agent, config, monkeypatch):
    agent = _operating(make_agent, config)
    _status_round(agent, 50, T0 + 0.5, 0.5)
    step(agent, agent.clock, T0 + 1.1)  # peers.json written just now
    handed = []
    monkeypatch.setattr(agent, "_relay", lambda message, source_ip: handed.append(
        message.get("request_id")))
    others = [_peer(i)[0] for i in range(16)]
    deliver(agent, "IDENTIFY", "ffff-new", "newbie", "10.9.9.9", T0 + 1.11, request="who_am_i",
            request_id="aaaaaaaaaaaaaaaa", capabilities={}, advisors=others)
    step(agent, agent.clock, T0 + 1.11)
    assert handed == [] and "aaaaaaaaaaaaaaaa" not in json.dumps(_written(config)["requests"])
    deliver(agent, "IDENTIFY", "ffff-new", "newbie", "10.9.9.9", T0 + 1.12, request="who_am_i",
            request_id="bbbbbbbbbbbbbbbb", capabilities={}, advisors=others[:15] + [ME])
    step(agent, agent.clock, T0 + 1.12)
    assert handed == ["bbbbbbbbbbbbbbbb"]
    assert "bbbbbbbbbbbbbbbb" in json.dumps(_written(config)["requests"])


def test_a_follower_waits_for_the_advisors_its_round_asked(make_agent, clock, fake_sock):
    agent = make_agent()
    _welcomed_by(agent, clock, 40)  # (it asks itself meanwhile: the round ahead takes over)
    deliver(agent, "HELLO", "bbbb-2", "build2", "10.9.0.12", clock.now,
            joining_since=protocol.format_ts(T0 - 1), candidate_ip=None)
    asked = [_near(i)[0] for i in range(3, 19)]
    deliver(agent, "IDENTIFY", "bbbb-2", "build2", "10.9.0.12", clock.now + 0.01,
            request="who_am_i", request_id="0123456789abcdef",
            joining_since=protocol.format_ts(T0 - 1), batch=[ME], advisors=asked)
    step(agent, clock, clock.now + 0.02)
    assert agent.life.round_head == "bbbb-2" and agent.life.expected_advisors == 16
    for i in range(3, 19):
        _advise(agent, i, "0123456789abcdef", clock.now + 0.01)
    step(agent, clock, clock.now + 0.02)
    assert agent.role == "runner"


def test_an_identify_with_malformed_advisors_is_dropped():
    for advisors in ([], ["x"] * 2, [f"n{i}" for i in range(protocol.MAX_ADVISORS + 1)]):
        payload = protocol.make_payload("IDENTIFY", "ffff-new", "newbie", "10.9.9.9", T0,
                                        request="who_am_i", advisors=advisors)
        try:
            protocol.validate(payload)
        except protocol.ProtocolError as exc:
            assert "advisors" in str(exc) or "node ids" in str(exc)
        else:
            raise AssertionError(f"accepted {advisors!r}")


def test_a_round_with_chosen_advisors_and_the_longest_batch_fits_in_one_datagram():
    from types import SimpleNamespace
    from build_agent.lifecycle import BATCH_CHARS, Lifecycle
    advisors = [str(uuid.uuid4()) for _ in range(protocol.MAX_ADVISORS)]
    behind = [SimpleNamespace(node_id=str(uuid.uuid4())) for _ in range(protocol.MAX_BATCH)]
    batch = Lifecycle._batch(behind, BATCH_CHARS - sum(len(n) + 3 for n in advisors))
    assert len(batch) >= 80
    payload = protocol.make_payload(
        "IDENTIFY", str(uuid.uuid4()), "h" * 253, "10.9.0.99", T0, request="who_am_i",
        request_id="0123456789abcdef", candidate_ip=None, attempt=0, members=199,
        joining_since=protocol.format_ts(T0), batch=batch, advisors=advisors,
        capabilities={"cpu_cores": 64, "ram_gb": 512.0, "has_gpu": True, "arch": "x" * 32,
                      "os": "o" * 64, "docker_installed": True})
    assert len(protocol.encode(payload, SECRET)) <= protocol.MAX_DATAGRAM


def test_the_routine_status_slows_down_beyond_100_members(make_agent, config, fake_sock):
    agent = _operating(make_agent, config)
    _status_round(agent, 50, T0 + 0.5, 0.5)
    assert agent.status_interval == 3 * config.heartbeat_interval
    _status_round(agent, 200, T0 + 1.5, 0.5)
    assert len(agent.membership.members) == 200
    assert agent.status_interval == 6 * config.heartbeat_interval  # 3 * 200 / 100
    fake_sock.clear()
    sent_at = []
    for k in range(1, 13):
        now = T0 + 2 + k * config.heartbeat_interval
        for i in range(200):  # the members keep talking (nobody expires)
            node_id, hostname, ip = _peer(i)
            deliver(agent, "STATUS", node_id, hostname, ip, now - 0.5, role="runner",
                    state="active", interval=60.0)
        before = len([m for m, _ in fake_sock.messages() if m.kind == "STATUS"])
        step(agent, agent.clock, now)
        statuses = [m for m, _ in fake_sock.messages() if m.kind == "STATUS"]
        if len(statuses) > before:
            sent_at.append(k)
            assert statuses[-1].get("interval") == 60.0
    assert len(sent_at) == 2 and sent_at[1] - sent_at[0] == 6, sent_at


def test_a_big_hive_answers_a_repeated_hello_with_about_32_welcomes(make_agent, config,
                                                                    fake_sock):
    agent = _operating(make_agent, config)
    _status_round(agent, 100, T0 + 0.5, 0.5)
    answered = {"first": 0, "repeat": 0}
    for j in range(200):
        for which, now in (("first", T0 + 2 + j * 0.01), ("repeat", T0 + 2.25 + j * 0.01)):
            fake_sock.clear()
            deliver(agent, "HELLO", f"ffff-{j:04d}", f"new{j}", f"10.9.3.{j % 250}", now,
                    candidate_ip=None, joining_since=protocol.format_ts(T0 + 1.9))
            answered[which] += len([m for m, _ in fake_sock.messages() if m.kind == "WELCOME"])
    assert answered["first"] == 200  # every first HELLO
    assert 200 * 0.15 < answered["repeat"] < 200 * 0.5  # about 32 of 100 members: 32 %


def test_a_small_hive_answers_every_repeated_hello(make_agent, config, fake_sock):
    agent = _operating(make_agent, config)
    _status_round(agent, 20, T0 + 0.5, 0.5)
    for now in (T0 + 2, T0 + 2.25, T0 + 2.75):
        deliver(agent, "HELLO", "ffff-0001", "new1", "10.9.3.1", now, candidate_ip=None,
                joining_since=protocol.format_ts(T0 + 1.9))
    assert len([m for m, _ in fake_sock.messages() if m.kind == "WELCOME"]) == 3


def test_a_joiner_reads_what_is_queued_before_concluding_no_advice_came(make_agent, clock,
                                                                        fake_sock):
    agent = make_agent()
    ask_start = _welcomed_by(agent, clock, 4)
    agent.behind = True  # the loop's last read left datagrams queued
    step(agent, clock, ask_start + timing.ADVICE_TIMEOUT + 0.1)
    assert agent.phase == "ask"
    agent.behind = False
    step(agent, clock, ask_start + timing.ADVICE_TIMEOUT + 0.2)
    assert agent.phase == "backoff"
    # Behind for good (a flood): it concludes anyway after twice the timeout.
    agent2 = make_agent(node_id="eeee-agent-6")
    ask2 = _welcomed_by(agent2, clock, 4)
    agent2.behind = True
    step(agent2, clock, ask2 + 2 * timing.ADVICE_TIMEOUT + 0.01)
    assert agent2.phase == "backoff"


def test_a_member_starting_again_gets_one_welcome_for_its_hello_and_its_unicast_copy(
        make_agent, config, fake_sock):
    agent = _operating(make_agent, config)
    _status_round(agent, 50, T0 + 0.5, 0.5)
    node_id, hostname, ip = _peer(7)
    started = protocol.format_ts(T0 + 5)
    fake_sock.clear()
    for now in (T0 + 5.1, T0 + 5.101):  # by broadcast, and its unicast copy
        deliver(agent, "HELLO", node_id, hostname, ip, now, role="runner", started=started,
                capabilities={})
    assert len([m for m, _ in fake_sock.messages() if m.kind == "WELCOME"]) == 1
    deliver(agent, "HELLO", node_id, hostname, ip, T0 + 6.5, role="runner", started=started,
            capabilities={})  # a later HELLO (a clone's new id, a retry): answered again
    assert len([m for m, _ in fake_sock.messages() if m.kind == "WELCOME"]) == 2
