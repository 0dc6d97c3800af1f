"""Failure detection by probing (build_agent/probe.py), with a fake clock: the ring, the
direct/indirect/suspect/confirm chain, refutation, reference members exempt, and loss or short
stalls that must not kill anyone (a whole simulated hive on a lossy network, task_sim.Net)."""

from __future__ import annotations

import logging
import random

import pytest

from build_agent import probe, timing
from build_agent.membership import Membership
from build_agent.probe import Prober, Target, successor
from hive_fakes import T0, message
from task_sim import Hive, Net

A, B, C, D, E = "node-a", "node-b", "node-c", "node-d", "node-e"


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO)  # the deaths and refutations are INFO lines


def ring(*ids: str) -> dict[str, Target]:
    return {n: Target(n, f"10.9.0.{ord(n[-1]) - 96}", 100.0, n.replace("node-", "build-"))
            for n in ids}


def kinds(outs) -> list[tuple[str, str | None]]:
    return [(o.kind, o.fields.get("to", o.fields.get("target"))) for o in outs]


# --- the ring ---------------------------------------------------------------------------------
def test_successor_is_the_next_node_id_wrapping_around():
    assert successor(A, [B, C, D]) == B
    assert successor(C, [A, B, D]) == D
    assert successor(D, [A, B, C]) == A        # wraps
    assert successor(B, [D, A]) == D           # order of the input does not matter
    assert successor(A, []) is None and successor(A, [A]) is None


def test_every_member_is_watched_by_exactly_one_other():
    ids = [f"node-{i:03d}" for i in random.Random(3).sample(range(1000), 40)]
    watched = [successor(n, [m for m in ids if m != n]) for n in ids]
    assert sorted(watched) == sorted(ids)


def test_a_prober_probes_its_successor_once_per_interval():
    prober = Prober(A, 1.0, random.Random(1))
    pings = []
    now = T0
    for _ in range(50):
        outs, due = prober.tick(now, ring(B, C, D))
        pings += [o for o in outs if o.kind == "PING"]
        for o in outs:
            if o.kind == "PING":
                prober.heard(B, now + 0.001)  # B answers at once
        now = max(due, now + 0.01)
        if now > T0 + 10:
            break
    assert {p.fields["to"] for p in pings} == {B}
    assert 9 <= len(pings) <= 11


# --- the chain --------------------------------------------------------------------------------
def run_rounds(prober: Prober, members, until: float, now: float, answer=None, others=True):
    """Drive the prober; ``answer(out, now)`` may call back (PONGs); returns all outs."""
    sent = []
    while now < until:
        outs, due = prober.tick(now, members)
        for out in outs:
            sent.append((now, out))
            if answer is not None:
                answer(out, now)
        if others and prober.round is not None:
            prober.heard("node-z-predecessor", now)  # our predecessor's PING: we hear the hive
        now = min(max(due, now + 0.001), until)
    prober.tick(now, members)
    return sent


