"""The agent heals with a fake clock: grace, exactly the chosen mover, re-ask, previous_role."""

from __future__ import annotations

import logging

from build_advisor.policy import default_suggest_role
from build_agent import plan as plans, protocol, state, timing
from build_agent.healing import Healer
from hive_fakes import T0
from test_unit_agent import deliver, make_agent, run_until, sent, step  # noqa: F401 (fixture)

EPS = 0.001
HOUR = 3600.0


def replay_desired(view):
    return plans.replay(view["members"], default_suggest_role)


MEMBERS = [("aaaa-1", "build1", "10.9.0.11", "founder", 5), ("bbbb-3", "build3", "10.9.0.13",
           "builder", 4), ("cccc-4", "build4", "10.9.0.14", "builder", 3),
           ("dddd-5", "build5", "10.9.0.15", "runner", 2)]


def _runner_in_a_hive_without_controller(make_agent, config, clock, caplog, rebalance=True):
    """build6 (us, the youngest runner) with founder, two builders and a runner; no controller."""
    state.write_json_atomic(config.identity_path, {
        "role": "runner", "packages": [], "config": {}, "assigned_by": ["build1"],
        "assigned_at": protocol.format_ts_seconds(T0 - HOUR), "provisioned": True})
    cfg = config.__class__(**{**config.__dict__, "heartbeat_interval": 1.0,
                              "rebalance": rebalance})
    agent = make_agent(node_id="ffff-6", hostname="build6", cfg=cfg)
    agent.desired_roles = replay_desired
    caplog.set_level(logging.INFO)
    agent.start(T0)
    for node, host, ip, role, hours in MEMBERS:
        joined = protocol.format_ts(T0 - hours * HOUR)
        deliver(agent, "STATUS", node, host, ip, T0 + 0.01, role=role, state="active",
                interval=1.0, joined_at=joined, role_since=joined, started=joined,
                rebalance=True)
    return agent


def test_the_youngest_runner_moves_to_controller_after_the_grace(make_agent, config, clock,
                                                                  fake_sock, caplog):
    agent = _runner_in_a_hive_without_controller(make_agent, config, clock, caplog)
    run_until(agent, clock, T0 + 2.0 - EPS)  # grace: 2 heartbeat intervals
    assert agent.phase == "operate" and not sent(fake_sock, "IDENTIFY")
    run_until(agent, clock, T0 + 2.0 + 0.05)
    assert agent.phase == "move"
    assert ("Role check: the hive needs a 'controller' (0 of 1); build6 moves (youngest runner)"
            in caplog.text)
    assert "Asking peers for a new role (was 'runner')..." in caplog.text
    [identify] = [m for m, _ in sent(fake_sock, "IDENTIFY")][:1]
    assert identify.get("reask") is True and identify.get("role") == "runner"
    assert [m.get("state") for m, _ in sent(fake_sock, "STATUS")][-1] == "moving"
    for node, host, ip, _role, _h in MEMBERS:
        deliver(agent, "ADVICE", node, host, ip, clock.now + 0.01, to=agent.node_id,
                suggested_role="controller", packages=["ansible", "git"], config={},
                reason="the hive needs a 'controller' (0 of 1)",
                request_id=identify.get("request_id"))
    step(agent, clock, clock.now + 0.02)
    after = state.read_identity(config.identity_path)
    assert after["role"] == "controller" and after["previous_role"] == "runner"
    assert after["changed_at"] and after["assigned_at"] == protocol.format_ts_seconds(T0 - HOUR)
    assert after["assigned_by"] == ["build1", "build3", "build4", "build5"]
    assert "Consensus: I am a 'controller'" in caplog.text
    assert agent.phase == "operate"
    step(agent, clock, clock.now + 0.03)
    status = [m for m, _ in sent(fake_sock, "STATUS")][-1]
    assert (status.get("role"), status.get("state")) == ("controller", "active")
    assert status.get("role_since") == after["changed_at"]
    # The hive now has what it needs: no further move, ever.
    fake_sock.clear()
    run_until(agent, clock, clock.now + 30)
    assert not sent(fake_sock, "IDENTIFY")


def test_a_node_that_is_not_the_mover_only_logs_the_need(make_agent, config, clock, fake_sock,
                                                          caplog):
    agent = _runner_in_a_hive_without_controller(make_agent, config, clock, caplog)
    # build7, a runner younger than us (its agent started a second after ours), is the mover.
    young = protocol.format_ts(T0 - 60)
    deliver(agent, "STATUS", "gggg-7", "build7", "10.9.0.17", T0 + 0.02, role="runner",
            state="active", interval=1.0, joined_at=young, role_since=young,
            started=protocol.format_ts(T0 + 1.5))
    run_until(agent, clock, T0 + 5)
    assert "build7 moves (youngest runner)" in caplog.text
    assert not sent(fake_sock, "IDENTIFY") and agent.role == "runner"


