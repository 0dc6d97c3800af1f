"""The seed's "First Three Nodes Join the Hive", then life with the hive, in booted systemd hosts.

One lab per Debian release; the tests of this module share its three nodes and run in order:
walkthrough (install.sh on build1, build2, build3 in turn), provisioning from the lab's apt
repository, hardening scores, restarts, `hive reset`, a second install, bootstrap.sh.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

import e2e_harness as hx
from conftest import measure

SECRET_RE = re.compile(r"^Generated new shared secret: ([0-9a-f]{64})$", re.M)
SEED_WAY = """\
mkdir -p /etc/build
echo '{secret}' | tee /etc/build/shared_secret >/dev/null
chmod 0600 /etc/build/shared_secret
"""


def lines_in_order(text: str, expected: list[str]) -> None:
    """Each expected line appears in text, in this order (other lines may come between)."""
    lines = text.splitlines()
    position = 0
    for want in expected:
        for index in range(position, len(lines)):
            if lines[index] == want:
                position = index + 1
                break
        else:
            raise AssertionError(f"line {want!r} missing (or out of order) in:\n{text}")


def install(host: hx.Container, *args: str, timeout: float = 180):
    started = time.monotonic()
    result = host.run("bash", "/src/install.sh", *args, check=False, timeout=timeout)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, (f"install.sh failed on {host.name} ({result.returncode}):\n"
                                    f"{result.stdout}\n{result.stderr}\n{host.diagnostics()}")
    return result.stdout, elapsed


def jq(host: hx.Container, expression: str, path: str = "/var/lib/build/identity.json") -> str:
    return host.run("jq", "-r", expression, path).stdout.strip()


def identity(host: hx.Container) -> dict:
    return json.loads(host.read("/var/lib/build/identity.json"))


@pytest.fixture(scope="module")
def hive(lab):
    """build1..build3 installed one after another, the seed's way; transcripts kept."""
    nodes = lab.hosts(("build1", 11), ("build2", 12), ("build3", 13))
    transcripts, timings = {}, {}
    try:
        out, timings["build1"] = install(nodes[0])
        transcripts["build1"] = out
        match = SECRET_RE.search(out)
        assert match, f"no generated secret in build1's transcript:\n{out}"
        secret = match.group(1)
        for host in nodes[1:]:
            host.bash(SEED_WAY.format(secret=secret))
            out, timings[host.name] = install(host)
            transcripts[host.name] = out
    except Exception:
        print(lab.diagnostics())
        raise
    for name, seconds in timings.items():
        measure(lab.release, f"install.sh to 'Install complete.' on {name} (s)", round(seconds, 2))
    return {"nodes": {h.name: h for h in nodes}, "transcripts": transcripts, "secret": secret}


def test_walkthrough_transcripts(hive, lab, diagnose):
    t = hive["transcripts"]
    assert t["build1"].count(hive["secret"]) == 1, "the secret is printed once, on generation"
    lines_in_order(t["build1"], [
        f"Generated new shared secret: {hive['secret']}",
        "No peers found; this may be the first node (founder role).",
        "Identity: founder", "", "Install complete."])
    lines_in_order(t["build2"], [
        "Discovered 1 peer(s)", "Asking peers for role assignment...",
        " <- build1: become 'controller' (first node becomes controller)",
        "Consensus: I am a 'controller'", "Packages: ansible, git", "", "Install complete."])
    advice = [" <- build1: become 'builder' (cluster needs builders)",
              " <- build2: become 'builder' (cluster needs builders)"]
    lines_in_order(t["build3"], ["Discovered 2 peer(s)", "Asking peers for role assignment..."])
    for line in advice:
        lines_in_order(t["build3"], ["Asking peers for role assignment...", line,
                                     "Consensus: I am a 'builder'"])
    lines_in_order(t["build3"], [
        "Consensus: I am a 'builder'", "Packages: openjdk-17-jdk, maven, git, build-essential",
        "", "Install complete.", "  hive status                               this node's role and the hive"])
    for name in ("build2", "build3"):
        assert "Generated new shared secret" not in t[name]
        assert hive["secret"] not in t[name]