def test_a_dead_target_is_asked_about_then_suspected_then_declared_dead():
    prober = Prober(A, 1.0, random.Random(2))
    members = ring(B, C, D, E)

    def helpers_nack(out, now):
        if out.kind == "PINGREQ":  # each helper could not reach B either
            prober.on_pong(out.fields["to"], out.fields["seq"], B, False, now + 0.4)

    sent = run_rounds(prober, members, T0 + 3.5, T0, helpers_nack)
    first = [(round(t - T0, 2), o.kind) for t, o in sent if t < T0 + 1.0]
    assert first[0] == (0.0, "PING")
    asked = [o for t, o in sent if o.kind == "PINGREQ" and t < T0 + 1.0]
    assert len(asked) == timing.PROBE_HELPERS == 3
    assert {o.fields["to"] for o in asked} <= {C, D, E} and len({o.fields["to"] for o in asked}) == 3
    assert all(o.fields["target"] == B and o.fields["target_ip"] == members[B].ip for o in asked)
    assert all(round(t - T0, 2) == timing.PROBE_DIRECT_SHARE for t, o in sent if o.kind == "PINGREQ"
               and t < T0 + 1.0)
    suspects = [(round(t - T0, 2), o) for t, o in sent if o.kind == "SUSPECT"]
    assert [t for t, _ in suspects] == [1.0, 2.0]  # told after each failed round but the last
    assert suspects[0][1].ip == members[B].ip and suspects[0][1].fields["to"] == B
    assert prober.deaths == [Target(B, members[B].ip, 100.0, "build-b")]
    dead = [(round(t - T0, 2), o.fields) for t, o in sent if o.kind == "DEAD"]
    assert [t for t, _ in dead] == [3.0, 3.3]
    # DEAD goes to everyone again on DEAD_SCHEDULE
    later = run_rounds(prober, {k: v for k, v in members.items() if k != B}, T0 + 5, T0 + 3.51)
    dead += [(round(t - T0, 2), o.fields) for t, o in later if o.kind == "DEAD"]
    assert [t for t, _ in dead] == [3.0 + x for x in timing.DEAD_SCHEDULE]
    assert all(f["target"] == B and f["incarnation"] == probe.format_ts(100.0) for _, f in dead)
    assert all(o.ip is None for t, o in sent + later if o.kind == "DEAD")


def test_a_helper_s_pong_or_any_message_of_the_target_keeps_it():
    for how in ("relayed", "late-direct", "status"):
        prober = Prober(A, 1.0, random.Random(4))
        members = ring(B, C, D, E)

        def answer(out, now):
            if out.kind == "PINGREQ" and out.fields["to"] == C:
                if how == "relayed":
                    prober.on_pong(C, out.fields["seq"], B, True, now + 0.1)
                elif how == "late-direct":  # B's PONG to our PING, 0.9 s late
                    prober.heard(B, now + 0.5)
                else:
                    prober.heard(B, now + 0.2)  # a STATUS of B
            elif out.kind == "PINGREQ":
                prober.on_pong(out.fields["to"], out.fields["seq"], B, False, now + 0.4)

        sent = run_rounds(prober, members, T0 + 20, T0, answer)
        assert not [o for _, o in sent if o.kind in ("SUSPECT", "DEAD")], how
        assert prober.deaths == [] and prober.counts["failed"] == 0


def test_one_or_two_failed_rounds_then_an_answer_do_not_kill():
    """Loss: a whole round fails now and then; only PROBE_FAILED_ROUNDS in a row kill."""
    assert timing.PROBE_FAILED_ROUNDS == 3
    prober = Prober(A, 1.0, random.Random(5))
    members = ring(B, C, D)
    failing = {0, 1, 3, 5, 6, 8}  # rounds that fail: never three in a row
    state = {"round": -1}

    def answer(out, now):
        if out.kind == "PING" and out.fields["to"] == B:
            state["round"] += 1
            if state["round"] not in failing:
                prober.heard(B, now + 0.01)
        elif out.kind == "PINGREQ":
            prober.on_pong(out.fields["to"], out.fields["seq"], B, False, now + 0.3)

    sent = run_rounds(prober, members, T0 + 12, T0, answer)
    assert prober.deaths == [] and not [o for _, o in sent if o.kind == "DEAD"]
    # the target is told after every failed round (none was the last of three in a row)
    assert len([o for _, o in sent if o.kind == "SUSPECT"]) == 6
    assert prober.counts["failed"] == 6


def test_a_prober_that_hears_nobody_accuses_nobody():
    """Cut off (its input dropped): neither the target nor a helper nor its predecessor is heard;
    rounds are inconclusive and nobody is suspected, however long it lasts."""
    prober = Prober(A, 1.0, random.Random(6))
    sent = run_rounds(prober, ring(B, C, D, E), T0 + 30, T0, others=False)
    assert not [o for _, o in sent if o.kind in ("SUSPECT", "DEAD")]
    assert prober.counts["inconclusive"] >= 28 and prober.counts["failed"] == 0


