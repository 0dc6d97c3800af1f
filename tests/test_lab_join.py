"""Integration: real hives of network namespaces, both daemons on every host (scripts/hive-lab)."""

from __future__ import annotations

import collections
import json

import pytest

from lab import log_lines, sequential_counts, sequential_role

IDENTITY_KEYS = {"role", "packages", "config", "assigned_by", "assigned_at"}


def test_five_nodes_one_after_another_get_the_seed_roles(make_lab):
    lab = make_lab()
    lab.up(5)
    assert lab.roles() == {1: "founder", 2: "controller", 3: "builder", 4: "builder", 5: "runner"}

    founder = log_lines(lab.log(1))
    assert "No peers found; this may be the first node (founder role)." in founder
    assert "Identity: founder" in founder
    assert lab.identity(1)["assigned_by"] == ["self"]

    third = log_lines(lab.log(3))
    expected = ["Discovered 2 peer(s)", "Asking peers for role assignment...",
                " <- build1: become 'builder' (cluster needs builders)",
                " <- build2: become 'builder' (cluster needs builders)",
                "Consensus: I am a 'builder'",
                "Packages: openjdk-17-jdk, maven, git, build-essential"]
    positions = [third.index(line) if line in third else None for line in expected[:2]]
    assert None not in positions, third
    assert sorted(third[positions[1] + 1:positions[1] + 3]) == expected[2:4]
    assert third[positions[1] + 3:positions[1] + 5] == expected[4:]

    identity = lab.identity(3)
    assert IDENTITY_KEYS <= identity.keys()
    assert identity["assigned_by"] == ["build1", "build2"]
    assert identity["packages"] == ["openjdk-17-jdk", "maven", "git", "build-essential"]
    assert identity["assigned_at"].endswith("Z") and "T" in identity["assigned_at"]
    assert identity["provisioned"] is False and "install_packages = false" in identity["provision_error"]

    assert lab.identity(5)["assigned_by"] == ["build1", "build2", "build3", "build4"]
    assert lab.identity(5)["packages"] == ["python3-pytest", "nodejs", "npm"]

    # Every host lists every other host in peers.json, with its role and address.
    lab.wait_for(lambda: all(len(lab.peer_names(i)) == 4 for i in range(1, 6)), 10,
                 "every peers.json to list 4 peers")
    peers = lab.peers(3)
    assert peers["self"] == {**peers["self"], "hostname": "build3", "primary_ip": lab.ip(3),
                             "role": "builder"}
    listed = {p["hostname"]: p for p in peers["peers"]}
    assert listed["build1"]["role"] == "founder" and listed["build1"]["ip"] == lab.ip(1)
    assert listed["build5"]["role"] == "runner"
    assert {"node_id", "status", "last_seen", "capabilities"} <= listed["build2"].keys()
    assert listed["build2"]["capabilities"]["cpu_cores"] >= 1


def test_cold_start_of_five_gives_exactly_one_founder(make_lab):
    lab = make_lab()
    lab.up(5, together=True)
    roles = lab.roles()
    assert collections.Counter(roles.values()) == sequential_counts(5), roles
    founders = [i for i, role in roles.items() if role == "founder"]
    assert len(founders) == 1
    others = [i for i in roles if i not in founders]
    for i in others:  # everyone else joined the founder rather than founding
        assert "No peers found" not in lab.log(i)


@pytest.mark.parametrize("existing,joiners", [(1, 2), (2, 5), (1, 20)])
def test_simultaneous_joins_get_the_sequential_roles(make_lab, existing, joiners):
    lab = make_lab()
    lab.up(existing)
    new = lab.add(joiners)
    lab.start(*new)
    lab.wait(*new, timeout=60)
    roles = lab.roles()
    counts = collections.Counter(roles.values())
    assert counts == sequential_counts(existing + joiners), roles
    if (existing, joiners) == (1, 2):
        assert sorted(roles[i] for i in new) == ["builder", "controller"]
    # Each joiner's advisors all agreed: no split votes.
    for i in new:
        assert len(lab.identity(i)["votes"]) == 1, lab.identity(i)


def test_identity_survives_an_agent_restart(make_lab):
    lab = make_lab()
    lab.up(2)
    before = lab.identity(2)
    lab.restart(2)
    lab.wait_for(lambda: "Already identified as: controller" in lab.log(2), 10,
                 "the restarted agent to keep its identity")
    assert lab.identity(2)["assigned_at"] == before["assigned_at"]
    assert log_lines(lab.log(2)).count("Asking peers for role assignment...") == 1
    lab.wait_for(lambda: "build2" in lab.peer_names(1), 10, "build1 to list build2 again")


def test_hive_reset_asks_the_hive_again(make_lab):
    lab = make_lab()
    lab.up(3)
    assert lab.role(3) == "builder"
    result = lab.hive(3, "reset", "--no-restart")
    assert "Identity removed" in result.stdout
    assert lab.identity(3) is None
    lab.restart(3)
    lab.wait(3)
    lines = log_lines(lab.log(3))
    assert lines.count("Asking peers for role assignment...") == 2
    # With build3 gone from the hive, it is again the third node: a builder.
    assert lab.role(3) == "builder"


def test_a_stranger_with_another_secret_joins_nobody(make_lab, tmp_path):
    lab = make_lab()
    lab.up(2)
    stranger_secret = tmp_path / "other_secret"
    stranger_secret.write_text("a-completely-different-hive-secret\n")
    stranger_secret.chmod(0o600)
    i = lab.join(secret_file=str(stranger_secret))
    lab.wait(i)
    assert lab.role(i) == "founder"  # it heard nobody, so it founded its own hive
    assert "No peers found" in lab.log(i)
    lab.wait_for(lambda: lab.peers(i) is not None, 5, "the stranger's peers.json")
    # Give heartbeats a chance to (wrongly) cross, then check both sides ignore each other.
    lab.restart(1)
    lab.wait_for(lambda: "Already identified" in lab.log(1), 10, "build1 to restart")
    lab.wait_for(lambda: "build2" in lab.peer_names(1), 10, "build1 to see build2")
    assert f"build{i}" not in lab.peer_names(1) | lab.peer_names(2)
    assert lab.peer_names(i) == set()
    assert lab.role(1) == "founder" and lab.role(2) == "controller"


def test_hive_cli_on_a_lab_host(make_lab):
    lab = make_lab()
    lab.up(2)
    status = json.loads(lab.hive(2, "status", "--json").stdout)
    assert status["role"] == "controller" and status["assigned_by"] == ["build1"]
    assert status["hostname"] == "build2" and status["ip"] == lab.ip(2)
    waited = json.loads(lab.hive(2, "status", "--wait", "--timeout", "10", "--json").stdout)
    assert (waited["agent"]["state"], waited["agent"]["identified"]) == ("settled", True)
    lab.wait_for(lambda: lab.peer_names(2) == {"build1"}, 5, "build2 to list build1")
    peers = json.loads(lab.hive(2, "peers", "--json").stdout)
    assert [(p["hostname"], p["role"]) for p in peers] == [("build1", "founder")]
    table = lab.hive(2, "peers").stdout.splitlines()
    assert table[0].split() == ["HOSTNAME", "IP", "ROLE", "STATUS", "LAST", "SEEN"]
    assert table[1].split()[:4] == ["build1", lab.ip(1), "founder", "alive"]
    assert json.loads(lab.hive(2, "identity").stdout)["role"] == "controller"
