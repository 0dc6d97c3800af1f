"""Membership with a fake clock: members, joiners, goodbyes, expiry, join order, merge."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from build_agent import protocol, timing
from build_agent.membership import Membership, join_order_key
from hive_fakes import T0, message

A, B, C, D = ("aaaa-1", "bbbb-2", "cccc-3", "dddd-4")


def msg(kind: str, node_id: str, now: float = T0, hostname: str | None = None, **fields):
    return message(kind, node_id, hostname or f"host-{node_id[:4]}", "10.0.0.1", now, **fields)


@pytest.fixture
def ms() -> Membership:
    return Membership(default_interval=10.0)


# --- established members --------------------------------------------------------------------

@pytest.mark.parametrize("kind, fields", [
    ("STATUS", {"role": "builder", "state": "active"}),
    ("WELCOME", {"role": "builder", "members": 3}),
    ("HELLO", {"role": "builder"}),
    ("HEARTBEAT", {"identity": {"role": "builder", "packages": ["git"]}}),
])
def test_messages_with_a_role_make_a_member(ms, kind, fields):
    assert ms.observe(msg(kind, A, **fields), "10.0.0.5", T0) is True
    [member] = ms.established()
    assert (member.node_id, member.role, member.ip, member.hostname) == \
        (A, "builder", "10.0.0.5", "host-aaaa")
    assert member.last_seen == T0
    assert not ms.joiners


def test_reference_heartbeat_counts_as_status(ms):
    ms.observe(msg("HEARTBEAT", A, identity={"role": "runner"}, interval=5), "10.0.0.5", T0)
    member = ms.members[A]
    assert member.role == "runner" and member.interval == 5.0
    # ... and keeps the member alive like a STATUS does.
    ms.observe(msg("HEARTBEAT", A, T0 + 10, identity={"role": "runner"}), "10.0.0.5", T0 + 10)
    assert not ms.expire(T0 + 20)
    assert A in ms.members


def test_repeat_status_is_not_a_change_but_a_role_change_is(ms):
    assert ms.observe(msg("STATUS", A, role="builder"), "10.0.0.5", T0)
    assert not ms.observe(msg("STATUS", A, T0 + 1, role="builder"), "10.0.0.5", T0 + 1)
    assert ms.members[A].last_seen == T0 + 1
    assert ms.observe(msg("STATUS", A, T0 + 2, role="runner"), "10.0.0.5", T0 + 2)
    assert ms.members[A].role == "runner"


def test_status_updates_load_health_capabilities_and_ip(ms):
    ms.observe(msg("STATUS", A, role="builder", load=[0.5, 0.4, 0.3], health="ok",
                   capabilities={"cpu_cores": 8, "has_gpu": False}), "10.0.0.5", T0)
    ms.observe(msg("STATUS", A, T0 + 1, role="builder", load=1.5, health="provisioning-failed"),
               "10.0.0.6", T0 + 1)
    member = ms.members[A]
    assert member.load == 1.5 and member.health == "provisioning-failed"
    assert member.capabilities == {"cpu_cores": 8, "has_gpu": False}  # kept when not re-sent
    assert member.ip == "10.0.0.6"
    data = member.to_json()
    assert data["status"] == "alive" and data["last_seen"] == "2026-11-26T12:00:01Z"
    assert {"hostname", "ip", "role", "node_id", "capabilities"} <= set(data)


def test_established_is_sorted_by_hostname_and_can_exclude(ms):
    ms.observe(msg("STATUS", A, hostname="zeta", role="builder"), "10.0.0.1", T0)
    ms.observe(msg("STATUS", B, hostname="alpha", role="runner"), "10.0.0.2", T0)
    ms.observe(msg("STATUS", C, hostname="mid", role="runner"), "10.0.0.3", T0)
    assert [m.hostname for m in ms.established()] == ["alpha", "mid", "zeta"]
    assert [m.node_id for m in ms.established(exclude=[B, "unknown"])] == [C, A]


# --- joiners ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, fields", [
    ("HELLO", {"candidate_ip": None}),
    ("HELLO", {"role": None}),
    ("IDENTIFY", {"request": "who_am_i"}),
    ("STATUS", {"role": None, "state": "joining"}),
    ("WELCOME", {"role": None}),
])
def test_messages_without_a_role_make_a_joiner(ms, kind, fields):
    assert ms.observe(msg(kind, A, **fields), "10.0.0.5", T0) is False
    assert not ms.members
    assert list(ms.joiners) == [A]
    joiner = ms.joiners[A]
    assert joiner.joining_since == T0 and joiner.last_heard == T0 and joiner.ip == "10.0.0.5"


def test_joining_since_is_taken_from_the_message(ms):
    ms.observe(msg("HELLO", A, T0 + 5, joining_since=protocol.format_ts(T0 + 1.5)), "10.0.0.5",
               T0 + 5)
    assert ms.joiners[A].joining_since == T0 + 1.5
    assert ms.joiners[A].key == (T0 + 1.5, A)


def test_identify_from_a_member_makes_it_a_joiner_again(ms):
    ms.observe(msg("STATUS", A, role="builder"), "10.0.0.5", T0)
    # IDENTIFY never carries a role; the sender reset its identity and is asking again.
    assert ms.observe(msg("IDENTIFY", A, T0 + 1, role="builder"), "10.0.0.5", T0 + 1) is True
    assert A not in ms.members and A in ms.joiners


def test_a_joiner_that_gets_a_role_becomes_a_member(ms):
    ms.observe(msg("HELLO", A), "10.0.0.5", T0)
    assert ms.observe(msg("STATUS", A, T0 + 1, role="builder"), "10.0.0.5", T0 + 1) is True
    assert A in ms.members and A not in ms.joiners


def test_joiners_expire_after_the_joining_peer_timeout(ms):
    ms.observe(msg("HELLO", A), "10.0.0.5", T0)
    ms.observe(msg("HELLO", B, T0 + 1), "10.0.0.6", T0 + 1)
    assert ms.next_deadline() == T0 + timing.JOINING_PEER_TIMEOUT
    ms.expire(T0 + timing.JOINING_PEER_TIMEOUT - 0.01)
    assert set(ms.joiners) == {A, B}
    ms.expire(T0 + timing.JOINING_PEER_TIMEOUT)
    assert set(ms.joiners) == {B}
    # Hearing from a joiner again restarts its timeout.
    ms.observe(msg("STATUS", B, T0 + 4, role=None, state="joining"), "10.0.0.6", T0 + 4)
    ms.expire(T0 + 1 + timing.JOINING_PEER_TIMEOUT + 0.5)
    assert set(ms.joiners) == {B}
    ms.expire(T0 + 4 + timing.JOINING_PEER_TIMEOUT)
    assert not ms.joiners


def test_joiners_ahead_orders_by_joining_since_then_node_id(ms):
    ms.observe(msg("HELLO", D, joining_since=protocol.format_ts(T0 + 1)), "10.0.0.4", T0 + 2)
    ms.observe(msg("HELLO", C, joining_since=protocol.format_ts(T0 + 1)), "10.0.0.3", T0 + 2)
    ms.observe(msg("HELLO", B, joining_since=protocol.format_ts(T0 + 2)), "10.0.0.2", T0 + 2)
    ms.observe(msg("HELLO", A, joining_since=protocol.format_ts(T0 + 3)), "10.0.0.1", T0 + 3)
    me = join_order_key(T0 + 2, "bzzz")
    assert [j.node_id for j in ms.joiners_ahead(me)] == [C, D, B]
    assert [j.node_id for j in ms.joiners_ahead(join_order_key(T0 + 1, "cccc-0"))] == []
    assert [j.node_id for j in ms.joiners_ahead(join_order_key(T0 + 1, "cccc-4"))] == [C]
    assert [j.node_id for j in ms.joiners_ahead(join_order_key(T0 + 99, "0"))] == [C, D, B, A]


# --- leaving and dying -------------------------------------------------------------------------

@pytest.mark.parametrize("kind, fields", [
    ("STATUS", {"role": "builder", "state": "leaving"}),
    ("HEARTBEAT", {"identity": {"role": "builder"}, "state": "leaving"}),
])
def test_leaving_removes_at_once(ms, kind, fields):
    ms.observe(msg("STATUS", A, role="builder"), "10.0.0.5", T0)
    ms.observe(msg("STATUS", B, role="runner"), "10.0.0.6", T0)
    assert ms.observe(msg(kind, A, T0 + 0.1, **fields), "10.0.0.5", T0 + 0.1) is True
    assert set(ms.members) == {B}


def test_leaving_joiner_is_forgotten(ms):
    ms.observe(msg("HELLO", A), "10.0.0.5", T0)
    assert ms.observe(msg("STATUS", A, T0 + 1, role=None, state="leaving"), "10.0.0.5",
                      T0 + 1) is False
    assert not ms.joiners


def test_older_messages_of_a_departed_node_are_ignored(ms):
    ms.observe(msg("STATUS", A, T0, role="builder"), "10.0.0.5", T0)
    ms.observe(msg("STATUS", A, T0 + 1, role="builder", state="leaving"), "10.0.0.5", T0 + 1)
    # A heartbeat sent before the goodbye but delivered after it must not revive the node.
    late = msg("STATUS", A, T0 + 0.5, role="builder")
    assert ms.observe(late, "10.0.0.5", T0 + 1.2) is False
    assert A not in ms.members and A not in ms.joiners
    late_hello = msg("HELLO", A, T0 + 0.9)
    assert ms.observe(late_hello, "10.0.0.5", T0 + 1.2) is False
    assert A not in ms.joiners
    # A newer message (the node came back) is taken.
    assert ms.observe(msg("STATUS", A, T0 + 2, role="builder"), "10.0.0.5", T0 + 2) is True
    assert A in ms.members


@pytest.mark.parametrize("interval", [0.5, 2.0, 10.0, 30.0])
def test_expiry_after_three_of_the_senders_intervals(ms, interval):
    ms.observe(msg("STATUS", A, role="builder", interval=interval), "10.0.0.5", T0)
    dead_at = T0 + timing.DEAD_AFTER_INTERVALS * interval
    assert timing.DEAD_AFTER_INTERVALS == 3
    assert ms.next_deadline() == dead_at
    assert ms.expire(dead_at - 0.001) is False
    assert A in ms.members
    assert ms.expire(dead_at) is True
    assert A not in ms.members


def test_a_sender_that_gives_no_interval_is_judged_by_the_reference_cadence(ms):
    # A reference-script node heartbeats about every 32 s and says nothing of its interval:
    # our own (10 s here) would drop it 30 s after each heartbeat and re-add it 2 s later.
    ms.observe(msg("HEARTBEAT", A, identity={"role": "builder"}), "10.0.0.5", T0)
    assert ms.members[A].interval == timing.REFERENCE_INTERVAL == 32.0
    assert not ms.expire(T0 + 3 * 32.0 - 0.1)
    ms.observe(msg("HEARTBEAT", A, T0 + 32.5, identity={"role": "builder"}), "10.0.0.5",
               T0 + 32.5)
    assert not ms.expire(T0 + 32.5 + 95.9)
    assert ms.expire(T0 + 32.5 + 96.0)


def test_each_heartbeat_pushes_the_deadline(ms):
    for i in range(5):
        ms.observe(msg("STATUS", A, T0 + 10 * i, role="builder", interval=10), "10.0.0.5",
                   T0 + 10 * i)
        assert not ms.expire(T0 + 10 * i + 29)
    assert ms.expire(T0 + 40 + 30)


def test_members_with_different_intervals_expire_independently(ms):
    ms.observe(msg("STATUS", A, role="builder", interval=1), "10.0.0.5", T0)
    ms.observe(msg("STATUS", B, role="builder", interval=20), "10.0.0.6", T0)
    ms.expire(T0 + 3)
    assert set(ms.members) == {B}
    ms.expire(T0 + 59)
    assert set(ms.members) == {B}
    ms.expire(T0 + 60)
    assert not ms.members


def test_dead_node_may_come_back_with_a_newer_message(ms):
    ms.observe(msg("STATUS", A, role="builder", interval=1), "10.0.0.5", T0)
    ms.expire(T0 + 3)
    assert A not in ms.members
    assert ms.observe(msg("STATUS", A, T0 + 4, role="builder", interval=1), "10.0.0.5", T0 + 4)
    assert A in ms.members


def test_departed_memory_is_bounded_in_time(ms):
    ms.observe(msg("STATUS", A, role="builder", state="leaving"), "10.0.0.5", T0)
    assert A in ms.departed
    ms.expire(T0 + timing.MAX_CLOCK_SKEW + 1)
    assert A not in ms.departed


def test_next_deadline_without_anyone_is_infinite(ms):
    assert ms.next_deadline() == float("inf")


def test_non_membership_kinds_are_ignored(ms):
    assert not ms.observe(msg("ADVICE", A, suggested_role="builder", packages=[], config={},
                              reason="r"), "10.0.0.5", T0)
    assert not ms.observe(msg("TASK", B, id="t"), "10.0.0.6", T0)
    assert not ms.members and not ms.joiners


# --- merge (peers.json entries) ----------------------------------------------------------------

def entry(node_id, role="builder", last_seen=T0, interval=10.0, **extra):
    data = {"node_id": node_id, "hostname": f"host-{node_id[:4]}", "ip": "10.0.0.9",
            "role": role, "status": "alive", "last_seen": protocol.format_ts_seconds(last_seen),
            "interval": interval, "capabilities": {"cpu_cores": 2}}
    data.update(extra)
    return data


def test_merge_adds_unknown_members(ms):
    assert ms.merge([entry(A), entry(B, role="runner")], T0 + 1) is True
    assert {m.node_id: m.role for m in ms.established()} == {A: "builder", B: "runner"}
    member = ms.members[A]
    assert member.ip == "10.0.0.9" and member.last_seen == T0
    assert member.capabilities == {"cpu_cores": 2} and member.interval == 10.0


def test_merge_keeps_what_this_view_heard_itself(ms):
    ms.observe(msg("STATUS", A, role="runner"), "10.0.0.5", T0)
    assert ms.merge([entry(A, role="builder")], T0 + 1) is False
    assert ms.members[A].role == "runner" and ms.members[A].ip == "10.0.0.5"


def test_merge_skips_departed_dead_and_malformed_entries(ms):
    ms.observe(msg("STATUS", A, role="builder", state="leaving"), "10.0.0.5", T0)
    entries = [
        entry(A),                                   # left: its goodbye beats peers.json
        entry(B, last_seen=T0 - 31, interval=10),   # already past 3 intervals
        {"node_id": C},                             # no role
        {"role": "builder"},                        # no node id
        {"node_id": 5, "role": "builder"},
    ]
    assert ms.merge(entries, T0) is False
    assert not ms.members


def test_merge_bad_last_seen_counts_as_now_and_future_is_clamped(ms):
    ms.merge([entry(A, last_seen=T0), {**entry(B), "last_seen": "garbage"},
              entry(C, last_seen=T0 + 500)], T0 + 5)
    assert ms.members[B].last_seen == T0 + 5
    assert ms.members[C].last_seen == T0 + 5


def test_merged_members_expire_like_others(ms):
    ms.merge([entry(A, last_seen=T0, interval=2.0)], T0)
    assert not ms.expire(T0 + 5.9)
    assert ms.expire(T0 + 6)


@pytest.mark.parametrize("bad", [{"interval": "abc"}, {"interval": [1]}, {"interval": True},
                                 {"interval": -5}, {"capabilities": [1, 2]},
                                 {"capabilities": "gpu"}])
def test_merge_skips_malformed_entries_without_raising(ms, bad):
    # peers.json is a file: a hand-edited or foreign one must not break the advisor.
    assert ms.merge([{**entry(A), **bad}, entry(B)], T0 + 1) is True
    assert set(ms.members) == {B}


# --- invariants under any sequence of messages ---------------------------------------------------

_events = st.lists(st.tuples(
    st.sampled_from(["HELLO", "WELCOME", "IDENTIFY", "STATUS", "HEARTBEAT"]),
    st.sampled_from([A, B, C, D]),
    st.sampled_from([None, "builder", "runner"]),
    st.sampled_from(["active", "joining", "leaving"]),
    st.floats(min_value=0, max_value=20),          # time passing before the event
    st.floats(min_value=-2, max_value=2),          # the sender's clock offset
    st.sampled_from([None, 1, 5])), max_size=25)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(_events)
def test_membership_invariants(events):
    ms = Membership(default_interval=10.0)
    now = T0
    newest: dict[str, float] = {}  # the newest ts each node sent
    for kind, node, role, state_name, wait, skew, interval in events:
        now += wait
        fields = {"state": state_name} if kind in ("STATUS", "HEARTBEAT") else {}
        if kind == "HEARTBEAT":
            fields["identity"] = {"role": role}
        elif kind != "IDENTIFY":
            fields["role"] = role
        if interval is not None and kind in ("STATUS", "HEARTBEAT"):
            fields["interval"] = interval
        ms.observe(msg(kind, node, now + skew, **fields), "10.0.0.1", now)
        ms.expire(now)
        assert not set(ms.members) & set(ms.joiners)  # never both a member and a joiner
        assert all(m.deadline() > now for m in ms.members.values())
        assert all(now - j.last_heard < timing.JOINING_PEER_TIMEOUT for j in ms.joiners.values())
        assert all(m.role for m in ms.members.values())
        if state_name == "leaving" and kind in ("STATUS", "HEARTBEAT") \
                and now + skew >= newest.get(node, 0.0):
            # (a goodbye older than what the node said since is not a goodbye now)
            assert node not in ms.members and node not in ms.joiners
        newest[node] = max(newest.get(node, 0.0), now + skew)
        assert ms.next_deadline() > now
