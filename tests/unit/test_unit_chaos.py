"""scripts/hive-chaos's pure parts: the seeded schedule, the ideal hive's moves (build_agent.plan
replayed between events), the moves read from agents' logs, nft's counters, the state reader."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from build_advisor.policy import default_suggest_role  # noqa: E402
from hivebench import chaos, loss  # noqa: E402
from hivebench.chaos import Event  # noqa: E402
from hivebench.statewatch import StateWatch  # noqa: E402


def table(n: int) -> list[str]:
    return ["founder" if k == 1 else "controller" if k == 2 else "builder" if k <= 4 else "runner"
            for k in range(1, n + 1)]


def joined(n: int) -> list[tuple[int, str, str, str]]:
    return [(k, f"n{k:03d}", f"build{k}", role) for k, role in enumerate(table(n), start=1)]


def ideal(n: int, events: list[tuple[float, Event]]) -> chaos.IdealHive:
    return chaos.ideal_moves(joined(n), events, default_suggest_role)


# --- the schedule -------------------------------------------------------------------------------------
def test_the_schedule_is_reproducible_from_its_seed():
    one = chaos.schedule(42, range(1, 21), 600, 3)
    assert one == chaos.schedule(42, range(1, 21), 600, 3)
    assert one != chaos.schedule(43, range(1, 21), 600, 3)
    assert {e.kind for e in one} == {"kill", "start", "restart"}


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), hosts=st.integers(4, 30), duration=st.floats(1, 900),
       max_down=st.integers(0, 5), low=st.floats(0.2, 5), spread=st.floats(0, 5))
def test_the_schedule_keeps_its_bounds(seed, hosts, duration, max_down, low, spread):
    max_down = min(max_down, hosts - 2)
    events = chaos.schedule(seed, list(range(1, hosts + 1)), duration, max_down, (low, low + spread))
    down: list[int] = []
    last = 0.0
    for ev in events:
        assert 0 < ev.at < duration
        assert low - 2e-3 <= ev.at - last <= low + spread + 2e-3
        last = ev.at
        if ev.kind == "kill":
            assert ev.host not in down
            down.append(ev.host)
        elif ev.kind == "start":
            assert ev.host in down  # only a killed host comes back
            down.remove(ev.host)
        else:
            assert ev.kind == "restart" and ev.host not in down
        assert len(down) <= max_down and hosts - len(down) >= 2
    assert chaos.down_after(events) == down


def test_a_schedule_that_cannot_be_kept_is_refused():
    with pytest.raises(ValueError):
        chaos.schedule(1, [1, 2, 3], 60, 2)  # two must stay up
    with pytest.raises(ValueError):
        chaos.schedule(1, [1, 2, 3, 4], 60, 1, (0, 1))


# --- the ideal hive -------------------------------------------------------------------------------
def test_a_killed_controller_costs_one_move_and_its_return_one_more():
    hive = ideal(6, [(1.0, Event(1.0, "kill", 2))])
    assert hive.moves == [{"at": 1.0, "host": 6, "from": "runner", "to": "controller"}]
    hive.apply(Event(5.0, "start", 2), 5.0)
    # two controllers: the youngest (the one just back) steps down to what the hive lacks
    assert hive.moves[1:] == [{"at": 5.0, "host": 2, "from": "controller", "to": "runner"}]
    assert Counter(hive.roles().values()) == Counter(table(6))


def test_two_dead_builders_cost_two_moves_a_dead_founder_or_runner_none():
    assert len(ideal(6, [(1.0, Event(1.0, "kill", 3)), (2.0, Event(2.0, "kill", 4))]).moves) == 2
    assert ideal(6, [(1.0, Event(1.0, "kill", 1))]).moves == []  # never re-created
    assert ideal(6, [(1.0, Event(1.0, "kill", 5))]).moves == []
    assert ideal(6, [(1.0, Event(1.0, "restart", 2))]).moves == []


def test_the_table_without_the_founder():
    members = [{"node_id": f"n{k}", "hostname": f"b{k}", "role": r, "joined_at": float(k)}
               for k, r in enumerate(table(6), start=1) if r != "founder"]
    assert chaos.table_counts(members, default_suggest_role) == {
        "builder": 2, "controller": 1, "runner": 2}


def test_lower_bound_counts_the_roles_nobody_held():
    initial = dict(enumerate(table(6), start=1))
    live = [1, 3, 4, 5, 6]  # the controller is gone
    wanted = {"founder": 1, "controller": 1, "builder": 2, "runner": 1}
    assert chaos.lower_bound(initial, live, wanted) == 1
    assert chaos.lower_bound(initial, list(initial), dict(Counter(table(6)))) == 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), hosts=st.integers(4, 20), max_down=st.integers(1, 4))
def test_the_ideal_hive_always_ends_at_the_table_with_at_least_the_lower_bound(seed, hosts,
                                                                               max_down):
    max_down = min(max_down, hosts - 2)
    events = chaos.schedule(seed, list(range(1, hosts + 1)), 120, max_down)
    hive = ideal(hosts, [(e.at, e) for e in events])
    live = sorted(hive.alive)
    members = [hive.members[h].view() for h in live]
    wanted = chaos.table_counts(members, default_suggest_role)
    assert chaos.role_counts(hive.roles().values()) == wanted
    initial = dict(enumerate(table(hosts), start=1))
    assert len(hive.moves) >= chaos.lower_bound(initial, live, wanted)
    # every move fills a need: never more moves than events that changed the hive's size, x2
    assert len(hive.moves) <= 2 * sum(1 for e in events if e.kind != "restart")


# --- moves in the logs -------------------------------------------------------------------------------
LOG = """\
2026-11-27 11:15:45,334 INFO build-agent build6 on 10.76.0.26 (node abc), port 50555
2026-11-27 11:15:45,386 INFO Asking peers for role assignment...
2026-11-27 11:15:45,388 INFO  <- build1: become 'runner' (hive has enough)
2026-11-27 11:15:45,388 INFO Consensus: I am a 'runner'
2026-11-27 11:16:00,000 INFO Role check: the hive needs a 'controller' (0 of 1); build6 moves (youngest runner)
2026-11-27 11:16:00,001 INFO Asking peers for a new role (was 'runner')...
2026-11-27 11:16:00,010 INFO  <- build1: become 'controller' (no controller)
2026-11-27 11:16:00,011 INFO Consensus: I am a 'controller'
2026-11-27 11:17:00,001 INFO Asking peers for a new role (was 'controller')...
2026-11-27 11:17:00,011 INFO The hive advised me to stay 'controller'
2026-11-27 11:18:00,001 INFO Asking peers for a new role (was 'controller')...
2026-11-27 11:18:01,000 INFO build-agent build6 on 10.76.0.26 (node abc), port 50555
2026-11-27 11:18:01,100 ERROR unexpected
Traceback (most recent call last):
  File "x.py", line 1, in <module>
