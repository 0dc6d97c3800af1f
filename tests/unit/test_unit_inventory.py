"""`hive inventory`: the hive as an Ansible dynamic inventory, from peers.json and identity.json
(build_agent/inventory.py).  The real ansible-inventory reads it in tests/test_lab_inventory.py."""

from __future__ import annotations

import json

from build_agent import cli, inventory
from build_agent.protocol import format_ts_seconds, parse_ts

NOW = parse_ts("2026-11-27T12:00:00Z")


def member(hostname, ip, role, seen_ago=2.0, interval=10.0, **extra):
    return {"hostname": hostname, "ip": ip, "role": role, "status": "alive",
            "node_id": f"id-{hostname}-0123456789", "interval": interval,
            "last_seen": format_ts_seconds(NOW - seen_ago), "health": "ok", "state": "active",
            "joined_at": "2026-11-27T11:00:00.000000Z", "role_since": "2026-11-27T11:00:00.000000Z",
            "capabilities": extra.pop("capabilities", {"cpu_cores": 4, "ram_gb": 7.7,
                                                       "has_gpu": False, "arch": "x86_64",
                                                       "os": "Ubuntu 24.04.1 LTS",
                                                       "docker_installed": False}),
            **extra}


def peers_json(*peers, role="controller"):
    return {"self": {"hostname": "build2", "primary_ip": "10.0.0.22", "role": role,
                     "node_id": "id-build2", "status": "active",
                     "capabilities": {"cpu_cores": 2}},
            "peers": list(peers), "updated_at": format_ts_seconds(NOW - 1)}


def test_one_group_per_role_with_every_member_and_its_address_and_capabilities():
    peers = peers_json(member("build1", "10.0.0.21", "founder"),
                       member("build3", "10.0.0.23", "builder"),
                       member("build4", "10.0.0.24", "builder"),
                       member("build5", "10.0.0.25", "runner"))
    hive, problems = inventory.build(peers, {"role": "controller"}, NOW)
    assert problems == []
    assert {g: v["hosts"] for g, v in hive.items() if g != "_meta"} == {
        "founder": ["build1"], "controller": ["build2"], "builder": ["build3", "build4"],
        "runner": ["build5"]}
    vars3 = hive["_meta"]["hostvars"]["build3"]
    assert vars3["ansible_host"] == "10.0.0.23"
    assert (vars3["cpu_cores"], vars3["ram_gb"], vars3["has_gpu"], vars3["arch"], vars3["os"],
            vars3["docker_installed"]) == (4, 7.7, False, "x86_64", "Ubuntu 24.04.1 LTS", False)
    assert vars3["hive_capabilities"]["cpu_cores"] == 4
    assert (vars3["hive_role"], vars3["hive_node_id"], vars3["hive_status"], vars3["hive_self"],
            vars3["hive_group"]) == ("builder", "id-build3-0123456789", "alive", False, "builder")
    me = hive["_meta"]["hostvars"]["build2"]
    assert (me["ansible_host"], me["hive_role"], me["hive_self"], me["hive_status"]) == \
        ("10.0.0.22", "controller", True, "active")
    assert inventory.host(hive, "build5")["ansible_host"] == "10.0.0.25"
    assert inventory.host(hive, "nobody") == {}


def test_role_names_become_group_names_ansible_accepts_without_clashes():
    groups = inventory.group_names(["ml-trainer", "gpu.v2", "3d", "all", "ungrouped",
                                    "hive_dead", "a-b", "a.b", "a_b", "builder"])
    assert groups == {"ml-trainer": "ml_trainer", "gpu.v2": "gpu_v2", "3d": "role_3d",
                      "all": "role_all", "ungrouped": "role_ungrouped",
                      "hive_dead": "role_hive_dead", "a-b": "a_b", "a.b": "a_b_2", "a_b": "a_b_3",
                      "builder": "builder"}
    for name in groups.values():
        assert name.isidentifier() and not name[0].isdigit()