def test_with_no_helper_to_ask_a_direct_failure_counts():
    prober = Prober(A, 1.0, random.Random(7))
    run_rounds(prober, ring(B), T0 + 3.5, T0, others=False)
    assert [t.node_id for t in prober.deaths] == [B]


def test_a_late_timer_reads_what_came_in_before_concluding():
    """A starved process: the round's end is handled 0.5 s late; a PONG waiting in the socket
    is read first (the loop drains it during the grace) and the target stays."""
    prober = Prober(A, 1.0, random.Random(8))
    members = ring(B, C)
    prober.tick(T0, members)                     # PING to B
    prober.tick(T0 + 0.36, members)              # PINGREQ to C
    prober.heard(C, T0 + 0.7)                    # C's NACK
    prober.on_pong(C, prober.round.seq, B, False, T0 + 0.7)
    outs, due = prober.tick(T0 + 1.5, members)   # 0.5 s late: not concluded yet
    assert prober.round is not None and due == pytest.approx(T0 + 1.5 + timing.PROBE_LATE_GRACE)
    prober.heard(B, T0 + 1.51)                   # B's PONG, read from the socket meanwhile
    prober.tick(due, members)
    assert prober.counts["failed"] == 0 and prober.failed == {}


def test_a_target_that_leaves_the_ring_is_forgotten():
    prober = Prober(A, 1.0, random.Random(9))

    def nack(out, now):
        if out.kind == "PINGREQ":
            prober.on_pong(out.fields["to"], out.fields["seq"], B, False, now + 0.3)

    run_rounds(prober, ring(B, C, D), T0 + 1.5, T0, nack)
    assert prober.failed == {B: 1}
    outs, _ = prober.tick(T0 + 1.6, ring(C, D))  # B said goodbye meanwhile
    assert prober.failed == {} and prober.round is None or prober.round.target.node_id == C


# --- helping and answering --------------------------------------------------------------------
def test_a_helper_pings_the_target_and_relays_its_pong_or_a_nack():
    helper = Prober(C, 1.0, random.Random(10))
    outs = helper.on_pingreq(A, "10.9.0.1", B, "10.9.0.2", 77, T0)
    assert kinds(outs) == [("PING", B)] and outs[0].ip == "10.9.0.2"
    relayed = helper.on_pong(B, outs[0].fields["seq"], None, True, T0 + 0.01)
    assert [(o.kind, o.ip, o.fields) for o in relayed] == [
        ("PONG", "10.9.0.1", {"to": A, "seq": 77, "target": B, "ok": True})]
    outs = helper.on_pingreq(A, "10.9.0.1", D, "10.9.0.4", 78, T0 + 1)
    assert helper.tick(T0 + 1.1, {})[0] == []
    nack, _ = helper.tick(T0 + 1 + timing.PROBE_HELPER_SHARE, {})
    assert [(o.kind, o.fields) for o in nack] == [
        ("PONG", {"to": A, "seq": 78, "target": D, "ok": False})]
    # a PONG from someone else with the helper's seq is not relayed
    outs = helper.on_pingreq(A, "10.9.0.1", B, "10.9.0.2", 79, T0 + 2)
    assert helper.on_pong(D, outs[0].fields["seq"], None, True, T0 + 2.01) == []
    # bounded: a flood of PINGREQs is not all served
    for i in range(200):
        helper.on_pingreq(A, "10.9.0.1", B, "10.9.0.2", i, T0 + 3)
    assert len(helper.helping) == timing.PROBE_HELPER_PENDING


