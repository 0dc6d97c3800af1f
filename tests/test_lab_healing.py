"""Integration: the hive heals itself across real hosts (heartbeat 1 s): exactly one mover per
need, once, the same on every node; a returning node makes exactly one step down; nodes with
rebalance = false never move, and `hive plan` says why."""

from __future__ import annotations

import collections
import json
import time

from lab import log_lines, sequential_counts

HEARTBEAT = 1


def live(lab, hosts) -> list[int]:
    return [i for i in hosts if lab.alive(i)]


def counts(lab, hosts) -> collections.Counter:
    return collections.Counter(lab.role(i) for i in hosts)


def moves(lab, hosts) -> int:
    """Role changes made by moves, from every agent's log."""
    return sum(log_lines(lab.log(i)).count(line) for i in hosts
               for line in {l for l in log_lines(lab.log(i))
                            if l.startswith("Asking peers for a new role")})


def everyone_lists(lab, hosts, name: str, role: str) -> bool:
    for i in hosts:
        if lab.host_dir(i).joinpath("hostname").exists():
            continue
        peers = {p["hostname"]: p["role"] for p in (lab.peers(i) or {}).get("peers", [])}
        me = (lab.peers(i) or {}).get("self", {})
        if me.get("hostname") == name:
            if me.get("role") != role:
                return False
        elif peers.get(name) != role:
            return False
    return True


def test_a_killed_controller_is_replaced_by_exactly_one_runner(make_lab):
    lab = make_lab(heartbeat=HEARTBEAT)
    lab.up(6)
    assert lab.roles() == {1: "founder", 2: "controller", 3: "builder", 4: "builder",
                           5: "runner", 6: "runner"}
    lab.kill(2)
    killed = time.monotonic()
    rest = [1, 3, 4, 5, 6]
    lab.wait_for(lambda: counts(lab, rest)["controller"] == 1, 30, "a new controller")
    took = time.monotonic() - killed
    print(f"kill -9 of the controller -> a new controller in {took:.2f}s (heartbeat 1 s)")
    assert lab.role(6) == "controller"  # the youngest runner
    identity = lab.identity(6)
    assert identity["previous_role"] == "runner" and identity["changed_at"]
    assert identity["packages"] == ["ansible", "git"]
    lab.wait_for(lambda: everyone_lists(lab, rest, "build6", "controller"), 10,
                 "every peers.json to show build6 as controller")
    for i in rest:
        assert ("Role check: the hive needs a 'controller' (0 of 1); build6 moves (youngest "
                "runner)") in log_lines(lab.log(i)), i
    lines = log_lines(lab.log(6))
    at = lines.index("Asking peers for a new role (was 'runner')...")
    assert "Consensus: I am a 'controller'" in lines[at:]
    assert "Packages: ansible, git" in lines[at:]
    # Nothing else changes, now or in the next 30 s.
    before = lab.roles(rest)
    time.sleep(30)
    assert lab.roles(rest) == before == {1: "founder", 3: "builder", 4: "builder", 5: "runner",
                                         6: "controller"}
    assert moves(lab, rest) == 1
    assert all(lab.alive(i) for i in rest)


def test_two_killed_builders_make_two_runners_builders_and_a_newcomer_fits(make_lab):
    lab = make_lab(heartbeat=HEARTBEAT)
    lab.up(6)
    lab.kill(3)
    lab.kill(4)
    rest = [1, 2, 5, 6]
    lab.wait_for(lambda: counts(lab, rest)["builder"] == 2, 40, "two new builders")
    assert lab.roles(rest) == {1: "founder", 2: "controller", 5: "builder", 6: "builder"}
    assert moves(lab, rest) == 2
    # A node that joins afterwards gets what a newcomer to a hive of four gets: runner.
    i = lab.join()
    lab.wait(i)
    assert lab.role(i) == "runner"
    time.sleep(5)
    assert counts(lab, rest + [i]) == sequential_counts(5)