def test_rebalance_false_never_moves(make_agent, config, clock, fake_sock, caplog):
    agent = _runner_in_a_hive_without_controller(make_agent, config, clock, caplog,
                                                 rebalance=False)
    run_until(agent, clock, T0 + 10)
    assert not sent(fake_sock, "IDENTIFY") and agent.role == "runner"
    assert agent.plan.blocked and "rebalance = false" in agent.plan.blocked[0]
    assert [m.get("rebalance") for m, _ in sent(fake_sock, "STATUS")][-1] is False


def test_no_advice_means_staying_and_trying_again_after_another_grace(make_agent, config, clock,
                                                                      fake_sock, caplog):
    agent = _runner_in_a_hive_without_controller(make_agent, config, clock, caplog)
    run_until(agent, clock, T0 + 2.05)
    assert agent.phase == "move"
    # members keep heartbeating; nobody advises
    for t in (T0 + 1.0, T0 + 2.0, T0 + 3.0, T0 + 4.0):
        for node, host, ip, role, _h in MEMBERS:
            deliver(agent, "STATUS", node, host, ip, t + 0.5, role=role, state="active",
                    interval=1.0)
    run_until(agent, clock, T0 + 2.05 + timing.ADVICE_TIMEOUT + 0.01)
    assert agent.phase == "operate" and agent.role == "runner"
    assert "No advice received for the move; staying 'runner' for now" in caplog.text


def test_healer_waits_for_the_grace_and_for_other_movers():
    healer = Healer("me", grace=5.0)
    move = plans.Move("me", "build6", "runner", "controller", "youngest runner")
    plan = plans.Plan({"controller": 1}, {}, {"controller": 1}, {"runner": 1}, (move,))
    seen = healer.step(plan, 100.0, False)
    assert seen.wake == 105.0 and len(seen.lines) == 1  # the need is logged once, at once
    assert healer.step(plan, 104.9, False).move is None
    first = healer.step(plan, 105.0, someone_moving=True)
    assert first.move is None and first.lines == []
    second = healer.step(plan, 106.0, someone_moving=False)
    assert second.move == move and second.lines == []
    healer.retry_later(106.5)
    assert healer.step(plan, 107.0, False).move is None  # (the need is said again)
    assert healer.step(plan, 111.5, False).move == move
    assert healer.step(None, 112.0, False).move is None  # calm again


def test_of_two_movers_from_views_that_differed_the_higher_id_gives_way(make_agent, config,
                                                                        clock, fake_sock,
                                                                        caplog):
    """Views may differ for a moment (a death not yet seen everywhere), so two members may each
    believe they are the mover.  Both say 'moving'; the one with the higher node id gives way,
    stays what it was, and waits another grace period (by then the views agree)."""
    agent = _runner_in_a_hive_without_controller(make_agent, config, clock, caplog)
    run_until(agent, clock, T0 + 2.05)
    assert agent.phase == "move"
    deliver(agent, "STATUS", "dddd-5", "build5", "10.9.0.15", clock.now + 0.01, role="runner",
            state="moving", interval=1.0)  # build5 ("dddd-5" < "ffff-6") moves too
    step(agent, clock, clock.now + 0.02)
    assert agent.phase == "operate" and agent.role == "runner"
    assert "build5 is moving too; giving way" in caplog.text
    assert [m.get("state") for m, _ in sent(fake_sock, "STATUS")][-1] == "active"
    # While build5 says it is moving, nobody else starts a move.
    fake_sock.clear()
    for k in range(1, 4):
        deliver(agent, "STATUS", "dddd-5", "build5", "10.9.0.15", clock.now + 0.5,
                role="runner", state="moving", interval=1.0)
        run_until(agent, clock, clock.now + 0.5)
    assert not sent(fake_sock, "IDENTIFY")


def test_a_slow_desired_roles_never_holds_the_agents_loop(make_agent, config, clock, fake_sock,
                                                          caplog):
    """A user's policy (a query to a slow inventory) runs off the loop: the agent keeps
    heartbeating; the plan comes when the policy answers; a late answer is said once."""
    import threading
    import time as real_time

    from build_agent.offloop import OffLoop

    release = threading.Event()

    def slow(view):
        release.wait(10)
        return replay_desired(view)

    agent = _runner_in_a_hive_without_controller(make_agent, config, clock, caplog)
    agent.desired_roles = OffLoop(slow, timing.POLICY_TIMEOUT)
    started = real_time.monotonic()
    run_until(agent, clock, T0 + 3 * agent.status_interval)  # three routine STATUS
    assert real_time.monotonic() - started < 2  # the loop never waited for the policy
    assert agent.plan is None and agent.phase == "operate"
    assert "The policy's desired roles take more than 1s; keeping the last plan" in caplog.text
    assert len([m for m, _ in sent(fake_sock, "STATUS")]) >= 3  # heartbeats went on
    release.set()
    for _ in range(50):
        real_time.sleep(0.02)
        step(agent, clock, clock.now + 0.1)
        if agent.plan is not None:
            break
    assert agent.plan is not None and agent.plan.moves[0].hostname == "build6"
