"""Mass joins: batched rounds.  The first joiner of the queue asks for the joiners behind it in
one IDENTIFY (``batch``); advisors advise them all in that order, each as if those before it had
joined already; each joiner follows the round and decides by its own advice."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest

from build_advisor.advisor import start_thread
from build_agent import protocol, state, timing
from hive_fakes import SECRET, T0
from test_unit_advisor import (SELF_ID, RecordingPolicy, advices, feed,  # noqa: F401
                               make_advisor, peer_entry)
from test_unit_agent import (ME, deliver, make_agent, run_until, sent,  # noqa: F401 (fixture)
                             step)

EPS = 0.001
HEAD, J1, J2, J3 = "head-node-1", "join-node-2", "join-node-3", "join-node-4"
ROUND = "0123456789abcdef"


# --- the wire ----------------------------------------------------------------------------------

def test_a_batch_of_the_most_joiners_a_round_takes_fits_in_one_datagram():
    ids = [str(uuid.uuid4()) for _ in range(protocol.MAX_BATCH)]
    payload = protocol.make_payload(
        "IDENTIFY", str(uuid.uuid4()), "h" * 253, "10.9.0.99", T0, request="who_am_i",
        request_id=ROUND, candidate_ip=None, attempt=0, joining_since=protocol.format_ts(T0),
        capabilities={"cpu_cores": 64, "ram_gb": 512.0, "has_gpu": True, "arch": "x" * 32,
                      "os": "o" * 64, "docker_installed": True}, batch=ids)
    assert len(protocol.encode(payload, SECRET)) <= protocol.MAX_DATAGRAM


@pytest.mark.parametrize("batch", [[], ["a"] * 2, ["bad id!"], [1],
                                   [f"n{i}" for i in range(protocol.MAX_BATCH + 1)]])
def test_a_malformed_batch_is_dropped(batch):
    payload = protocol.make_payload("IDENTIFY", HEAD, "build9", "10.9.0.99", T0,
                                    request="who_am_i", request_id=ROUND, batch=batch)
    with pytest.raises(protocol.ProtocolError, match="batch"):
        protocol.validate(payload)


# --- the advisor ---------------------------------------------------------------------------------

def joiner_entry(node_id: str, n: int, **caps) -> dict:
    return {"node_id": node_id, "hostname": f"build{n}", "ip": f"10.9.0.{n}",
            "joining_since": protocol.format_ts(T0 + n / 100), "capabilities": caps}


def write_view(config, members: int, joiners: list[dict], requests: dict | None = None) -> None:
    """The agent's peers.json: this founder, ``members`` more members, the joiners it heard."""
    me = {"hostname": "build0", "primary_ip": "10.9.0.2", "node_id": SELF_ID, "role": "founder",
          "status": "active", "joined_at": "2026-11-26T11:00:00Z",
          "role_since": "2026-11-26T11:00:00Z"}
    state.write_json_atomic(config.peers_path, {
        "self": me, "peers": [peer_entry(i) for i in range(1, members + 1)],
        "requests": requests if requests is not None else {HEAD: ROUND},
        "joiners": joiners})


def ask_batch(advisor, batch, now=T0 + 1, request_id=ROUND, node_id=HEAD):
    return feed(advisor, "IDENTIFY", node_id, "build20", "10.9.0.20", now, request="who_am_i",
                request_id=request_id, candidate_ip=None, capabilities={}, attempt=0,
                joining_since=protocol.format_ts(T0), **({"batch": batch} if batch else {}))


def told(sock) -> list[tuple[str, str, str | None, str]]:
    return [(m.get("to"), m.get("suggested_role"), m.get("batch_of"), addr[0])
            for m, addr in advices(sock)]


def test_a_batch_is_advised_in_its_order_as_one_after_another_joins(make_advisor, config,
                                                                      fake_sock):
    advisor = make_advisor()
    write_view(config, 0, [joiner_entry(J1, 21), joiner_entry(J2, 22), joiner_entry(J3, 23)])
    ask_batch(advisor, [J1, J2, J3])
    # The default policy by peers (not the advisor, not the newcomer): 0 -> controller,
    # 1-2 -> builder, 3+ -> runner; each joiner counts those before it in the batch.
    assert told(fake_sock) == [(HEAD, "controller", None, "10.9.0.20"),
                               (J1, "builder", HEAD, "10.9.0.21"),
                               (J2, "builder", HEAD, "10.9.0.22"),
                               (J3, "runner", HEAD, "10.9.0.23")]
    assert {m.get("request_id") for m, _ in advices(fake_sock)} == {ROUND}


