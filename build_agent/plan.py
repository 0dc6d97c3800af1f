"""Healing plans: from the hive's view and the roles it wants, what is missing and who moves.

Pure functions: no I/O, no clock (``now`` is passed in), no randomness.  Every member computes
the plan from its own view of the hive; equal views give equal plans, so the node chosen to
move is the same on every node and only it acts.

The rules (documented in docs/healing.md):
- **What the hive wants** (``desired``): role -> count, at most one role may say ``"rest"`` (every
  member not counted by the others).  The policy's ``desired_roles(view)`` says it; without one,
  it is derived by replaying ``suggest_role`` for the members in join order (see ``replay``),
  which for the default policy is the seed's table: founder, controller, builder, builder,
  runner...  ``founder`` is the first node's role and is never re-created: the hive wants as many
  founders as it has, at most one.
- **Missing and surplus**: ``missing[r] = desired[r] - have[r]`` where positive; a role held by
  more members than desired (or not desired at all) is in surplus by the difference.
- **Who moves**: for each missing role, in the order ``desired`` lists them, the mover comes from
  the role with the largest remaining surplus (ties: the role name that sorts first), and is the
  youngest member of that role that may move: the latest ``member_since`` (when it took its
  role or came back to the hive, whichever is later), ties: the lowest node id.  A member may
  move unless it said ``rebalance = false``, is moving already, or moved less than ``cooldown``
  seconds ago.  So at most one mover per missing role, and a need nobody can fill is reported
  (``blocked``), not forced.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

FOUNDER = "founder"
REST = "rest"


class PlanError(ValueError):
    """A desired-roles answer that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Member:
    """What the plan needs of one member of the view."""
    node_id: str
    hostname: str
    role: str
    joined_at: float = 0.0      # when it first got an identity (join order)
    member_since: float = 0.0   # when it took its current role or came back, the later
    role_since: float = 0.0     # when it took its current role (cool-down)
    rebalance: bool = True      # False: it never moves (but still counts)
    moving: bool = False        # announced a move in progress

    @property
    def join_key(self) -> tuple[float, str]:
        return (self.joined_at, self.node_id)


@dataclass(frozen=True)
class Move:
    node_id: str
    hostname: str
    from_role: str
    to_role: str
    why: str  # e.g. "youngest runner"


@dataclass(frozen=True)
class Plan:
    desired: dict[str, int]
    have: dict[str, int]
    missing: dict[str, int]
    surplus: dict[str, int]
    moves: tuple[Move, ...] = ()
    blocked: tuple[str, ...] = ()  # needs no member can fill, and why
    disabled: str = ""             # the policy turned healing off for the hive (why)

    @property
    def calm(self) -> bool:
        return not self.moves

    def need_line(self, move: Move) -> str:
        """The journal line every node logs for a move."""
        return (f"Role check: the hive needs a '{move.to_role}' ({self.have.get(move.to_role, 0)} "
                f"of {self.desired.get(move.to_role, 0)}); {move.hostname} moves ({move.why})")

    def to_json(self) -> dict:
        return {"desired": dict(self.desired), "have": dict(self.have),
                "missing": dict(self.missing), "surplus": dict(self.surplus),
                "moves": [{"node_id": m.node_id, "hostname": m.hostname, "from": m.from_role,
                           "to": m.to_role, "why": m.why} for m in self.moves],
                "blocked": list(self.blocked), "disabled": self.disabled or None}


def normalize(desired: Mapping[str, Any], size: int, founders: int) -> dict[str, int]:
    """A policy's desired roles as plain counts for a hive of ``size`` members.

    Counts are whole numbers >= 0; one role may be ``"rest"``; founder is pinned to the
    founders the hive has (at most one).  PlanError says what is wrong."""
    if not isinstance(desired, Mapping):
        raise PlanError(f"desired_roles returned {type(desired).__name__}, not a dict")
    out: dict[str, int] = {}
    rest = None
    for role, count in desired.items():
        if not isinstance(role, str) or not role:
            raise PlanError(f"desired_roles: bad role name {role!r}")
        if count == REST:
            if rest is not None:
                raise PlanError("desired_roles: only one role may be \"rest\"")
            rest = role
            out[role] = 0
        elif isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise PlanError(f"desired_roles: count for {role!r} must be a whole number >= 0 "
                            f"or \"rest\", got {count!r}")
        else:
            out[role] = count
    out[FOUNDER] = min(founders, 1)
    if rest is not None and rest != FOUNDER:
        out[rest] = max(0, size - sum(n for r, n in out.items() if r != rest))
    return out


