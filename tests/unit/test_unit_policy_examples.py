"""The example policies that ship in build_advisor/policies, on views like the agent builds."""

from __future__ import annotations

from pathlib import Path

from build_advisor import policy as policy_mod
from build_advisor.policy import desired_roles_of, load_policy
from build_agent import plan as plans
from hive_fakes import policy_copy

POLICIES = Path(policy_mod.__file__).parent / "policies"


def member(k, role, load15=None, cores=4):
    return {"node_id": f"n{k:02d}", "hostname": f"build{k}", "ip": f"10.0.0.{k}", "role": role,
            "capabilities": {"cpu_cores": cores}, "capacity": {"cpu_cores": cores},
            "load": None if load15 is None else [load15, load15, load15],
            "joined_at": float(k), "role_since": float(k), "member_since": float(k)}


def view(members):
    return {"self": members[0], "peers": members[1:], "members": members}


def plan_for(desired, members):
    return plans.compute(plans.members_from_view(members), desired(view(members)), 1e6, 0)


def test_busy_builders_want_one_more_builder_and_give_it_back_with_hysteresis(tmp_path):
    desired = desired_roles_of(load_policy(policy_copy(POLICIES / "busy_builders.py", tmp_path)))
    roles = ["founder", "controller", "builder", "builder", "runner", "runner", "runner"]
    idle = [member(k, r, 0.2) for k, r in enumerate(roles, 1)]
    assert plan_for(desired, idle).calm
    busy = [member(k, r, 3.6 if r == "builder" else 0.1) for k, r in enumerate(roles, 1)]
    [move] = plan_for(desired, busy).moves  # 0.9 per core: one runner becomes a builder
    assert (move.from_role, move.to_role, move.hostname) == ("runner", "builder", "build7")
    # With three builders sharing the work (0.5 per core: between IDLE and BUSY), it stays.
    roles3 = ["founder", "controller", "builder", "builder", "runner", "runner", "builder"]
    shared = [member(k, r, 2.0 if r == "builder" else 0.1) for k, r in enumerate(roles3, 1)]
    assert plan_for(desired, shared).calm
    # Idle again (below IDLE): the extra builder goes back to the runners.
    quiet = [member(k, r, 0.4) for k, r in enumerate(roles3, 1)]
    [back] = plan_for(desired, quiet).moves
    assert (back.from_role, back.to_role) == ("builder", "runner")
