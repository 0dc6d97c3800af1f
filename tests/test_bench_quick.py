"""scripts/hive-bench --quick runs end to end, so the benchmark cannot rot.

It builds real labs (network namespaces) with both of our daemons and a Serf agent on every
host, so it needs root, as CI has.  Timing targets are not asserted here (CI machines are noisy);
the JSON's structure, sane values, no crash under the flood, and a clean teardown are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "hive-bench"
# Our own lab name and /24 per test run, so a run by hand (lab benchq, 10.79.1) or a full run
# (bench, 10.79.0) at the same time is left alone.
LAB = f"bq{os.getpid() % 100000}"
SUBNET = f"10.79.{10 + os.getpid() % 200}"


def _stats_ok(s: dict, low: float, high: float, need: int = 1) -> None:
    assert set(s) >= {"n", "timeouts", "median", "min", "max", "samples"}, s
    assert s["n"] >= need, s
    assert len(s["samples"]) == s["n"]
    assert low <= s["min"] <= s["median"] <= s["max"] <= high, s


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("hive-bench builds network namespaces: run the tests as root, as CI does")
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out),
                           "--lab", LAB, "--subnet", SUBNET],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    data = json.loads((out / "bench.json").read_text())
    return out, data, proc


def test_meta(bench):
    _, data, _ = bench
    meta = data["meta"]
    assert meta["complete"] is True and meta["error"] is None
    assert meta["mode"] == "quick"
    assert 0 < meta["duration_s"] < 480
    assert meta["phases"] == ["sizes", "failure", "attack", "mass", "loss", "scale"]
    assert meta["machine"]["cores"] >= 1
    assert "serf" in meta and meta["serf"] != "unknown"
    assert meta["notes"] == [], meta["notes"]  # nothing skipped for lack of time


def test_founder_and_joins(bench):
    _, data, _ = bench
    r = data["results"]
    _stats_ok(r["founder"]["ours_s"], 0.01, 15, need=data["meta"]["settings"]["founder_samples"])
    assert set(r["founder"]["ours_roles"]) == {"founder"}
    _stats_ok(r["founder"]["serf_ready_s"], 0.0, 10)
    sizes = data["meta"]["settings"]["sizes"]
    samples = data["meta"]["settings"]["samples"]
    assert [j["size"] for j in r["join"]] == sizes
    for j in r["join"]:
        _stats_ok(j["ours_join_s"], 0.01, 30, need=samples)
        _stats_ok(j["ours_converge_s"], 0.01, 30)
        _stats_ok(j["ours_leave_s"], 0.0, 15)
        _stats_ok(j["serf_join_s"], 0.0, 30)
        _stats_ok(j["serf_converge_s"], 0.0, 30)
        _stats_ok(j["serf_leave_s"], 0.0, 15)
        assert all(role and role != "founder" for role in j["ours_roles"]), j["ours_roles"]
        # a member lists the newcomer only once it has announced its role
        assert j["ours_converge_s"]["median"] >= j["ours_join_s"]["min"]


def test_failure_detection(bench):
    _, data, _ = bench
    fast = data["results"]["failure"]["fast"]
    assert fast["interval_s"] == 1.0
    _stats_ok(fast["ours_kill_s"], 0.0, 3 * fast["interval_s"] + 20)
    _stats_ok(fast["ours_stop_s"], 0.0, 20)
    _stats_ok(fast["serf_kill_s"], 0.0, 60)
    _stats_ok(fast["serf_leave_s"], 0.0, 20)


def test_simultaneous_joins(bench):
    _, data, _ = bench
    s = data["results"]["simultaneous"]
    settings = data["meta"]["settings"]
    assert s["joiners"] == settings["simul_k"] and s["base"] == settings["simul_base"]
    assert sum(s["sequential_roles"].values()) == s["joiners"]
    for round_ in s["ours"] + [s["back_to_back"]]:
        assert sum(round_["roles"].values()) == s["joiners"], round_
    assert isinstance(s["roles_match"], bool)
    # Frozen rounds: the agents stopped once up, thawed together; the figure adds one
    # agent's start alone (spawn -> about to say HELLO).  Then one round back to back, timed from the first start.
    assert 0.01 <= s["one_start_s"] <= 5, s["one_start_s"]
    _stats_ok(s["ours_after_thaw_s"], 0.01, 60)
    _stats_ok(s["ours_all_identity_s"], 0.01, 65)
    for round_ in s["ours"]:
        assert 0 < round_["started_s"] <= 60, round_
        assert round_["with_start_s"] == round(round_["all_identity_s"] + s["one_start_s"], 3)
    assert 0 < s["back_to_back"]["all_identity_s"] <= 60, s["back_to_back"]
    _stats_ok(s["serf_all_see_all_s"], 0.0, 60)
    # the expectation computed from the default policy's table, as one-after-another joins give
    assert sum(s["table_roles"].values()) == s["joiners"]
    assert isinstance(s["roles_match_table"], bool)
    assert 0 <= s["back_to_back"]["last_agent_up_s"] <= 60, s["back_to_back"]


def test_false_deaths_under_loss(bench):
    _, data, _ = bench
    lo = data["results"]["loss"]
    settings = data["meta"]["settings"]
    assert lo["hosts"] == settings["loss_hosts"] and lo["loss_percent"] == settings["loss_percent"]
    assert lo["heartbeat_s"] == 10  # the default settings
    assert lo["polls"] >= 10 and lo["seconds"] >= settings["loss_seconds"]
    assert lo["datagrams_seen"] > 0 and 0 <= lo["datagrams_dropped"] <= lo["datagrams_seen"]
    for key in ("ours_false_deaths", "ours_dead_log_lines", "serf_false_deaths"):
        assert isinstance(lo[key], int) and lo[key] >= 0
    assert lo["crashed"] == []


def test_big_hive(bench):
    _, data, _ = bench
    sc = data["results"]["scale"]
    n = data["meta"]["settings"]["scale_hosts"]
    assert sc["hosts"] == n
    assert len(sc["form"]["join_s_by_size"]) == n
    assert sc["peers_listed"]["agents"] == n
    assert sc["peers_listed"]["all_list_the_others"] is True  # every peers.json lists the others
    assert sum(sc["roles"].values()) == n and sum(sc["sequential_roles"].values()) == n
    assert sc["roles_match"] is True
    _stats_ok(sc["join"]["ours_join_s"], 0.01, 30)
    _stats_ok(sc["join"]["serf_converge_s"], 0.0, 30)
    _stats_ok(sc["failure"]["ours_kill_s"], 0.0, 3 * sc["heartbeat_s"] + 20)
    _stats_ok(sc["failure"]["serf_kill_s"], 0.0, 60)
    for kind in ("agent", "advisor", "serf"):
        _stats_ok(sc["footprint"][kind]["rss_mb"], 1, 500)
    # over more than one heartbeat, every node hears the others
    assert sc["wire"]["window_s"] > sc["heartbeat_s"]
    _stats_ok(sc["wire"]["hive_rx_Bps"], 1, 1e6)
    assert sc["crashed"] == []
    assert sc["teardown_s"] < 120 and sc["lab_add_s"] < 120


def test_attack(bench):
    _, data, _ = bench
    a = data["results"]["attack"]
    assert a["crashed"] == []  # no daemon died under the flood
    assert a["captured_datagrams"] > 0  # replays were real signed datagrams
    _stats_ok(a["unflooded_join_s"], 0.01, 30)
    assert [v["name"] for v in a["variants"]] == ["broadcast", "unicast"]
    for v in a["variants"]:
        flood = v["floods"][0]
        assert "error" not in flood, flood
        assert flood["sent"] <= a["rate_per_s"] * a["seconds"]  # the flood is bounded
        assert flood["seconds"] <= a["seconds"] + 1
        assert flood["sent"] > 0
        _stats_ok(v["flooded_join_s"], 0.01, 60)
        assert v["flooded_join_s"]["timeouts"] == 0  # every join under the flood completed
        assert v["ratio_median"] > 0
    cpu = a["variants"][0]["base_daemon_cpu_percent"][0]
    for kind in ("agent", "advisor"):
        assert 0 <= cpu[kind]["median"] <= 200
    assert a["rss_growth_mb"]["n"] == 2 * a["base"]
    assert a["rss_growth_mb"]["max"] < 5  # flat: nothing a flood sends is kept


def test_footprint_and_wire(bench):
    _, data, _ = bench
    fp = data["results"]["footprint"]
    for kind in ("agent", "advisor", "serf"):
        _stats_ok(fp[kind]["rss_mb"], 1, 500)
        _stats_ok(fp[kind]["cpu_s"], 0, fp["window_s"] * 2)
    w = data["results"]["wire"]
    assert w["hosts"] == max(data["meta"]["settings"]["sizes"])
    _stats_ok(w["hive_tx_Bps"], 1, 1e6)  # every node heartbeats
    _stats_ok(w["hive_rx_Bps"], 1, 1e6)
    _stats_ok(w["serf_tx_Bps"], 1, 1e7)


def test_outputs(bench):
    out, data, proc = bench
    assert len(data["table"]) >= 10
    assert all(set(row) == {"measurement", "hosts", "ours", "serf", "target", "met"}
               for row in data["table"])
    assert "Convergence" in proc.stdout and "bench.json" in proc.stdout
    assert (out / "bench.md").read_text().startswith("| Measurement")
    png = out / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000


def test_lab_torn_down(bench):
    leftovers = [n for n in os.listdir("/run/netns") if n.startswith(f"{LAB}-h")] \
        if os.path.isdir("/run/netns") else []
    assert leftovers == []
    assert not os.path.exists(f"/run/hive-lab/{LAB}")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert f"{LAB}br" not in links and f"{LAB}v1" not in links