def test_a_ping_is_answered_only_by_the_node_it_names():
    node = Prober(B, 1.0)
    assert [(o.kind, o.ip, o.fields) for o in node.on_ping(A, B, 5, "10.9.0.1")] == [
        ("PONG", "10.9.0.1", {"to": A, "seq": 5})]
    node.incarnation = "2026-11-27T12:00:00.000000Z"  # it refuted once: its PONGs say so
    assert node.on_ping(A, B, 6, "10.9.0.1")[0].fields == {
        "to": A, "seq": 6, "incarnation": "2026-11-27T12:00:00.000000Z"}
    assert node.on_ping(A, C, 5, "10.9.0.1") == []          # the address's previous owner
    assert Prober(B, 0.0).on_ping(A, B, 5, "10.9.0.1") == []  # probing off: not in any ring


# --- membership: reference members exempt, incarnations ---------------------------------------
def status(node_id, name, ip, now, **fields):
    base = dict(role="runner", interval=10.0, started=probe.format_ts(T0 - 100))
    base.update(fields)
    return message("STATUS", node_id, name, ip, now, **base)


def test_a_dead_member_is_removed_unless_reference_or_refuted():
    view = Membership(10.0)
    view.observe(status("n1", "build1", "10.9.0.1", T0, probe=1.0), "10.9.0.1", 0.0)
    view.observe(message("HEARTBEAT", "ref", "refnode", "10.9.0.9", T0,
                         identity={"role": "runner"}), "10.9.0.9", 0.0)
    view.observe(status("old", "build7", "10.9.0.7", T0), "10.9.0.7", 0.0)  # an older agent
    assert view.members["n1"].probe == 1.0 and view.members["n1"].incarnation == T0 - 100
    assert view.members["ref"].probe == 0 and view.members["old"].probe == 0
    # Reference nodes and agents that take no part in probing are never declared dead by probes
    assert not view.declare_dead("ref", T0, 1.0, "x") and "ref" in view.members
    assert not view.declare_dead("old", T0, 1.0, "x") and "old" in view.members
    # A member that refuted (a newer incarnation) keeps its place
    view.observe(status("n1", "build1", "10.9.0.1", T0 + 1, probe=1.0,
                        incarnation=probe.format_ts(T0 + 1)), "10.9.0.1", 1.0)
    assert not view.declare_dead("n1", T0 - 100, 2.0, "x", fresh=5.0) and "n1" in view.members
    # ... but a refutation older than the accuser's failed rounds does not contradict them
    # (the accuser missed it; the member has been silent since)
    assert view.declare_dead("n1", T0 - 100, 6.5, "is dead: no answer to probes", fresh=5.0)
    assert "n1" not in view.members
    view.observe(status("n1", "build1", "10.9.0.1", T0 + 2, probe=1.0), "10.9.0.1", 7.0)
    assert view.declare_dead("n1", T0 + 1, 7.5, "is dead: no answer to probes", fresh=5.0)
    assert "n1" not in view.members
    # ... and comes back as any member does, at its next message
    view.observe(status("n1", "build1", "10.9.0.1", T0 + 3, probe=1.0), "10.9.0.1", 3.0)
    assert "n1" in view.members


def test_the_heartbeat_backstop_is_longer_for_probed_members():
    view = Membership(10.0)
    view.observe(status("n1", "build1", "10.9.0.1", T0, probe=1.0), "10.9.0.1", 0.0)
    view.observe(status("n2", "build2", "10.9.0.2", T0), "10.9.0.2", 0.0)
    view.expire(31.0)
    assert set(view.members) == {"n1"}  # the non-probed member: 3 intervals
    view.expire(10.0 * timing.DEAD_AFTER_INTERVALS_PROBED - 0.1)
    assert "n1" in view.members
    view.expire(10.0 * timing.DEAD_AFTER_INTERVALS_PROBED)
    assert "n1" not in view.members


# --- a whole hive on a lossy network (real agents, simulated time) ----------------------------
def make_hive(tmp_path, clock, n=6, loss=0.0, seed=1, heartbeat=10.0):
    net = Net(clock, seed=seed, loss=loss)
    hive = Hive(tmp_path, net, clock)
    for i in range(n):
        hive.add(f"build{2 + i}", "runner", 22 + i, heartbeat=heartbeat)
    hive.run(clock.now + 12)  # a heartbeat: everyone hears everyone
    return hive