def test_a_users_policy_sees_those_before_it_in_the_batch_as_members(make_advisor, config,
                                                                     fake_sock):
    policy = RecordingPolicy()
    advisor = make_advisor(policy=policy, spawn=lambda work: work())  # the thread, inline
    write_view(config, 1, [joiner_entry(J1, 21, has_gpu=True), joiner_entry(J2, 22)])
    ask_batch(advisor, [J1, J2])
    assert [role for _, role, _, _ in told(fake_sock)] == ["builder", "builder", "runner"]
    views = [[(m["hostname"], m["role"]) for m in view["peers"]] for view, _ in policy.calls]
    assert views == [[("build1", "builder")],
                     [("build1", "builder"), ("build20", "builder")],
                     [("build1", "builder"), ("build20", "builder"), ("build21", "builder")]]
    assert policy.calls[1][1] == {"node_id": J1, "hostname": "build21", "ip": "10.9.0.21",
                                  "capabilities": {"has_gpu": True}}


def test_a_batch_stops_at_a_joiner_this_advisor_does_not_know(make_advisor, config, fake_sock,
                                                              caplog):
    caplog.set_level(logging.INFO)
    advisor = make_advisor()
    write_view(config, 0, [joiner_entry(J1, 21), joiner_entry(J3, 23)])  # J2 unheard here
    ask_batch(advisor, [J1, J2, J3])
    # J3's role depends on J2's: only the advisors that know J2 advise J3.
    assert [to for to, _, _, _ in told(fake_sock)] == [HEAD, J1]
    assert f"Advising 2 of the 4 joining nodes of build20's round: {J2} is not known" \
        in caplog.text


def test_a_listed_joiner_that_settled_meanwhile_is_counted_once(make_advisor, config, fake_sock):
    advisor = make_advisor()
    write_view(config, 0, [joiner_entry(J2, 22)])
    state.write_json_atomic(config.peers_path, {
        **state.read_json(config.peers_path),
        "peers": [{**peer_entry(1), "node_id": J1, "hostname": "build21"}]})
    ask_batch(advisor, [J1, J2])
    assert told(fake_sock)[0][:2] == (HEAD, "builder")  # J1 is a member already
    assert told(fake_sock)[1][:2] == (J2, "builder")
    assert len(told(fake_sock)) == 2


def test_a_joiner_of_a_batch_that_asks_again_is_told_the_same(make_advisor, config, fake_sock):
    advisor = make_advisor()
    write_view(config, 0, [joiner_entry(J1, 21), joiner_entry(J2, 22), joiner_entry(J3, 23)])
    ask_batch(advisor, [J1, J2, J3])
    fake_sock.clear()
    # J3 lost its ADVICE and asks itself with the round's id; the hive grew meanwhile, and a
    # fresh answer could differ: it is told what its place in the round gave it.
    write_view(config, 0, [joiner_entry(J3, 23)], requests={J3: ROUND})
    feed(advisor, "IDENTIFY", J3, "build23", "10.9.0.23", T0 + 1.4, request="who_am_i",
         request_id=ROUND, capabilities={}, attempt=1, batch_of=HEAD)
    assert told(fake_sock) == [(J3, "runner", None, "10.9.0.23")]
    assert advices(fake_sock)[0][0].get("request_id") == ROUND
    # Asking in a round of its own (a new id), it is told the same too ...
    fake_sock.clear()
    write_view(config, 2, [joiner_entry(J3, 23)], requests={J3: "feedfeedfeedfeed"})
    feed(advisor, "IDENTIFY", J3, "build23", "10.9.0.23", T0 + 2, request="who_am_i",
         request_id="feedfeedfeedfeed", capabilities={}, attempt=0)
    assert told(fake_sock) == [(J3, "runner", None, "10.9.0.23")]
    # ... until the reservation lapses: then it is advised afresh.
    fake_sock.clear()
    write_view(config, 0, [], requests={J3: "feedfeedfeedfee2"})
    feed(advisor, "IDENTIFY", J3, "build23", "10.9.0.23", T0 + 1 + timing.BATCH_RESERVATION + EPS,
         request="who_am_i", request_id="feedfeedfeedfee2", capabilities={}, attempt=0)
    assert told(fake_sock) == [(J3, "controller", None, "10.9.0.23")]


