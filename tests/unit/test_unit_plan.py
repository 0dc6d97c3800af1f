"""Healing plans: pure functions, checked on examples and on random hives (hypothesis)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from build_agent import plan
from build_agent.plan import FOUNDER, Member, PlanError, compute, normalize, replay
from build_advisor.policy import default_suggest_role

NOW = 10_000.0
COOLDOWN = 60.0


def sequential(n: int) -> list[str]:
    return [FOUNDER if k == 1 else "controller" if k == 2 else "builder" if k <= 4 else "runner"
            for k in range(1, n + 1)]


def hive(roles: list[str], overrides: dict | None = None) -> list[dict]:
    """View member dicts for nodes that joined in this order, long enough ago to move."""
    return [{"node_id": f"n{k:03d}", "hostname": f"build{k}", "ip": f"10.0.0.{k}", "role": role,
             "capabilities": {}, "joined_at": float(k), "member_since": float(k),
             "role_since": float(k), **(overrides or {}).get(k, {})}
            for k, role in enumerate(roles, start=1)]


def plan_for(view_members: list[dict], cooldown: float = COOLDOWN) -> plan.Plan:
    desired = replay(view_members, default_suggest_role)
    return compute(plan.members_from_view(view_members), desired, NOW, cooldown)


def test_the_seed_table_is_calm():
    for n in range(1, 30):
        p = plan_for(hive(sequential(n)))
        assert p.calm and not p.missing and not p.surplus, (n, p)


def test_a_dead_controller_is_replaced_by_the_youngest_runner():
    members = [m for m in hive(sequential(6)) if m["role"] != "controller"]
    p = plan_for(members)
    assert p.missing == {"controller": 1} and p.surplus == {"runner": 1}
    [move] = p.moves
    assert (move.hostname, move.from_role, move.to_role) == ("build6", "runner", "controller")
    assert p.need_line(move) == ("Role check: the hive needs a 'controller' (0 of 1); build6 "
                                 "moves (youngest runner)")


def test_two_dead_builders_make_two_runners_builders():
    members = [m for m in hive(sequential(6)) if m["role"] != "builder"]
    p = plan_for(members)
    assert [(m.hostname, m.to_role) for m in p.moves] == [("build6", "builder"),
                                                          ("build5", "builder")]


def test_a_dead_founder_is_never_recreated():
    members = hive(sequential(6))[1:]
    p = plan_for(members)
    assert p.calm and p.desired[FOUNDER] == 0, p


def test_a_returning_controller_makes_exactly_one_step_down():
    # build2 (controller) died; build6 moved to controller; build2 comes back (member_since now).
    members = hive(["founder", "controller", "builder", "builder", "runner", "controller"],
                   {6: {"role_since": NOW - 100, "member_since": NOW - 100},
                    2: {"member_since": NOW - 5}})
    p = plan_for(members)
    assert p.surplus == {"controller": 1} and p.missing == {"runner": 1}
    [move] = p.moves
    assert move.hostname == "build2"  # the one that came back last steps down


def test_rebalance_false_and_cooldown_block_with_a_reason():
    members = [m for m in hive(sequential(6)) if m["role"] != "controller"]
    for m in members:
        if m["role"] == "runner":
            m["rebalance"] = False
    p = plan_for(members)
    assert p.moves == () and p.blocked == ("'controller' (0 of 1): the runners have "
                                           "rebalance = false",)
    members = [m for m in hive(sequential(6)) if m["role"] != "controller"]
    for m in members:
        m["role_since"] = NOW - 10
    p = plan_for(members)
    assert p.moves == () and "moved less than 60s ago" in p.blocked[0]


def test_a_moving_member_is_not_chosen_again():
    members = [m for m in hive(sequential(7)) if m["role"] != "controller"]
    members[-1]["state"] = "moving"  # build7, the youngest runner, is moving already
    [move] = plan_for(members).moves
    assert move.hostname == "build6"


def test_desired_roles_with_rest_and_errors():
    assert normalize({"controller": 1, "builder": 2, "runner": "rest"}, 7, 1) == \
        {"controller": 1, "builder": 2, "runner": 3, FOUNDER: 1}
    for bad in ({"a": -1}, {"a": "rest", "b": "rest"}, {"a": 1.5}, {"a": True}, ["a"]):
        with pytest.raises(PlanError):
            normalize(bad, 3, 0)
    off = compute(plan.members_from_view(hive(["founder", "runner"])), None, NOW, 0)
    assert off.calm and off.disabled


# --- properties -------------------------------------------------------------------------------

hives = st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), max_size=n, unique=True),
                        st.lists(st.booleans(), min_size=n, max_size=n),
                        st.randoms(use_true_random=False)))


@settings(max_examples=300, deadline=None)
@given(hives)
def test_properties_of_plans_for_random_hives_and_deaths(case):
    n, dead, rebalance, rnd = case
    members = hive(sequential(n))
    for k, m in enumerate(members):
        m["rebalance"] = rebalance[k]
    alive = [m for k, m in enumerate(members) if k not in set(dead)]
    if not alive:
        return
    first = plan_for(alive)
    # the same plan from every member's view: order of the view does not matter
    for _ in range(3):
        shuffled = list(alive)
        rnd.shuffle(shuffled)
        assert plan_for(shuffled) == first
    # at most one mover per missing role, never twice the same node, never rebalance = false
    assert len(first.moves) <= sum(first.missing.values())
    assert len({m.node_id for m in first.moves}) == len(first.moves)
    by_id = {m["node_id"]: m for m in alive}
    assert all(by_id[m.node_id].get("rebalance", True) for m in first.moves)
    for move in first.moves:
        assert first.missing.get(move.to_role, 0) > 0 and first.surplus.get(move.from_role, 0) > 0
    # applying the moves leaves a plan with nothing more to do (no oscillation)
    for move in first.moves:
        by_id[move.node_id]["role"] = move.to_role
        by_id[move.node_id]["role_since"] = NOW
    after = plan_for(alive)
    assert after.moves == ()
    if not first.blocked:
        # healed to what one-after-another joins of this many nodes give (founder aside)
        founders = int(any(m["role"] == FOUNDER for m in alive))
        wanted = Counter(sequential(len(alive) + 1 - founders)[1 - founders:])
        assert Counter(m["role"] for m in alive) == wanted


def test_replay_follows_a_role_aware_policy():
    def balance(view, newcomer):
        roles = Counter(m["role"] for m in view["members"])
        role = "controller" if not roles["controller"] else \
            "builder" if roles["builder"] <= roles["runner"] else "runner"
        return {"role": role, "packages": [], "config": {}, "reason": "balance"}
    assert replay(hive(sequential(7)), balance) == {"controller": 1, "builder": 3, "runner": 2}
    random.seed(1)