def listed(hive, name: str) -> list[str]:
    """The live nodes whose view lists ``name``."""
    return [n.name for n in hive.nodes.values() if n.agent is not None and n.name != name
            and any(m.hostname == name for m in n.agent.membership.members.values())]


def dead_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if " is dead" in r.getMessage()]


def test_a_crashed_member_is_dropped_by_every_member_in_seconds(tmp_path, clock):
    hive = make_hive(tmp_path, clock)
    assert all(len(listed(hive, f"build{2 + i}")) == 5 for i in range(6))
    hive.run(clock.now + 0.37)  # anywhere in a probe interval
    hive.crash(hive.nodes["build4"])
    killed = clock.now
    gone = hive.run(clock.now + 30, stop=lambda: listed(hive, "build4") == [])
    took = gone - killed
    print(f"crash noticed by every member after {took:.2f} s (heartbeat 10 s)")
    assert took <= (timing.PROBE_FAILED_ROUNDS + 1) * timing.PROBE_INTERVAL_DEFAULT + 0.1
    assert all(len(listed(hive, n)) == 4 for n in hive.nodes if n != "build4")


def test_a_member_stalled_for_1_5_s_stays_and_a_longer_stall_refutes(tmp_path, clock, caplog):
    hive = make_hive(tmp_path, clock)
    node = hive.nodes["build5"]
    hive.run(clock.now + 0.5)
    caplog.clear()
    hive.net.down.add(node.ip)  # nothing reaches it nor leaves it: SIGSTOP, or a cut cable
    hive.run(clock.now + 1.5)
    hive.net.down.discard(node.ip)
    hive.run(clock.now + 10)
    assert dead_lines(caplog) == [] and len(listed(hive, "build5")) == 5
    # Stalled for 6 s it is declared dead; when it runs again it hears of it (the DEAD repeats)
    # or of nothing (then its next STATUS): either way every member lists it again.
    hive.net.down.add(node.ip)
    hive.run(clock.now + 6)
    assert listed(hive, "build5") == []
    hive.net.down.discard(node.ip)
    back = hive.run(clock.now + 20, stop=lambda: len(listed(hive, "build5")) == 5)
    assert len(listed(hive, "build5")) == 5, back


def test_a_suspected_member_refutes_and_an_old_dead_is_then_refused(tmp_path, clock, caplog):
    hive = make_hive(tmp_path, clock, n=4)
    target = hive.nodes["build3"]
    accuser = hive.nodes["build2"]  # node-build2 probes node-build3 (its ring successor)
    old = accuser.agent.membership.members[target.node_id].incarnation
    # A first SUSPECT: a STATUS to the accuser alone (a sign of life), no new incarnation.
    statuses = []
    real = target.agent._reply
    target.agent._reply = lambda kind, ip, **f: (statuses.append((kind, ip)), real(kind, ip, **f))
    accuser.agent._send_probes([probe.Out("SUSPECT", target.ip, {
        "to": target.node_id, "incarnation": probe.format_ts(old)})])
    hive.run(clock.now + 0.1)
    assert ("STATUS", accuser.ip) in statuses and target.agent.incarnation is None
    assert "build2 suspects this node: telling it that it is alive" in caplog.text
    assert hive.nodes["build4"].agent.membership.members[target.node_id].incarnation == old
    # A second one within the accuser's failed rounds: the STATUS to everyone, a new incarnation.
    accuser.agent._send_probes([probe.Out("SUSPECT", target.ip, {
        "to": target.node_id, "incarnation": probe.format_ts(old)})])
    hive.run(clock.now + 0.1)  # (the sim ticks the target at the end: its STATUS goes then)
    hive.run(clock.now + 0.1)
    assert target.agent.incarnation is not None
    assert "says this node is suspected: telling the hive it is alive" in caplog.text
    for n in ("build2", "build4", "build5"):
        assert hive.nodes[n].agent.membership.members[target.node_id].incarnation > old
    assert target.agent.prober.incarnation == target.agent.incarnation
    # A DEAD about the incarnation before the refutation changes nothing anywhere
    accuser.agent._send_probes([probe.Out("DEAD", None, {
        "target": target.node_id, "target_ip": target.ip, "incarnation": probe.format_ts(old)})])
    hive.run(clock.now + 1)
    assert len(listed(hive, "build3")) == 3 and dead_lines(caplog) == []