def test_the_head_asking_again_in_its_round_is_answered_alone(make_advisor, config, fake_sock):
    advisor = make_advisor()
    write_view(config, 0, [joiner_entry(J1, 21), joiner_entry(J2, 22)])
    ask_batch(advisor, [J1, J2])
    fake_sock.clear()
    ask_batch(advisor, [J1, J2], now=T0 + 1.4)  # its retransmission: one ADVICE, not three
    assert told(fake_sock) == [(HEAD, "controller", None, "10.9.0.20")]


def test_a_slow_policy_gets_one_deadline_for_the_whole_batch(make_advisor, config, fake_sock,
                                                             caplog):
    caplog.set_level(logging.INFO)
    release = threading.Event()
    calls = []

    def policy(view, newcomer):
        calls.append(newcomer["node_id"])
        if len(calls) == 3:
            release.wait(10)  # slow from the third newcomer on
        return {"role": "special", "packages": [], "config": {}, "reason": "my policy"}

    advisor = make_advisor(policy=policy, spawn=start_thread)
    write_view(config, 0, [joiner_entry(J1, 21), joiner_entry(J2, 22), joiner_entry(J3, 23)])
    ask_batch(advisor, [J1, J2, J3])
    for _ in range(200):
        if len(advices(fake_sock)) == 2:
            break
        time.sleep(0.01)
    assert advisor.tick(T0 + 1 + timing.POLICY_TIMEOUT - EPS) <= T0 + 1 + timing.POLICY_TIMEOUT
    assert len(advices(fake_sock)) == 2  # the policy's first two; no deadline per newcomer
    # J3, still waiting, asks again in the round: not advised afresh (that would not count
    # those before it in the round); the round will advise it.
    state.write_json_atomic(config.peers_path, {**state.read_json(config.peers_path),
                                                "requests": {J3: ROUND}})
    feed(advisor, "IDENTIFY", J3, "build23", "10.9.0.23", T0 + 1.5, request="who_am_i",
         request_id=ROUND, capabilities={}, attempt=1, batch_of=HEAD)
    assert len(advices(fake_sock)) == 2
    advisor.tick(T0 + 1 + timing.POLICY_TIMEOUT)
    # The rest is not advised here (advisors late at different places would give it different
    # roles): J2 and J3 ask again in a later round.
    assert told(fake_sock) == [(HEAD, "special", None, "10.9.0.20"),
                               (J1, "special", HEAD, "10.9.0.21")]
    assert "Policy failed for build20's round (no answer for the whole round within 1 s): 2 " \
           "of its 4 joining node(s) not advised here" in caplog.text
    release.set()
    for _ in range(200):
        if "after the round's deadline" in caplog.text:
            break
        time.sleep(0.01)
    assert len(advices(fake_sock)) == 2  # the late answer is dropped
    assert calls == [HEAD, J1, J2]


def test_a_policy_too_late_for_the_asker_gets_the_default_for_it_alone(make_advisor, config,
                                                                      fake_sock, caplog):
    held = []
    advisor = make_advisor(policy=RecordingPolicy(), spawn=held.append)  # never runs
    write_view(config, 0, [joiner_entry(J1, 21), joiner_entry(J2, 22)])
    ask_batch(advisor, [J1, J2])
    advisor.tick(T0 + 1 + timing.POLICY_TIMEOUT)
    assert told(fake_sock) == [(HEAD, "controller", None, "10.9.0.20")]  # as for a lone one


# --- the joiner -----------------------------------------------------------------------------------

def hello(agent, node_id, host, ip, now, since):
    deliver(agent, "HELLO", node_id, host, ip, now, candidate_ip=None,
            joining_since=protocol.format_ts(since), capabilities={})