def compute(members: Iterable[Member], desired: Mapping[str, Any] | None, now: float,
            cooldown: float) -> Plan:
    """The plan for a view.  ``desired`` None means the policy turned healing off."""
    members = sorted(members, key=lambda m: m.node_id)
    have = Counter(m.role for m in members)
    if desired is None:
        return Plan({}, dict(have), {}, {}, disabled="the policy turned rebalancing off")
    wanted = normalize(desired, len(members), have.get(FOUNDER, 0))
    missing = {r: wanted[r] - have.get(r, 0) for r in wanted if wanted[r] > have.get(r, 0)}
    surplus = {r: n - wanted.get(r, 0) for r, n in have.items() if n > wanted.get(r, 0)}
    moves: list[Move] = []
    blocked: list[str] = []
    left = dict(surplus)
    taken: set[str] = set()
    for role in wanted:  # the policy's order: its first role is filled first
        for _ in range(missing.get(role, 0)):
            move, why_not = _pick(members, left, taken, role, now, cooldown)
            if move is None:
                blocked.append(f"'{role}' ({have.get(role, 0)} of {wanted[role]}): {why_not}")
                break
            moves.append(move)
            taken.add(move.node_id)
            left[move.from_role] -= 1
    return Plan(wanted, dict(sorted(have.items())), missing, dict(sorted(surplus.items())),
                tuple(moves), tuple(blocked))


def _pick(members: list[Member], left: dict[str, int], taken: set[str], role: str, now: float,
          cooldown: float) -> tuple[Move | None, str]:
    reasons = []
    for source in sorted((r for r, n in left.items() if n > 0), key=lambda r: (-left[r], r)):
        holders = [m for m in members if m.role == source and m.node_id not in taken]
        able = [m for m in holders if m.rebalance and not m.moving
                and now - m.role_since >= cooldown]
        if able:
            mover = max(able, key=lambda m: (m.member_since, _neg(m.node_id)))
            return Move(mover.node_id, mover.hostname, source, role, f"youngest {source}"), ""
        if any(not m.rebalance for m in holders):
            reasons.append(f"the {source}s have rebalance = false")
        elif any(m.moving for m in holders):
            reasons.append(f"a {source} is moving already")
        elif holders:
            reasons.append(f"every surplus {source} moved less than {cooldown:.0f}s ago")
    if not reasons:
        reasons.append("no role has members to spare")
    return None, "; ".join(reasons)


def _neg(text: str) -> tuple[int, ...]:
    """Sorts text in reverse, so max() picks the lowest node id on a tie."""
    return tuple(-ord(c) for c in text)


# --- the default: replaying suggest_role ----------------------------------------------------

Suggest = Callable[[dict, dict], dict]


def replay(view_members: list[dict], suggest: Suggest) -> dict[str, int]:
    """Desired roles as one-after-another joins would give: the founder first (a stand-in if it
    is gone: the founder is never re-created), then every other member, in join order, as a
    newcomer advised by the ones replayed before it.  ``view_members`` are the policy view's
    member dicts (with ``joined_at``); a policy's own role names for them do not matter."""
    ordered = sorted(view_members, key=lambda m: (m.get("joined_at") or 0.0, m["node_id"]))
    founders = [m for m in ordered if m.get("role") == FOUNDER]
    first = dict(founders[0]) if founders else {"node_id": "", "hostname": "(founder)",
                                                "ip": "", "role": FOUNDER, "capabilities": {}}
    replayed = [first]
    counts: Counter = Counter()
    for member in ordered:
        if founders and member["node_id"] == founders[0]["node_id"]:
            continue
        view = {"self": replayed[0], "peers": replayed[1:], "members": list(replayed)}
        newcomer = {key: member.get(key) for key in ("node_id", "hostname", "ip")}
        newcomer["capabilities"] = dict(member.get("capabilities") or {})
        role = suggest(view, newcomer)["role"]
        counts[role] += 1
        replayed.append({**member, "role": role})
    desired = dict(counts)
    desired.pop(FOUNDER, None)  # a policy answering 'founder' for a joiner: normalize pins it
    return desired


def members_from_view(view_members: Iterable[dict]) -> list[Member]:
    """Plan members from the policy view's member dicts (as the agent and advisor build them)."""
    out = []
    for m in view_members:
        out.append(Member(node_id=m["node_id"], hostname=m.get("hostname", "?"), role=m["role"],
                          joined_at=float(m.get("joined_at") or 0.0),
                          member_since=float(m.get("member_since") or 0.0),
                          role_since=float(m.get("role_since") or 0.0),
                          rebalance=m.get("rebalance", True) is not False,
                          moving=m.get("state") == "moving"))
    return out