def test_walkthrough_state(hive, diagnose):
    nodes = hive["nodes"]
    expected = {"build1": ("founder", ["self"]), "build2": ("controller", ["build1"]),
                "build3": ("builder", ["build1", "build2"])}
    for name, (role, assigned_by) in expected.items():
        host = nodes[name]
        assert jq(host, ".role") == role
        assert sorted(json.loads(jq(host, ".assigned_by"))) == assigned_by
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", jq(host, ".assigned_at"))
        assert host.run("systemctl", "is-active", "build-agent", "build-advisor").stdout.split() \
            == ["active", "active"]
        assert host.run("systemctl", "is-enabled", "build-agent", "build-advisor").stdout.split() \
            == ["enabled", "enabled"]
        journal = host.journal("build-agent")
        assert (f"Consensus: I am a '{role}'" if role != "founder" else "Identity: founder") in journal
        assert jq(host, ".self.hostname", "/var/lib/build/peers.json") == name
        # Under its unit, the advisor hears only its agent: 127.0.0.1:50555, plus the socket it
        # sends ADVICE from (its address, a port of the kernel's); no broadcast address.
        pid = host.run("systemctl", "show", "-p", "MainPID", "--value",
                       "build-advisor").stdout.strip()
        address = jq(host, ".self.primary_ip", "/var/lib/build/peers.json")
        sockets = sorted(line.split()[3] for line in host.run(
            "ss", "-H", "-u", "-a", "-n", "-p").stdout.splitlines() if f"pid={pid}," in line)
        assert len(sockets) == 2 and "127.0.0.1:50555" in sockets, sockets
        [sending] = [s for s in sockets if s != "127.0.0.1:50555"]
        assert sending.startswith(address + ":") and sending != f"{address}:50555", sockets
    # peers.json: everyone sees the two others (the founder learns of build3 from its heartbeats)
    def all_see_all():
        for name, host in nodes.items():
            seen = sorted(jq(host, ".peers[].hostname", "/var/lib/build/peers.json").split())
            if seen != sorted(set(nodes) - {name}):
                return False
        return True
    hx.wait_for(all_see_all, 30, "every node's peers.json to list the two others")
    assert jq(nodes["build3"], '.peers[] | select(.hostname == "build1") | .role',
              "/var/lib/build/peers.json") == "founder"
    # The controller's Ansible inventory script, as install.sh installed it (ansible -i runs it).
    controller = nodes["build2"]
    assert controller.path("/usr/local/bin/hive-inventory").stat().st_mode & 0o111 == 0o111
    alias = controller.path("/usr/local/share/man/man1/hive-inventory.1")   # man hive-inventory
    assert os.readlink(alias) == "hive.1" and alias.resolve().exists()
    listed = json.loads(controller.run("/usr/local/bin/hive-inventory", "--list").stdout)
    assert {g: v["hosts"] for g, v in listed.items() if g != "_meta"} == \
        {"founder": ["build1"], "controller": ["build2"], "builder": ["build3"]}
    peers = json.loads(controller.read("/var/lib/build/peers.json"))
    for peer in peers["peers"]:
        assert listed["_meta"]["hostvars"][peer["hostname"]]["ansible_host"] == peer["ip"]
    one = json.loads(controller.run("/usr/local/bin/hive-inventory", "--host", "build3").stdout)
    assert (one["hive_role"], one["ansible_host"]) == \
        ("builder", listed["_meta"]["hostvars"]["build3"]["ansible_host"])


def test_roles_packages_really_installed(hive, diagnose):
    """The agent installed the role's packages from the lab's apt repository (apt-get, as root)."""
    wanted = {"build2": ["ansible", "git"],
              "build3": ["openjdk-17-jdk", "maven", "git", "build-essential"]}
    for name, packages in wanted.items():
        host = hive["nodes"][name]
        hx.wait_for(lambda: host.path("/var/lib/build/identity.json").exists()
                    and identity(host).get("provisioned") is True, 120,
                    f"{name}'s identity.json to record provisioned: true")
        assert identity(host)["provision_error"] is None
        status = host.run("dpkg-query", "-W", "-f=${Package} ${Status}\\n", *packages).stdout
        assert sorted(status.splitlines()) == sorted(f"{p} install ok installed" for p in packages)
    assert identity(hive["nodes"]["build1"])["packages"] == []


def test_hardening_scores_and_verify(hive, lab, diagnose):
    host = hive["nodes"]["build1"]
    limits = {"build-agent": 4.5, "build-advisor": 2.0}
    for unit, limit in limits.items():
        out = host.run("systemd-analyze", "security", "--no-pager", f"{unit}.service").stdout
        match = re.search(rf"Overall exposure level for {unit}\.service: (\d+\.\d+)", out)
        assert match, out
        score = float(match.group(1))
        measure(lab.release, f"systemd-analyze security {unit}", score)
        assert score <= limit, f"{unit} exposure {score} > {limit}:\n{out}"
    verify = host.run("systemd-analyze", "verify", "/etc/systemd/system/build-agent.service",
                      "/etc/systemd/system/build-advisor.service", check=False)
    assert verify.returncode == 0 and verify.stdout == "" and verify.stderr == "", \
        f"systemd-analyze verify: {verify.stdout}{verify.stderr}"
    version = host.run("systemctl", "--version").stdout.split()[1]
    measure(lab.release, "systemd version", version)