def test_a_member_the_agent_would_have_dropped_is_in_hive_dead_only():
    """peers.json written long ago (the agent stopped): members not heard for 3 heartbeats are
    not put in their role's group."""
    peers = peers_json(member("build3", "10.0.0.23", "builder", seen_ago=35),
                       member("build4", "10.0.0.24", "builder", seen_ago=5),
                       member("build5", "10.0.0.25", "runner", seen_ago=5, interval=1.0))
    hive, problems = inventory.build(peers, None, NOW)
    assert hive["builder"]["hosts"] == ["build4"]
    assert hive["hive_dead"]["hosts"] == ["build3", "build5"]
    assert "runner" not in hive
    assert hive["_meta"]["hostvars"]["build3"]["hive_status"] == "dead"
    assert len(problems) == 1 and "hive_dead" in problems[0] and "build-agent" in problems[0]


def test_a_probing_member_is_dead_only_after_the_agents_longer_backstop():
    """A member that answers probes is kept by the agent up to 6 heartbeat intervals (its lost
    heartbeats do not matter while it answers): the inventory judges it the same way."""
    peers = peers_json(member("build3", "10.0.0.23", "builder", seen_ago=45, probe=1.0),
                       member("build4", "10.0.0.24", "builder", seen_ago=65, probe=1.0),
                       member("build5", "10.0.0.25", "builder", seen_ago=45))
    hive, _ = inventory.build(peers, None, NOW)
    assert hive["builder"]["hosts"] == ["build3"]
    assert hive["hive_dead"]["hosts"] == ["build4", "build5"]


def test_a_members_capabilities_cannot_steer_ansible():
    evil = {"cpu_cores": 1, "ansible_connection": "local", "ansible_host": "127.0.0.1",
            "ansible_become_pass": "x", "inventory_hostname": "build2", "hostvars": {},
            "hive_role": "controller", "environment": {"A": "b"}, "Bad-Name": 1, "for": 2,
            "gpu_model": "A100"}
    hive, _ = inventory.build(peers_json(member("build6", "10.0.0.26", "runner",
                                                capabilities=evil)), None, NOW)
    v = hive["_meta"]["hostvars"]["build6"]
    assert v["ansible_host"] == "10.0.0.26" and v["hive_role"] == "runner"
    assert "ansible_connection" not in v and "ansible_become_pass" not in v
    assert "inventory_hostname" not in v and "hostvars" not in v and "environment" not in v
    assert "Bad-Name" not in v and "for" not in v
    assert (v["cpu_cores"], v["gpu_model"]) == (1, "A100")
    assert v["hive_capabilities"] == evil   # all of them, as data


def test_a_joining_node_and_bad_entries():
    peers = {"self": {"hostname": "build9", "primary_ip": "10.0.0.29", "role": None,
                      "node_id": "id-build9", "status": "joining"},
             "peers": [member("build1", "10.0.0.21", "founder"),
                       member("build7", "not-an-ip", "runner"), "junk",
                       member("build1", "10.0.0.31", "runner")],   # a clone with the same name
             "updated_at": format_ts_seconds(NOW)}
    hive, problems = inventory.build(peers, None, NOW)
    assert hive["ungrouped"]["hosts"] == ["build9"]
    assert hive["founder"]["hosts"] == ["build1"]
    assert hive["runner"]["hosts"] == ["build1_id-build"]
    assert hive["_meta"]["hostvars"]["build1_id-build"]["ansible_host"] == "10.0.0.31"
    assert any("build7" in p for p in problems)
    empty, problems = inventory.build(None, None, NOW)
    assert empty == {"_meta": {"hostvars": {}}}
    assert problems and "no peers.json" in problems[0]


def test_hive_inventory_command_reads_the_configured_state_dir(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "hive.toml"
    config.write_text(f'state_dir = "{state}"\n')
    peers = peers_json(member("build3", "10.0.0.23", "builder", seen_ago=0))
    peers["updated_at"] = format_ts_seconds(NOW)
    (state / "peers.json").write_text(json.dumps(peers))
    (state / "identity.json").write_text(json.dumps({"role": "controller"}))
    args = cli.build_parser().parse_args(["inventory", "--config", str(config), "--list"])
    loaded = cli.load_config(str(config))
    assert cli.cmd_inventory(loaded, args, now=lambda: NOW) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["builder"]["hosts"] == ["build3"]
    args = cli.build_parser().parse_args(["--config", str(config), "inventory", "--host",
                                          "build3"])
    assert cli.cmd_inventory(loaded, args, now=lambda: NOW) == 0
    assert json.loads(capsys.readouterr().out) == listed["_meta"]["hostvars"]["build3"]
