"""Answering a member that asks the hive for a new role (healing's re-ask).

A newcomer is advised by the policy's ``suggest_role``.  A member that re-asks was chosen by the
hive's plan (build_agent.plan) to fill a need; the advisor makes the same plan from the same
view (the agent's peers.json) and answers:
- the role the plan gives this mover, with the packages and config the policy gives that role
  (its ``suggest_role`` asked for the mover as a newcomer told ``needed_role``; if it answers
  another role, what its replay gave a member of that role; else none), and the plan's reason:
  ``the hive needs a 'controller' (0 of 1)``;
- or, when this advisor's plan does not move that member (views differ for a moment), its
  current role: ``stay``.  Consensus counts these votes like a newcomer's.
"""

from __future__ import annotations

from typing import Callable

from build_agent import plan as plans

Suggest = Callable[[dict, dict], dict]


def reask_policy(suggest: Suggest, desired_roles: Callable[[dict], object], now: float,
                 cooldown: float) -> Suggest:
    """A suggest_role for re-asks: ``view`` holds every member, the mover included."""
    def answer(view: dict, mover: dict) -> dict:
        current = mover.get("role")
        plan = plans.compute(plans.members_from_view(view["members"]), desired_roles(view),
                             now, cooldown)
        move = next((m for m in plan.moves if m.node_id == mover["node_id"]), None)
        if move is None:
            return {"role": current, "packages": [], "config": {},
                    "reason": f"the hive has what it needs: stay '{current}'"}
        reason = (f"the hive needs a '{move.to_role}' ({plan.have.get(move.to_role, 0)} of "
                  f"{plan.desired.get(move.to_role, 0)})")
        others = [m for m in view["members"] if m["node_id"] != mover["node_id"]]
        as_newcomer = {"self": others[0], "peers": others[1:], "members": others}
        newcomer = {**mover, "reask": True, "previous_role": current,
                    "needed_role": move.to_role}
        try:
            got = suggest(as_newcomer, newcomer)
        except (Exception, SystemExit):
            got = {}
        if isinstance(got, dict) and got.get("role") == move.to_role:
            return {"role": move.to_role, "packages": got.get("packages", []),
                    "config": got.get("config", {}), "reason": reason}
        found = _replayed_advice(view, suggest, move.to_role)
        return {"role": move.to_role, "packages": found.get("packages", []),
                "config": found.get("config", {}), "reason": reason}
    return answer


def _replayed_advice(view: dict, suggest: Suggest, role: str) -> dict:
    """What the policy told some member of the replayed hive that became ``role``."""
    seen: dict[str, dict] = {}

    def recording(v: dict, n: dict) -> dict:
        try:
            got = suggest(v, n)
        except (Exception, SystemExit):
            got = {}
        if not isinstance(got, dict) or not isinstance(got.get("role"), str):
            from .policy import default_suggest_role
            got = default_suggest_role(v, n)
        seen.setdefault(got["role"], got)
        return got
    plans.replay(view["members"], recording)
    return seen.get(role, {})
