"""Counting advice into an identity: pure functions, no I/O.

Rules (the same on every node, so every node decides alike):
- one vote per advisor (advice is keyed by the advisor's node id, so retransmissions count once);
- the role with the most votes wins; a tie goes to the role name that sorts first;
- packages are the union of the winners' lists (advisors in hostname order, first appearance
  first); config is merged with the first advisor in hostname order winning a conflicting key;
- ``assigned_by`` lists the winners' hostnames, sorted, without duplicates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Advice:
    advisor_id: str
    hostname: str
    role: str
    packages: tuple[str, ...]
    config: dict
    reason: str


@dataclass(frozen=True)
class Decision:
    role: str
    packages: list[str]
    config: dict
    assigned_by: list[str]
    reason: str
    votes: dict[str, int]


def decide(advice: dict[str, Advice]) -> Decision:
    """advice: advisor node id -> Advice (one entry per advisor).  Needs at least one entry."""
    if not advice:
        raise ValueError("no advice to decide on")
    votes = Counter(a.role for a in advice.values())
    role = min(votes, key=lambda r: (-votes[r], r))
    winners = sorted((a for a in advice.values() if a.role == role),
                     key=lambda a: (a.hostname, a.advisor_id))
    packages: dict[str, None] = {}
    config: dict = {}
    for item in winners:
        for name in item.packages:
            packages.setdefault(name, None)
        for key, value in item.config.items():
            config.setdefault(key, value)
    return Decision(role=role, packages=list(packages), config=config,
                    assigned_by=sorted({a.hostname for a in winners}), reason=winners[0].reason,
                    votes=dict(sorted(votes.items())))
