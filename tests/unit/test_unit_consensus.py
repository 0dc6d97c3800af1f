"""consensus.decide: votes, ties, one vote per advisor, packages, config, assigned_by."""

from __future__ import annotations

import itertools

import pytest

from build_agent.consensus import Advice, decide


def adv(advisor_id: str, hostname: str, role: str, packages=(), config=None, reason=None):
    return Advice(advisor_id, hostname, role, tuple(packages), dict(config or {}),
                  reason or f"{hostname} says {role}")


def table(*items: Advice) -> dict[str, Advice]:
    return {a.advisor_id: a for a in items}


def test_majority_wins():
    decision = decide(table(adv("n1", "build1", "builder"), adv("n2", "build2", "runner"),
                            adv("n3", "build3", "builder")))
    assert decision.role == "builder"
    assert decision.votes == {"builder": 2, "runner": 1}
    assert decision.assigned_by == ["build1", "build3"]


def test_majority_wins_even_against_an_earlier_sorting_role():
    decision = decide(table(adv("n1", "a", "runner"), adv("n2", "b", "runner"),
                            adv("n3", "c", "builder")))
    assert decision.role == "runner"
    assert decision.assigned_by == ["a", "b"]


def test_single_advisor():
    decision = decide(table(adv("n1", "build1", "controller", ["ansible", "git"])))
    assert decision.role == "controller"
    assert decision.packages == ["ansible", "git"]
    assert decision.assigned_by == ["build1"]
    assert decision.votes == {"controller": 1}


@pytest.mark.parametrize("roles, winner", [
    (["runner", "builder"], "builder"),
    (["builder", "runner"], "builder"),
    (["zeta", "alpha", "mid"], "alpha"),
    (["runner", "runner", "builder", "builder"], "builder"),
    (["b", "a", "b", "a", "c"], "a"),
    (["ml-trainer", "ml.trainer", "ml_trainer"], "ml-trainer"),  # plain code-point order
])
def test_tie_goes_to_the_role_name_sorting_first(roles, winner):
    for order in itertools.permutations(range(len(roles))):
        advice = {}
        for position in order:  # the insertion order must not matter
            advice[f"n{position}"] = adv(f"n{position}", f"host{position}", roles[position])
        assert decide(advice).role == winner


def test_decision_does_not_depend_on_arrival_order():
    items = [adv("n1", "build2", "builder", ["maven", "git"], {"a": 1}),
             adv("n2", "build1", "builder", ["git", "openjdk-17-jdk"], {"a": 2, "b": 2}),
             adv("n3", "build3", "runner", ["npm"])]
    results = {repr(decide(table(*order))) for order in itertools.permutations(items)}
    assert len(results) == 1


def test_one_vote_per_advisor_id():
    # The table is keyed by advisor id: a retransmission (same id) replaces, never adds, a vote.
    advice = table(adv("n1", "build1", "runner"), adv("n2", "build2", "builder"),
                   adv("n3", "build3", "builder"))
    for _ in range(5):
        advice["n1"] = adv("n1", "build1", "runner")
    decision = decide(advice)
    assert decision.votes == {"builder": 2, "runner": 1}
    assert decision.role == "builder"


def test_assigned_by_is_sorted_and_unique_hostnames():
    # Two advisors reporting the same hostname (e.g. a re-imaged host with a new node id).
    decision = decide(table(adv("z", "build9", "builder"), adv("y", "build1", "builder"),
                            adv("x", "build9", "builder"), adv("w", "build5", "runner")))
    assert decision.assigned_by == ["build1", "build9"]
    assert decision.votes == {"builder": 3, "runner": 1}


def test_packages_are_the_union_of_the_winners_in_hostname_order():
    decision = decide(table(
        adv("n3", "build3", "builder", ["zlib1g-dev", "git"]),
        adv("n1", "build1", "builder", ["openjdk-17-jdk", "maven", "git"]),
        adv("n2", "build2", "builder", ["maven", "build-essential", "openjdk-17-jdk"]),
        adv("n4", "build4", "runner", ["npm", "nodejs"]),  # a loser: its packages are not taken
    ))
    assert decision.packages == ["openjdk-17-jdk", "maven", "git", "build-essential",
                                 "zlib1g-dev"]
    assert "npm" not in decision.packages


def test_config_merge_first_advisor_in_hostname_order_wins():
    decision = decide(table(
        adv("a", "build2", "builder", config={"jobs": 2, "only2": True}),
        adv("b", "build1", "builder", config={"jobs": 1, "only1": "x"}),
        adv("c", "build3", "builder", config={"jobs": 3, "only3": [3]}),
        adv("d", "build0", "runner", config={"jobs": 99, "loser": 1}),
    ))
    assert decision.config == {"jobs": 1, "only1": "x", "only2": True, "only3": [3]}


def test_same_hostname_tie_broken_by_advisor_id():
    decision = decide(table(adv("id-b", "build1", "builder", ["b-pkg"], {"k": "b"}, "from b"),
                            adv("id-a", "build1", "builder", ["a-pkg"], {"k": "a"}, "from a")))
    assert decision.packages == ["a-pkg", "b-pkg"]
    assert decision.config == {"k": "a"}
    assert decision.reason == "from a"
    assert decision.assigned_by == ["build1"]


def test_reason_is_the_first_winner_in_hostname_order():
    decision = decide(table(adv("n2", "build2", "builder", reason="second"),
                            adv("n1", "build1", "builder", reason="first"),
                            adv("n0", "build0", "runner", reason="loser")))
    assert decision.reason == "first"


def test_votes_are_sorted_by_role():
    decision = decide(table(adv("1", "h1", "zz"), adv("2", "h2", "aa"), adv("3", "h3", "mm")))
    assert list(decision.votes) == ["aa", "mm", "zz"]


def test_decide_does_not_mutate_the_advice():
    config = {"jobs": 1}
    advice = table(adv("n1", "build1", "builder", ["git"], config))
    decision = decide(advice)
    decision.config["jobs"] = 5
    decision.packages.append("x")
    assert advice["n1"].config == {"jobs": 1} and advice["n1"].packages == ("git",)


def test_empty_advice_raises():
    with pytest.raises(ValueError):
        decide({})