def test_journal_priorities(hive, diagnose):
    """Log lines carry syslog priorities: `journalctl -p err` shows errors and only errors."""
    host = hive["nodes"]["build2"]
    errors = host.run("journalctl", "--no-pager", "-q", "-o", "cat", "-p", "err",
                      "-u", "build-agent", "-u", "build-advisor").stdout
    assert "Consensus" not in errors and "Discovered" not in errors
    info = host.run("journalctl", "--no-pager", "-q", "-o", "cat", "-p", "info",
                    "-u", "build-agent").stdout
    assert "Consensus: I am a 'controller'" in info
    # an error: reloading with a secret that is too short (the agent keeps the old one)
    secret = host.read("/etc/build/shared_secret")
    host.write("/etc/build/shared_secret", "short\n", mode=0o600)
    try:
        host.run("systemctl", "reload", "build-agent")
        hx.wait_for(lambda: "Reload failed, keeping the old secret" in host.run(
            "journalctl", "--no-pager", "-q", "-o", "cat", "-p", "err", "-u", "build-agent").stdout,
            10, "the failed reload in journalctl -p err")
    finally:
        host.write("/etc/build/shared_secret", secret, mode=0o600)
    host.run("systemctl", "reload", "build-agent")
    assert host.run("systemctl", "is-active", "build-agent").stdout.strip() == "active"


def test_reload_rereads_secret(hive, diagnose):
    """A reload with the secret file as it was: both re-read it and say nothing changed
    (test_e2e_rotation.py rotates the secret and checks the effect)."""
    host = hive["nodes"]["build2"]
    host.run("systemctl", "reload", "build-agent", "build-advisor")
    hx.wait_for(lambda: "Secret file unchanged: still using 1 secret(s)"
                in host.journal("build-advisor").splitlines(), 10, "the advisor to log the reload")
    assert "Reloaded the shared secret" not in host.journal("build-advisor")
    assert host.run("systemctl", "is-active", "build-agent", "build-advisor").stdout.split() \
        == ["active", "active"]


def test_watchdog_pings_keep_both_services_alive(hive, diagnose):
    """With a 2 s watchdog (drop-in), both daemons ping in time: no restart in 7 s."""
    host = hive["nodes"]["build1"]
    units = ("build-agent", "build-advisor")
    for unit in units:
        host.write(f"/etc/systemd/system/{unit}.service.d/50-e2e-watchdog.conf",
                   "[Service]\nWatchdogSec=2s\n")
    try:
        host.run("systemctl", "daemon-reload")
        host.run("systemctl", "restart", *units)
        pids = host.run("systemctl", "show", "-p", "MainPID", "--value", *units).stdout.split()
        assert host.run("systemctl", "show", "-p", "WatchdogUSec", "--value",
                        "build-agent").stdout.strip() == "2s"
        time.sleep(7)
        assert host.run("systemctl", "show", "-p", "MainPID", "--value", *units).stdout.split() \
            == pids
        assert host.run("systemctl", "show", "-p", "NRestarts", "--value", *units).stdout.split() \
            == ["0", "0"]
        assert "watchdog" not in host.journal("build-agent", "-b").lower()
    finally:
        for unit in units:
            host.run("rm", "-rf", f"/etc/systemd/system/{unit}.service.d")
        host.run("systemctl", "daemon-reload")
        host.run("systemctl", "restart", *units)


def test_service_restart_keeps_identity(hive, diagnose):
    host = hive["nodes"]["build2"]
    before = identity(host)
    host.run("systemctl", "restart", "build-agent")
    invocation = host.run("systemctl", "show", "-p", "InvocationID", "--value",
                          "build-agent").stdout.strip()
    lines = hx.wait_for(lambda: host.run("journalctl", "--no-pager", "-q", "-o", "cat",
                                         f"_SYSTEMD_INVOCATION_ID={invocation}").stdout
                        .count("Already identified as: controller"), 10,
                        "'Already identified as: controller' after the restart")
    assert lines == 1
    after = identity(host)
    assert after["assigned_at"] == before["assigned_at"] and after["role"] == "controller"


