"""Integration: what a join costs a big hive (issue 12: a 200-host hive on one machine).  Real
hosts (network namespaces, scripts/hive-lab).

In a hive of more than 16 members a joiner asks 16 of them, chosen for its round (IDENTIFY
``advisors``): those 16 advisors answer it, it decides once more than half agree, the others'
advisors do not even wake, and the roles are still those of one-after-another joins."""

from __future__ import annotations

import collections
import re

from lab import sequential_counts

ASKED = 16


def advisors_of(lab, joiner: int, hosts: list[int], role: str) -> set[int]:
    """The hosts whose advisor sent host ``joiner`` ADVICE (their advisor.log says so)."""
    line = f" -> build{joiner}: become '{role}'"
    return {i for i in hosts if line in lab.log(i, "advisor")}


def test_a_join_into_a_big_hive_is_advised_by_16_chosen_members(make_lab):
    lab = make_lab()
    lab.up(20)  # one after another: joiners 18 to 20 found more than 16 members
    new = lab.add(1)[0]
    lab.start(new)
    lab.wait(new, timeout=60)
    hosts = lab.hosts()
    roles = lab.roles()
    assert collections.Counter(roles.values()) == sequential_counts(21), roles

    log = lab.log(new)
    assert f"Asking {ASKED} of them, chosen for this round" in log, log
    heard = set(re.findall(r" <- (build\d+): become", log))
    answered = advisors_of(lab, new, hosts, roles[new])
    # All 16 answer; it decides once more than half of them agree (those heard by then).
    assert len(answered) == ASKED and heard <= {f"build{i}" for i in answered}, (answered, heard)
    identity = lab.identity(new)
    assert len(identity["votes"]) == 1 and ASKED // 2 < len(identity["assigned_by"]) <= ASKED
    assert set(identity["assigned_by"]) <= heard, identity
    # The 4 members not asked: their advisors never answered it (nor were handed its IDENTIFY:
    # an advisor logs every round it advises), yet their agents list the newcomer.
    for i in set(hosts) - answered - {new}:
        assert f"build{new}" not in lab.log(i, "advisor"), i
    lab.wait_for(lambda: all(len(lab.peer_names(i)) == len(hosts) - 1 for i in hosts), 30,
                 "every peers.json to list the 20 others")

    # Joins 18 to 20 (17 to 19 members) asked 16 too; joins before them asked every member.
    for i in (18, 19, 20):
        assert f"Asking {ASKED} of them, chosen for this round" in lab.log(i), i
        assert len(advisors_of(lab, i, hosts, roles[i])) == ASKED, i
    assert "chosen for this round" not in lab.log(17)
    assert len(advisors_of(lab, 17, hosts, roles[17])) == ASKED  # all 16 members
