"""Taking turns: one asker at a time, and late or replayed datagrams that must change nothing."""

from __future__ import annotations

import logging

from build_agent import protocol, timing
from build_agent.membership import Membership
from hive_fakes import SECRET, T0, message
from test_unit_agent import deliver, make_agent, run_until, sent, step  # noqa: F401 (fixture)

EPS = 0.001


def _discovered_one_member(make_agent, clock, caplog):
    """An agent (build5) that has heard the founder build1 and finished discovery."""
    agent = make_agent()
    caplog.set_level(logging.INFO)
    clock.now = T0
    agent.start(T0)
    step(agent, clock, T0)
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 0.01, to=agent.node_id,
            role="founder", members=1)
    return agent


def test_a_node_waits_while_another_one_is_asking_even_one_behind_it(make_agent, clock,
                                                                     fake_sock, caplog):
    agent = _discovered_one_member(make_agent, clock, caplog)
    # build7 started later (behind us) but is already asking: it did not know of us.
    deliver(agent, "IDENTIFY", "zzzz-7", "build7", "10.9.0.17", T0 + 0.05, request="who_am_i",
            joining_since=protocol.format_ts(T0 + 0.02))
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "wait" and not sent(fake_sock, "IDENTIFY")
    assert "Waiting while build7 ask(s) the hive" in caplog.text
    # build7 settles: our turn.
    deliver(agent, "STATUS", "zzzz-7", "build7", "10.9.0.17", T0 + 0.4, role="controller",
            state="active", interval=10)
    run_until(agent, clock, T0 + 0.41)
    assert agent.phase == "ask" and agent.expected_advisors == 2


def test_an_asker_that_never_settles_is_waited_for_only_until_the_advice_timeout(
        make_agent, clock, fake_sock, caplog):
    agent = _discovered_one_member(make_agent, clock, caplog)
    deliver(agent, "IDENTIFY", "zzzz-7", "build7", "10.9.0.17", T0 + 0.05, request="who_am_i",
            joining_since=protocol.format_ts(T0 + 0.02))
    run_until(agent, clock, T0 + 0.05 + timing.ADVICE_TIMEOUT - EPS)
    assert agent.phase == "wait"
    run_until(agent, clock, T0 + 0.05 + timing.ADVICE_TIMEOUT + EPS)
    assert agent.phase == "ask"


def test_an_asker_yields_to_a_node_ahead_asking_at_the_same_moment(make_agent, clock, fake_sock,
                                                                   caplog):
    agent = _discovered_one_member(make_agent, clock, caplog)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "ask"
    # build2 started joining before us and now asks too: it goes first.
    deliver(agent, "IDENTIFY", "bbbb-2", "build2", "10.9.0.12", T0 + 0.2, request="who_am_i",
            joining_since=protocol.format_ts(T0 - 1))
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.201, to=agent.node_id,
            suggested_role="controller", packages=["ansible", "git"], config={},
            reason="first node becomes controller")
    step(agent, clock, T0 + 0.202)
    assert agent.phase == "wait" and agent.advice == {}
    assert "build2 is asking the hive ahead of me; waiting for it" in caplog.text
    # build2 becomes the controller; we ask again and are told 'builder'.
    deliver(agent, "STATUS", "bbbb-2", "build2", "10.9.0.12", T0 + 0.3, role="controller",
            state="active", interval=10)
    step(agent, clock, T0 + 0.301)
    assert agent.phase == "ask" and agent.expected_advisors == 2
    for node_id, host, ip in (("aaaa-1", "build1", "10.9.0.11"), ("bbbb-2", "build2", "10.9.0.12")):
        deliver(agent, "ADVICE", node_id, host, ip, T0 + 0.31, to=agent.node_id,
                suggested_role="builder", packages=["git"], config={},
                reason="cluster needs builders")
    step(agent, clock, T0 + 0.32)
    assert agent.role == "builder"


def test_a_late_welcome_does_not_demote_a_member():
    members = Membership(10.0)
    # build3 announced its role (STATUS on the broadcast socket) ...
    members.observe(message("STATUS", "cccc-3", "build3", "10.9.0.13", T0 + 1.0, role="builder",
                            state="active"), "10.9.0.13", 100.0)
    # ... then a WELCOME it sent while still joining arrives (on the unicast socket).
    late = message("WELCOME", "cccc-3", "build3", "10.9.0.13", T0 + 0.9, role=None,
                   joining_since=protocol.format_ts(T0))
    assert members.observe(late, "10.9.0.13", 100.01) is False
    assert [m.role for m in members.established()] == ["builder"]
    assert members.joiners == {}


def test_a_replay_is_refused_before_its_signature_is_checked():  # (and so is an older message)
    guard = protocol.ReplayGuard()
    data = protocol.encode(protocol.make_payload("STATUS", "cccc-3", "build3", "10.9.0.13", T0,
                                                 role="builder"), SECRET)
    first = protocol.decode(data, [SECRET], T0, seen=guard)
    assert not guard.is_replay(first, T0)
    checked = []

    class CountingSecret(bytes):  # any use of the secret means the HMAC was computed
        def ljust(self, *args):
            checked.append(True)
            return bytes.ljust(self, *args)

    try:
        protocol.decode(data, [CountingSecret(SECRET)], T0 + 1, seen=guard)
        raise AssertionError("a replay was accepted")
    except protocol.ProtocolError as exc:
        assert str(exc) == "replayed"
    assert checked == []


def test_a_node_that_gives_way_says_so_and_is_no_longer_waited_for(make_agent, clock, fake_sock,
                                                                   caplog):
    agent = _discovered_one_member(make_agent, clock, caplog)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    deliver(agent, "IDENTIFY", "bbbb-2", "build2", "10.9.0.12", T0 + 0.2, request="who_am_i",
            joining_since=protocol.format_ts(T0 - 1))
    fake_sock.clear()
    step(agent, clock, T0 + 0.202)
    assert agent.phase == "wait"
    goodbyes = [m for m, _ in fake_sock.messages() if m.kind == "STATUS"]
    assert [m.get("state") for m in goodbyes] == ["joining"]
    # An observer that saw our IDENTIFY stops counting us as asking when that STATUS arrives.
    observer = Membership(10.0)
    observer.observe(message("IDENTIFY", agent.node_id, "build5", "10.9.0.2", T0 + 0.1,
                             request="who_am_i"), "10.9.0.2", 50.0)
    assert [j.hostname for j in observer.joiners_asking(50.1)] == ["build5"]
    observer.observe(goodbyes[0], "10.9.0.2", 50.2)
    assert observer.joiners_asking(50.3) == []