def discovered(make_agent, clock):
    """build5 (joining since T0) has heard the founder build1 and finished discovery."""
    agent = make_agent()
    clock.now = T0
    agent.start(T0)
    step(agent, clock, T0)
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 0.01, to=ME,
            role="founder", members=1)
    return agent


def test_the_first_joiner_of_the_queue_asks_for_those_behind_it(make_agent, clock, fake_sock,
                                                                caplog):
    caplog.set_level(logging.INFO)
    agent = make_agent()
    clock.now = T0
    agent.start(T0)
    step(agent, clock, T0)
    hello(agent, "zzzz-8", "build8", "10.9.0.18", T0 + 0.02, T0 + 0.02)
    hello(agent, "yyyy-7", "build7", "10.9.0.17", T0 + 0.03, T0 + 0.01)
    hello(agent, "aaaa-0", "build0", "10.9.0.10", T0 + 0.03, T0 - 5)  # backing off: not taken
    deliver(agent, "STATUS", "aaaa-0", "build0", "10.9.0.10", T0 + 0.035, state="backoff",
            joining_since=protocol.format_ts(T0 + 0.5))
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 0.04, to=ME,
            role="founder", members=1)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    [(identify, _)] = sent(fake_sock, "IDENTIFY")
    assert identify.get("batch") == ["yyyy-7", "zzzz-8"]
    assert "Asking for 2 joining node(s) behind me in the same round" in caplog.text


def test_a_lone_joiner_asks_as_before_without_a_batch(make_agent, clock, fake_sock):
    agent = discovered(make_agent, clock)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    [(identify, _)] = sent(fake_sock, "IDENTIFY")
    assert "batch" not in identify.payload  # what a reference advisor has always been sent


def follow_build2(agent, clock, batch=(ME, "zzzz-8"), now=T0 + 0.2):
    hello(agent, "bbbb-2", "build2", "10.9.0.12", T0 + 0.02, T0 - 1)  # ahead of us
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "wait"
    deliver(agent, "IDENTIFY", "bbbb-2", "build2", "10.9.0.12", now, request="who_am_i",
            request_id=ROUND, joining_since=protocol.format_ts(T0 - 1), batch=list(batch))
    step(agent, clock, now + EPS)


def test_a_joiner_listed_by_one_ahead_of_it_follows_its_round(make_agent, clock, fake_sock,
                                                              caplog):
    caplog.set_level(logging.INFO)
    agent = discovered(make_agent, clock)
    follow_build2(agent, clock)
    assert agent.phase == "ask" and agent.request_id == ROUND
    assert not sent(fake_sock, "IDENTIFY")  # build2's IDENTIFY asked for us
    assert "Asking peers for role assignment in the round of build2 (3 joining together)..." \
        in caplog.text
    # build2 settles first (it is a member now) and its advisor answers us from a view that
    # did not count the round: its vote does not count.
    deliver(agent, "STATUS", "bbbb-2", "build2", "10.9.0.12", T0 + 0.25, role="controller",
            state="active", interval=10)
    deliver(agent, "ADVICE", "bbbb-2", "build2", "10.9.0.12", T0 + 0.26, to=ME,
            suggested_role="runner", packages=[], config={}, reason="stale",
            request_id=ROUND)
    step(agent, clock, T0 + 0.27)
    assert agent.phase == "ask" and agent.advice == {}
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.28, to=ME,
            suggested_role="builder", packages=["git"], config={}, reason="builders",
            request_id=ROUND, batch_of="bbbb-2")
    step(agent, clock, T0 + 0.29)
    assert agent.role == "builder" and agent.identity["assigned_by"] == ["build1"]


def test_a_joiner_ignores_a_batch_from_one_behind_it(make_agent, clock, fake_sock):
    agent = discovered(make_agent, clock)
    hello(agent, "bbbb-2", "build2", "10.9.0.12", T0 + 0.02, T0 - 1)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    deliver(agent, "IDENTIFY", "cccc-9", "build9", "10.9.0.19", T0 + 0.2, request="who_am_i",
            request_id=ROUND, joining_since=protocol.format_ts(T0 + 1), batch=[ME])
    step(agent, clock, T0 + 0.2 + EPS)
    assert agent.phase == "wait"