@pytest.mark.parametrize("seed", [1, 2])
def test_no_false_death_in_ten_minutes_at_5_percent_loss(tmp_path, clock, caplog, seed):
    """Ten simulated minutes, 8 members, 5 % of datagrams lost (each copy independently):
    nobody is declared dead, by probes or by the heartbeat backstop."""
    hive = make_hive(tmp_path, clock, n=8, seed=seed)
    hive.net.loss = 0.05
    caplog.clear()
    hive.run(clock.now + 600, max_steps=2_000_000)
    assert dead_lines(caplog) == []
    assert all(len(listed(hive, n)) == 7 for n in hive.nodes)
    failed = sum(n.agent.prober.counts["failed"] for n in hive.nodes.values())
    rounds = sum(n.agent.prober.counts["rounds"] for n in hive.nodes.values())
    print(f"seed {seed}: {rounds} rounds, {failed} failed (one lost datagram chain each), "
          f"{hive.net.dropped} datagrams dropped")
    assert rounds > 8 * 550 / timing.PROBE_INTERVAL_DEFAULT


# --- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("", timing.PROBE_INTERVAL_DEFAULT),
                                         ("probe_interval = 0", 0.0),
                                         ("probe_interval = 0.5", 0.5),
                                         ("probe_interval = 2", 2.0)])
def test_probe_interval_in_hive_toml(tmp_path, text, value):
    from build_agent.config import load_config
    path = tmp_path / "hive.toml"
    path.write_text(text + "\n")
    config = load_config(str(path))
    assert config.probe_interval == value and isinstance(config.probe_interval, float)


@pytest.mark.parametrize("bad", ["0.1", "61", "-1", '"1"', "true"])
def test_a_bad_probe_interval_is_one_clear_line(tmp_path, bad):
    from build_agent.config import ConfigError, load_config
    path = tmp_path / "hive.toml"
    path.write_text(f"probe_interval = {bad}\n")
    with pytest.raises(ConfigError, match="probe_interval' must be 0 \\(no probing\\) or a number"):
        load_config(str(path))


def test_a_node_with_probing_off_states_no_probe_and_is_never_probed(tmp_path, clock, caplog):
    """probe_interval = 0 on one node: the others judge it by heartbeats alone (3 intervals) and
    never PING it; it is not killed by the probes of the others when it stops answering."""
    import dataclasses
    net = Net(clock, seed=3)
    hive = Hive(tmp_path, net, clock)
    for i in range(4):
        hive.add(f"build{2 + i}", "runner", 22 + i, heartbeat=10.0)
    off = hive.nodes["build3"]
    hive.crash(off)
    off.config = dataclasses.replace(off.config, probe_interval=0.0)
    hive.boot(off)
    hive.run(clock.now + 12)
    others = [n for n in hive.nodes.values() if n is not off]
    assert all(n.agent.membership.members[off.node_id].probe == 0 for n in others)
    assert all(n.agent.membership.members[o.node_id].probe == timing.PROBE_INTERVAL_DEFAULT
               for n in others for o in others if o is not n)
    sent = dict(net.sent)
    hive.run(clock.now + 10)
    assert net.sent["PING"] - sent.get("PING", 0) <= 3 * 10 + 2  # 3 probers, not 4
    hive.crash(off)
    hive.run(clock.now + 25)
    assert all(off.node_id in n.agent.membership.members for n in others)  # not before 30 s
    hive.run(clock.now + 10)
    assert all(off.node_id not in n.agent.membership.members for n in others)
