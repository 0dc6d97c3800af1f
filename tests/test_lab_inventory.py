"""`hive inventory` read by the real Ansible (Debian's ansible-core: ansible-inventory) through the
hive-inventory script both install paths install (packaging/layout.sh renders it), against a
real hive of network namespaces: groups, hosts and variables equal the controller's peers.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from build_agent import timing
from build_agent.inventory import group_names
from lab import REPO


def ansible_inventory() -> str:
    path = shutil.which("ansible-inventory")
    if path is None:
        pytest.fail("ansible-inventory is missing: apt-get install ansible-core (.ci/run does)")
    return path


@pytest.fixture
def inventory_script(tmp_path) -> Path:
    """hive-inventory as install.sh renders it, calling a `hive` wrapper of this checkout."""
    def render(function: str, *args: str) -> str:
        return subprocess.run(["bash", "-c", f'source packaging/layout.sh && {function} "$@"',
                               function, *args], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=30).stdout
    cli = tmp_path / "hive"
    cli.write_text(render("hive_render_cli", str(REPO), sys.executable, "the test"))
    script = tmp_path / "hive-inventory"
    script.write_text(render("hive_render_inventory", str(cli), "the test"))
    for path in (cli, script):
        path.chmod(0o755)
    return script


def run_ansible(script: Path, config: Path, tmp_path: Path, *args: str):
    """ansible-inventory -i SCRIPT ARGS, reading the hive of CONFIG; (parsed stdout, stderr)."""
    env = dict(os.environ, HIVE_CONFIG=str(config), ANSIBLE_HOME=str(tmp_path / "ansible-home"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_INVENTORY_UNPARSED_FAILED="1")
    result = subprocess.run([ansible_inventory(), "-i", str(script), *args], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout), result.stderr


def groups_of(listed: dict) -> dict[str, list[str]]:
    return {name: sorted(body["hosts"]) for name, body in listed.items()
            if name not in ("_meta", "all") and body.get("hosts")}


def test_ansible_inventory_lists_the_hive_from_the_controllers_peers_json(make_lab,
                                                                          inventory_script,
                                                                          tmp_path):
    lab = make_lab(heartbeat=1)
    lab.up(5)          # founder, controller, builder, builder, runner
    controller = 2
    config = lab.host_dir(controller) / "hive.toml"
    lab.wait_for(lambda: len(lab.peer_names(controller)) == 4, 10, "build2 to list 4 peers")

    started = time.monotonic()
    listed, stderr = run_ansible(inventory_script, config, tmp_path, "--list")
    took = time.monotonic() - started
    assert "WARNING" not in stderr, stderr
    peers = lab.peers(controller)
    members = [{**peers["self"], "ip": peers["self"]["primary_ip"]}] + peers["peers"]
    expected: dict[str, list[str]] = {}
    for m in members:
        expected.setdefault(m["role"], []).append(m["hostname"])
    assert groups_of(listed) == {role: sorted(hosts) for role, hosts in expected.items()}
    assert groups_of(listed) == {"founder": ["build1"], "controller": ["build2"],
                                 "builder": ["build3", "build4"], "runner": ["build5"]}
    hostvars = listed["_meta"]["hostvars"]
    assert sorted(hostvars) == sorted(m["hostname"] for m in members)
    for m in members:
        v = hostvars[m["hostname"]]
        assert v["ansible_host"] == m["ip"] == lab.ip(int(m["hostname"][5:]))
        assert (v["hive_node_id"], v["hive_role"]) == (m["node_id"], m["role"])
        assert v["hive_capabilities"] == m["capabilities"]
        for key, value in m["capabilities"].items():   # each capability as a host variable
            assert v[key] == value, key
        assert v["hive_self"] == (m["hostname"] == "build2")
        assert v["hive_status"] in ("alive", "active")

    one, stderr = run_ansible(inventory_script, config, tmp_path, "--host", "build3")
    assert "WARNING" not in stderr, stderr
    assert one["ansible_host"] == lab.ip(3) and one["hive_role"] == "builder"
    assert one["cpu_cores"] == hostvars["build3"]["cpu_cores"]
    print(f"\nansible-inventory --list of a 5-host hive: {took:.2f} s")

    # The agent of the controller stops: its peers.json is no longer refreshed.  After the
    # agent's own backstop for members that answer probes (6 of the intervals they state: 3
    # heartbeats of 1 s each) the members it lists are in hive_dead, and no longer in their
    # role's group.
    lab.kill(controller)
    time.sleep(timing.DEAD_AFTER_INTERVALS_PROBED * timing.STATUS_INTERVALS_PROBED * 1 + 1.5)
    stale, stderr = run_ansible(inventory_script, config, tmp_path, "--list")
    assert groups_of(stale) == {"controller": ["build2"],
                                "hive_dead": ["build1", "build3", "build4", "build5"]}
    assert stale["_meta"]["hostvars"]["build3"]["hive_status"] == "dead"


def test_role_names_ansible_would_warn_about_become_clean_group_names(inventory_script,
                                                                      tmp_path):
    """Roles may hold '-' and '.' and start with a digit ([a-z0-9][a-z0-9._-]*), which Ansible
    warns about in group names: the groups hive inventory makes draw no warning, and the
    same names used as they are do (so the check can see one)."""
    roles = ["ml-trainer", "gpu.v2", "3d-render", "all", "builder"]
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "hive.toml"
    config.write_text(f'state_dir = "{state}"\n')
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    peers = [{"hostname": f"n{i}", "ip": f"10.99.0.{10 + i}", "role": role, "node_id": f"id{i}",
              "status": "alive", "last_seen": now, "interval": 10.0,
              "capabilities": {"cpu_cores": i + 1}} for i, role in enumerate(roles)]
    (state / "peers.json").write_text(json.dumps({
        "self": {"hostname": "ctl", "primary_ip": "10.99.0.2", "role": "controller",
                 "node_id": "idc", "status": "active"},
        "peers": peers, "updated_at": now}))
    listed, stderr = run_ansible(inventory_script, config, tmp_path, "--list")
    assert "WARNING" not in stderr and "Invalid characters" not in stderr, stderr
    mapped = group_names(roles + ["controller"])
    assert groups_of(listed) == {mapped[p["role"]]: [p["hostname"]] for p in peers} | \
        {"controller": ["ctl"]}
    assert set(groups_of(listed)) == {"ml_trainer", "gpu_v2", "role_3d_render", "role_all",
                                      "builder", "controller"}

    # The raw role names as groups: Ansible warns (what the mapping avoids).
    raw = tmp_path / "raw-inventory"
    raw.write_text("#!/bin/sh\necho '" + json.dumps(
        {"ml-trainer": {"hosts": ["n0"]}, "gpu.v2": {"hosts": ["n1"]},
         "_meta": {"hostvars": {}}}) + "'\n")
    raw.chmod(0o755)
    _listed, raw_stderr = run_ansible(raw, config, tmp_path, "--list")
    assert "Invalid characters" in raw_stderr, raw_stderr