def test_a_follower_missing_advice_asks_itself_with_the_rounds_id(make_agent, clock, fake_sock):
    """... once the round's asker has had its role for a retry interval (the advisors answer a
    batch in order, the asker first), and not before the last retry time."""
    agent = discovered(make_agent, clock)
    follow_build2(agent, clock)
    run_until(agent, clock, T0 + 0.2 + timing.IDENTIFY_SCHEDULE[-1] + 0.1)
    assert not sent(fake_sock, "IDENTIFY")  # build2 has no role yet: neither would we
    settled = T0 + 0.2 + timing.IDENTIFY_SCHEDULE[-1] + 0.2
    deliver(agent, "STATUS", "bbbb-2", "build2", "10.9.0.12", settled, role="controller",
            state="active", interval=10)
    run_until(agent, clock, settled + timing.IDENTIFY_SCHEDULE[1] - 0.01)
    assert not sent(fake_sock, "IDENTIFY")
    run_until(agent, clock, settled + timing.IDENTIFY_SCHEDULE[1] + EPS)
    # Only build1 (the one advisor of the round) is asked again, by unicast.
    [(identify, address)] = sent(fake_sock, "IDENTIFY")
    assert address == ("10.9.0.11", 50555)
    assert identify.get("request_id") == ROUND and "batch" not in identify.payload
    assert identify.get("batch_of") == "bbbb-2"


def test_a_follower_that_gets_no_advice_takes_its_own_turn(make_agent, clock, fake_sock,
                                                           caplog):
    caplog.set_level(logging.INFO)
    agent = discovered(make_agent, clock)
    follow_build2(agent, clock)
    deliver(agent, "STATUS", "bbbb-2", "build2", "10.9.0.12", T0 + 0.3, role="controller",
            state="active", interval=10)
    run_until(agent, clock, T0 + 0.2 + timing.ADVICE_TIMEOUT + 0.01)
    assert "No advice for me in the round I followed; taking my own turn" in caplog.text
    assert agent.phase == "ask" and agent.request_id != ROUND  # a round of its own
    assert agent.reask_backoff == timing.REASK_BACKOFF_FIRST  # not a backoff


def test_a_joiner_that_missed_the_rounds_identify_follows_it_by_its_advice(make_agent, clock,
                                                                          fake_sock):
    agent = discovered(make_agent, clock)
    hello(agent, "bbbb-2", "build2", "10.9.0.12", T0 + 0.02, T0 - 1)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "wait"
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.3, to=ME,
            suggested_role="builder", packages=["git"], config={}, reason="builders",
            request_id=ROUND, batch_of="bbbb-2")
    step(agent, clock, T0 + 0.3 + EPS)
    assert agent.role == "builder"


def test_a_joiner_left_out_of_a_round_waits_for_all_of_it(make_agent, clock, fake_sock):
    agent = discovered(make_agent, clock)
    hello(agent, "bbbb-2", "build2", "10.9.0.12", T0 + 0.02, T0 - 1)
    hello(agent, "zzzz-8", "build8", "10.9.0.18", T0 + 0.03, T0 + 0.5)  # behind us
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    # build2 did not know of us: its round takes build8, behind us, but not us.
    deliver(agent, "IDENTIFY", "bbbb-2", "build2", "10.9.0.12", T0 + 0.2, request="who_am_i",
            request_id=ROUND, joining_since=protocol.format_ts(T0 - 1), batch=["zzzz-8"])
    deliver(agent, "STATUS", "bbbb-2", "build2", "10.9.0.12", T0 + 0.3, role="controller",
            state="active", interval=10)
    run_until(agent, clock, T0 + 0.4)
    assert agent.phase == "wait"  # build8 is still being advised (its role did not count us)
    deliver(agent, "STATUS", "zzzz-8", "build8", "10.9.0.18", T0 + 0.5, role="builder",
            state="active", interval=10)
    run_until(agent, clock, T0 + 0.5 + EPS)
    assert agent.phase == "ask" and agent.expected_advisors == 3