def test_container_reboot_keeps_identity(hive, diagnose):
    host = hive["nodes"]["build2"]
    before = identity(host)
    node_id = host.read("/var/lib/build/node_id")
    host.reboot()
    hx.wait_for(lambda: host.run("systemctl", "is-active", "build-agent", "build-advisor",
                                 check=False).stdout.split() == ["active", "active"], 30,
                "both services to be active after the reboot")
    assert "Already identified as: controller" in host.journal("build-agent", "-b")
    after = identity(host)
    assert after["assigned_at"] == before["assigned_at"]
    assert host.read("/var/lib/build/node_id") == node_id
    # ... and the others still count it as a member
    builder = hive["nodes"]["build3"]
    hx.wait_for(lambda: "build2" in jq(builder, ".peers[].hostname", "/var/lib/build/peers.json"),
                30, "build3 to list build2 again")


def test_hive_reset_asks_again(hive, diagnose):
    host = hive["nodes"]["build3"]
    before = identity(host)
    time.sleep(1.1)  # assigned_at has one-second resolution
    out = host.run("hive", "reset").stdout
    invocation = host.run("systemctl", "show", "-p", "InvocationID", "--value",
                          "build-agent").stdout.strip()

    def settled():
        log = host.run("journalctl", "--no-pager", "-q", "-o", "cat",
                       f"_SYSTEMD_INVOCATION_ID={invocation}").stdout
        return log if "Consensus: I am a 'builder'" in log else None
    log = hx.wait_for(settled, 20, "build3 to ask the hive again after 'hive reset'")
    lines_in_order(log, ["Discovered 2 peer(s)", "Asking peers for role assignment...",
                         "Consensus: I am a 'builder'"])
    after = identity(host)
    assert after["assigned_at"] > before["assigned_at"], out
    assert sorted(after["assigned_by"]) == ["build1", "build2"]


def test_second_install_is_a_noop_upgrade(hive, lab, diagnose):
    host = hive["nodes"]["build3"]
    before = identity(host)
    secret = host.read("/etc/build/shared_secret")
    config = host.read("/etc/build/hive.toml")
    node_id = host.read("/var/lib/build/node_id")
    out, seconds = install(host)
    measure(lab.release, "install.sh again (upgrade) on build3 (s)", round(seconds, 2))
    lines_in_order(out, ["Already identified as: builder", "", "Install complete."])
    assert "Generated new shared secret" not in out and "Discovered" not in out
    assert host.read("/etc/build/shared_secret") == secret
    assert host.read("/etc/build/hive.toml") == config
    assert host.read("/var/lib/build/node_id") == node_id
    after = identity(host)
    assert (after["role"], after["assigned_at"]) == (before["role"], before["assigned_at"])
    assert host.run("systemctl", "is-active", "build-agent", "build-advisor").stdout.split() \
        == ["active", "active"]
    assert host.run("hive", "status").returncode == 0


def test_bootstrap_report_and_claim(hive, lab, diagnose):
    """bootstrap.sh: the seed's report; --claim takes the next free address, which another node
    then sees as used with arping; a second --claim keeps the address it has."""
    host, other = hive["nodes"]["build3"], hive["nodes"]["build1"]
    net = lab.net
    started = time.monotonic()
    report = host.run("/opt/build-agent/bootstrap.sh").stdout
    measure(lab.release, "bootstrap.sh report (s)", round(time.monotonic() - started, 2))
    assert report.splitlines() == [
        "Interface : eth0", f"Address   : {net.ip(13)}/24", f"Broadcast : {net.broadcast}",
        f"Next free : {net.ip(14)}"], report
    as_json = json.loads(host.run("/opt/build-agent/bootstrap.sh", "--json").stdout)
    assert as_json == {"interface": "eth0", "address": f"{net.ip(13)}/24",
                       "broadcast": net.broadcast, "next_free": net.ip(14)}
    assert other.run("arping", "-q", "-c", "2", "-w", "2", "-i", "eth0", net.ip(14),
                     check=False).returncode != 0, "nothing has .14 yet"

    claim = host.run("/opt/build-agent/bootstrap.sh", "--claim").stdout
    assert f"Claimed {net.ip(14)}/24 on eth0" in claim.splitlines(), claim
    assert f"{net.ip(14)}/24" in host.run("ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert other.run("arping", "-q", "-C", "1", "-c", "3", "-w", "3", "-i", "eth0",
                     net.ip(14), check=False).returncode == 0, "build1 sees .14 as used"
    # build1's next free address skips the used .12, .13 and the claimed .14
    assert f"Next free : {net.ip(15)}" in other.run("/opt/build-agent/bootstrap.sh").stdout
    again = host.run("/opt/build-agent/bootstrap.sh", "--claim").stdout
    assert f"Already claimed {net.ip(14)}/24 on eth0" in again, again
    assert host.run("ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout.count("inet ") == 2
    # the hive keeps working with a secondary address on the interface
    assert host.run("systemctl", "is-active", "build-agent").stdout.strip() == "active"