def test_a_returning_controller_makes_exactly_one_controller(make_lab):
    lab = make_lab(heartbeat=HEARTBEAT)
    lab.up(6)
    lab.kill(2)
    rest = [1, 3, 4, 5, 6]
    lab.wait_for(lambda: counts(lab, rest)["controller"] == 1, 30, "a new controller")
    lab.start(2)  # back, with its old identity.json: two controllers
    everyone = [1, 2, 3, 4, 5, 6]
    lab.wait_for(lambda: "Already identified as: controller" in lab.log(2), 10,
                 "build2 to come back")
    back = time.monotonic()
    lab.wait_for(lambda: counts(lab, everyone)["controller"] == 1, 30,
                 "exactly one controller again")
    print(f"two controllers -> one after {time.monotonic() - back:.2f}s")
    assert counts(lab, everyone) == sequential_counts(6)
    stepped = [i for i in (2, 6) if lab.role(i) != "controller"]
    assert len(stepped) == 1
    time.sleep(10)
    assert counts(lab, everyone) == sequential_counts(6)
    assert moves(lab, everyone) == 2  # the replacement, then one step down


def test_rebalance_false_on_every_runner_means_no_move_and_hive_plan_says_why(make_lab):
    lab = make_lab(heartbeat=HEARTBEAT)
    lab.up(4)
    for i in lab.add(2):
        with open(lab.host_dir(i) / "hive.toml", "a") as handle:
            handle.write("rebalance = false\n")
        lab.start(i)
        lab.wait(i)
    assert lab.roles() == {1: "founder", 2: "controller", 3: "builder", 4: "builder",
                           5: "runner", 6: "runner"}
    lab.kill(2)
    rest = [1, 3, 4, 5, 6]
    lab.wait_for(lambda: "build2" not in lab.peer_names(1), 10, "build2 to be declared dead")
    time.sleep(8)  # well past the grace
    assert counts(lab, rest)["controller"] == 0 and moves(lab, rest) == 0
    plan = json.loads(lab.hive(1, "plan", "--json").stdout)
    assert plan["missing"] == {"controller": 1} and plan["moves"] == []
    assert plan["blocked"] == ["'controller' (0 of 1): the runners have rebalance = false"]
    text = lab.hive(1, "plan").stdout
    assert "rebalance = false" in text and "controller" in text


def test_twenty_nodes_three_kills_two_restarts_converge_with_the_fewest_moves(make_lab):
    """Three random kill -9s and two of them restarted, in quick succession: the hive ends with
    the default table's counts for who is left, having moved exactly as often as needed."""
    import random

    from build_advisor.policy import default_suggest_role
    from build_agent import plan as plans

    lab = make_lab(heartbeat=HEARTBEAT)
    lab.up(20)
    rnd = random.Random(20261127)
    gone = rnd.choice([2, 3, 4])  # the one that stays dead holds a role the hive needs
    back = rnd.sample([i for i in range(2, 21) if i != gone], 2)
    killed = back + [gone]
    before = lab.roles()
    print(f"kill -9 {killed}, then restart {back}")
    for i in killed:
        lab.kill(i)
    time.sleep(0.5)
    for i in back:
        lab.start(i)
    alive = [i for i in range(1, 21) if i != killed[2]]
    # The fewest moves: what the plan asks of the hive as it is now (roles as before the kills).
    members = [{"node_id": f"{i:03d}", "hostname": f"build{i}", "role": before[i],
                "joined_at": float(i), "role_since": float(i), "member_since": float(i)}
               for i in alive]
    fewest = len(plans.compute(plans.members_from_view(members),
                               plans.replay(members, default_suggest_role), 1e9, 0).moves)
    want = sequential_counts(len(alive))
    lab.wait_for(lambda: counts(lab, alive) == want, 60, f"the table's counts {want}")
    time.sleep(12)  # well past grace and detection: nothing more happens
    assert counts(lab, alive) == want
    made = moves(lab, alive)
    print(f"moves made {made}, fewest needed {fewest}")
    assert made == fewest
    assert all(lab.alive(i) for i in alive)