def test_a_follower_counts_only_the_advisors_that_were_members_when_its_round_began(
        make_agent, clock, fake_sock):
    agent = discovered(make_agent, clock)
    hello(agent, "bbbb-2", "build2", "10.9.0.12", T0 + 0.02, T0 - 1)
    hello(agent, "zzzz-8", "build8", "10.9.0.18", T0 + 0.03, T0 + 0.5)
    deliver(agent, "WELCOME", "cccc-3", "build3", "10.9.0.13", T0 + 0.04, to=ME,
            role="builder", members=2)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    # The round's ADVICE comes before its IDENTIFY (another socket): we follow it at once ...
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.3, to=ME,
            suggested_role="runner", packages=[], config={}, reason="runners",
            request_id=ROUND, batch_of="bbbb-2")
    deliver(agent, "IDENTIFY", "bbbb-2", "build2", "10.9.0.12", T0 + 0.31, request="who_am_i",
            request_id=ROUND, joining_since=protocol.format_ts(T0 - 1), batch=[ME, "zzzz-8"])
    step(agent, clock, T0 + 0.32)
    assert agent.phase == "ask" and agent.expected_advisors == 2
    # ... build8 (in the round) and build6 (a member since) settle; neither one's vote counts.
    for node_id, host, ip in (("zzzz-8", "build8", "10.9.0.18"), ("ffff-6", "build6", "10.9.0.16")):
        deliver(agent, "STATUS", node_id, host, ip, T0 + 0.33, role="builder", state="active",
                interval=10)
        deliver(agent, "ADVICE", node_id, host, ip, T0 + 0.34, to=ME, suggested_role="builder",
                packages=[], config={}, reason="stale view", request_id=ROUND)
    step(agent, clock, T0 + 0.35)
    assert agent.phase == "ask" and list(agent.advice) == ["aaaa-1"]
    deliver(agent, "ADVICE", "cccc-3", "build3", "10.9.0.13", T0 + 0.36, to=ME,
            suggested_role="runner", packages=[], config={}, reason="runners",
            request_id=ROUND, batch_of="bbbb-2")
    step(agent, clock, T0 + 0.37)
    assert agent.role == "runner" and agent.identity["votes"] == {"runner": 2}


def test_the_advisor_waits_for_a_view_with_the_members_the_asker_knows(make_advisor, config,
                                                                       fake_sock):
    advisor = make_advisor()
    write_view(config, 0, [])  # our agent has not heard build1 settle yet
    feed(advisor, "IDENTIFY", HEAD, "build20", "10.9.0.20", T0 + 1, request="who_am_i",
         request_id=ROUND, capabilities={}, attempt=0, members=2)
    advisor.tick(T0 + 1.01)
    assert advices(fake_sock) == []  # 'controller' would not count build1
    write_view(config, 1, [])
    advisor.tick(T0 + 1.02)
    assert told(fake_sock) == [(HEAD, "builder", None, "10.9.0.20")]


# --- a crowd: what each joiner sends less of ----------------------------------------------------

def _hellos(sock) -> int:
    return len(sent(sock, "HELLO"))


def _crowd(agent, clock, joiners: int, now: float) -> None:
    """``joiners`` others joining, all behind us (we started first), heard by their HELLOs."""
    for n in range(joiners):
        hello(agent, f"cccc-{n:03d}", f"build{100 + n}", f"10.9.0.{100 + n}", now, T0 + 5)


def test_in_a_crowd_a_joiner_does_not_repeat_its_hello(make_agent, clock, fake_sock):
    """Fewer than JOINING_KEEPALIVE_PEERS others joining: HELLO at each time of HELLO_SCHEDULE
    (against a lost one); that many or more: once (their WELCOMEs are late, not lost, and 100
    joiners' repeats were 200 more datagrams for every node)."""
    for others, hellos in ((timing.JOINING_KEEPALIVE_PEERS - 1, len(timing.HELLO_SCHEDULE)),
                           (timing.JOINING_KEEPALIVE_PEERS, 1)):
        fake_sock.clear()
        agent = make_agent()
        clock.now = T0
        agent.start(T0)
        step(agent, clock, T0)
        _crowd(agent, clock, others, T0 + 0.01)
        run_until(agent, clock, T0 + timing.HELLO_SCHEDULE[-1] + EPS)
        assert _hellos(fake_sock) == hellos, others