KeyError: 'role'
2026-11-27 11:19:00,001 INFO Asking peers for a new role (was 'controller')...
"""


def test_moves_are_read_from_an_agents_log():
    found = chaos.moves_from_log(LOG)
    assert found.moves == [{"from": "runner", "asked_at": "2026-11-27 11:16:00,001",
                            "to": "controller", "at": "2026-11-27 11:16:00,011"}]
    assert [m["from"] for m in found.gave_nothing] == ["controller"]
    assert [m["asked_at"] for m in found.unfinished] == ["2026-11-27 11:18:00,001",
                                                        "2026-11-27 11:19:00,001"]
    assert found.role_checks == 1
    assert found.tracebacks == ["KeyError: 'role'"]


# --- datagram loss -------------------------------------------------------------------------------
NFT_JSON = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"chain": {"family": "inet", "table": "lab", "name": "in", "hook": "input"}},
    {"rule": {"expr": [{"match": {"right": 50555}}, {"counter": {"packets": 1500, "bytes": 9}}]}},
    {"rule": {"expr": [{"match": {"right": 50555}}, {"match": {"left": {"numgen": {}}}},
                       {"counter": {"packets": 74, "bytes": 3}}, {"drop": None}]}}]}


def test_nft_counters_and_ruleset():
    assert loss.parse_counters(json.dumps(NFT_JSON)) == (1500, 74)
    assert loss.parse_counters("{}") is None and loss.parse_counters("not json") is None
    text = loss.ruleset(5)
    assert "hook input" in text and "udp dport 50555 numgen random mod 100 < 5 counter drop" in text
    with pytest.raises(ValueError):
        loss.ruleset(101)


# --- the state reader ------------------------------------------------------------------------------
def put(path: Path, data) -> None:
    """Atomically, as the daemons write (a plain write_text can be read half-written)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def test_the_reader_counts_invalid_reads_and_role_changes(tmp_path):
    for h in (1, 2):
        (tmp_path / f"h{h}").mkdir()
    put(tmp_path / "h1" / "identity.json", {"role": "runner"})
    put(tmp_path / "h1" / "peers.json", {"peers": [
        {"hostname": "build2", "role": "builder", "status": "alive"}]})
    watch = StateWatch({1: tmp_path / "h1", 2: tmp_path / "h2"}, interval=0.005, max_seconds=10)
    watch.start()
    try:
        deadline = time.monotonic() + 5
        while watch.role(1) != "runner" and time.monotonic() < deadline:
            time.sleep(0.01)
        put(tmp_path / "h1" / "identity.json",
            {"role": "controller", "previous_role": "runner", "changed_at": "2026-11-27T11:16:00Z"})
        while not watch.transitions and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "h2" / "peers.json").write_text('{"peers": [')  # a torn write
        while watch.invalid == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watch.stop()
    assert not watch.is_alive()
    [change] = watch.transitions
    assert (change["host"], change["from"], change["to"], change["previous_role"]) == \
        (1, "runner", "controller", "runner")
    summary = watch.summary()
    assert summary["invalid"] >= 1 and summary["bad_samples"][0]["file"] == "peers.json"
    assert summary["missing"] >= 1  # h2 has no identity: not an invalid read
    assert watch.peers_roles(1) == {"build2": "builder"}