def test_a_repeat_waits_while_datagrams_are_queued(make_agent, clock, fake_sock):
    """The loop left datagrams unread (Service.behind): the answers a repeat would ask for may
    be among them, so it waits until they are read."""
    agent = make_agent()
    clock.now = T0
    agent.start(T0)
    step(agent, clock, T0)
    assert _hellos(fake_sock) == 1
    agent.behind = True
    step(agent, clock, T0 + timing.HELLO_SCHEDULE[1] + EPS)
    assert _hellos(fake_sock) == 1
    agent.behind = False
    step(agent, clock, T0 + timing.HELLO_SCHEDULE[1] + 2 * EPS)
    assert _hellos(fake_sock) == 2


def test_a_follower_waits_for_its_queued_advice_before_asking_again(make_agent, clock,
                                                                    fake_sock):
    agent = discovered(make_agent, clock)
    follow_build2(agent, clock)
    deliver(agent, "STATUS", "bbbb-2", "build2", "10.9.0.12", T0 + 0.3, role="controller",
            state="active", interval=10)
    step(agent, clock, T0 + 0.3 + EPS)
    due = T0 + 0.2 + timing.IDENTIFY_SCHEDULE[-1]
    agent.behind = True
    step(agent, clock, due + EPS)
    assert not sent(fake_sock, "IDENTIFY")
    agent.behind = False
    step(agent, clock, due + 2 * EPS)
    assert len(sent(fake_sock, "IDENTIFY")) == 1


def test_a_flood_that_keeps_the_queue_full_holds_a_repeat_back_only_so_long(make_agent, clock,
                                                                            fake_sock):
    agent = make_agent()
    clock.now = T0
    agent.start(T0)
    step(agent, clock, T0)
    agent.behind = True
    due = T0 + timing.HELLO_SCHEDULE[1]
    step(agent, clock, due + timing.BEHIND_WAIT_MAX - EPS)
    assert _hellos(fake_sock) == 1
    step(agent, clock, due + timing.BEHIND_WAIT_MAX + EPS)
    assert _hellos(fake_sock) == 2


def test_a_joiner_rewrites_peers_json_at_most_once_a_second(make_agent, clock):
    """Its advisor advises nobody until it has an identity: the file is for the user alone
    (100 joining together rewrote it at every member that settled)."""
    agent = discovered(make_agent, clock)
    assert agent.identity is None and agent.peers_gap() == timing.PEERS_WRITE_GAP_JOINING


def test_a_follower_decides_once_most_of_its_rounds_advisors_agree(make_agent, clock, fake_sock):
    """In a crowd's round (JOINING_KEEPALIVE_PEERS joining together) the advisors answer the
    batch in turn (100 joiners: the slowest finished 0.5 s after the others): more than half of
    them agreeing fixes the role, whatever the rest say.  A smaller round waits for them all."""
    for crowd in (False, True):  # (the crowd last: its identity.json stays)
        fake_sock.clear()
        agent = make_agent()
        clock.now = T0
        agent.start(T0)
        step(agent, clock, T0)
        members = [("aaaa-1", "build1", "10.9.0.11"), ("aaaa-3", "build3", "10.9.0.13"),
                   ("aaaa-4", "build4", "10.9.0.14")]
        for node_id, host, ip in members:
            deliver(agent, "WELCOME", node_id, host, ip, T0 + 0.01, to=ME, role="builder",
                    members=3)
        others = timing.JOINING_KEEPALIVE_PEERS - 1 if crowd else 1
        follow_build2(agent, clock, batch=(ME, *[f"zzzz-{k:02d}" for k in range(others)]))
        for node_id, host, ip in members[:2]:
            deliver(agent, "ADVICE", node_id, host, ip, T0 + 0.3, to=ME,
                    suggested_role="runner", packages=[], config={}, reason="runners",
                    request_id=ROUND, batch_of="bbbb-2")
        step(agent, clock, T0 + 0.3 + EPS)
        if crowd:
            assert agent.role == "runner"
            assigned = state.read_identity(agent.config.identity_path)["assigned_by"]
            assert assigned == ["build1", "build3"]
        else:
            assert agent.identity is None and agent.phase == "ask"