# --- deaths declared while the peer was up ---------------------------------------------------------
def test_false_deaths_are_those_outside_a_hosts_down_windows():
    text = ("2026-11-27 11:47:38,088 INFO Peer build14 (10.76.0.34) is dead: no heartbeat for 3.0s\n"
            "2026-11-27 11:47:39,104 INFO Peer build14 (10.76.0.34) is in the hive as 'controller'\n"
            "2026-11-27 11:48:03,181 INFO Peer build14 (10.76.0.34) is dead: no heartbeat for 3.0s\n"
            "2026-11-27 11:48:04,000 INFO Peer build7 (10.76.0.27) is dead: no heartbeat for 3.0s\n")
    deaths = chaos.deaths_from_log(text)
    assert [name for _, name in deaths] == ["build14", "build14", "build7"]
    t0 = chaos.log_epoch("2026-11-27 11:48:00,000")
    assert deaths[1][0] - t0 == pytest.approx(3.181)
    # build14 killed at 11:48:00 and never back; build7 restarted gracefully at 11:47:58
    events = [(t0, Event(0, "kill", 14)), (t0 - 2, Event(0, "restart", 7))]
    windows = chaos.down_windows(events, {14: "build14", 7: "build7"}, 1.0, t0 + 10)
    assert chaos.false_deaths(deaths, windows) == [deaths[0]]
    # back at 11:48:01: a death declared up to 3 heartbeats (+1 s) later is still rightful
    events.append((t0 + 1, Event(0, "start", 14)))
    windows = chaos.down_windows(events, {14: "build14", 7: "build7"}, 1.0, t0 + 10)
    assert chaos.false_deaths(deaths, windows) == [deaths[0]]


def test_plan_agreement_counts_the_nodes_that_named_the_mover():
    needs = {"build1": chaos.need_lines(LOG), "build2": chaos.need_lines(LOG),
             "build3": chaos.need_lines(LOG.replace("build6 moves", "build5 moves"))}
    assert needs["build1"] == [(chaos.log_epoch("2026-11-27 11:16:00,000"), "controller", "build6")]
    [move] = chaos.moves_from_log(LOG).moves
    [agreed] = chaos.plan_agreement([{**move, "host": "build6"}], needs, window=8)
    assert agreed["nodes_naming_it"] == 2  # build3's view named another mover
    [late] = chaos.plan_agreement([{**move, "host": "build6"}], needs, window=0.0001)
    assert late["nodes_naming_it"] == 0
