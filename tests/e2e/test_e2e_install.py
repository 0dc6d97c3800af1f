"""install.sh beyond the walkthrough, in booted systemd hosts: a user policy whose roles really
install packages, a node with another secret, UFW, --uninstall/--purge, missing prerequisites
installed from the LAN's apt repository, and every refusal (one clear line, nothing changed)."""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

import e2e_harness as hx
from conftest import TEST_POLICY_PACKAGES, measure, policy_text
from test_e2e_hive import identity, install, jq, lines_in_order

POLICY_TOML = 'policy = "/etc/build/e2e-policy.py"\nheartbeat_interval = 2\n'


@pytest.fixture(scope="module")
def policy_hive(lab):
    """build1 and build2 share a secret and a user policy; build7 is a stranger (other secret)."""
    nodes = lab.hosts(("build1", 11), ("build2", 12), ("build7", 17))
    secret = secrets.token_hex(32)
    for host in nodes[:2]:
        host.write("/etc/build/shared_secret", secret + "\n", mode=0o600)
        host.write("/etc/build/hive.toml", POLICY_TOML)
        host.write("/etc/build/e2e-policy.py", policy_text())
    nodes[2].write("/etc/build/shared_secret", secrets.token_hex(32) + "\n", mode=0o600)
    nodes[2].write("/etc/build/hive.toml", "heartbeat_interval = 2\n")
    # build2 has UFW active (default: deny incoming), so its agent hears the hive's unicast
    # replies only through the rule install.sh adds.
    nodes[1].run("ufw", "--force", "enable")
    hive = {h.name: h for h in nodes}
    hive["transcripts"] = {}
    return hive


def test_user_policy_roles_install_their_packages(policy_hive, lab, diagnose):
    founder, worker = policy_hive["build1"], policy_hive["build2"]
    out, _ = install(founder)
    lines_in_order(out, ["Identity: founder", "Install complete."])
    assert "Generated new shared secret" not in out  # the secret was there: never overwritten
    out, _ = install(worker)
    policy_hive["transcripts"]["build2"] = out
    lines_in_order(out, [
        "Discovered 1 peer(s)", "Asking peers for role assignment...",
        " <- build1: become 'e2e-worker' (the e2e policy wants workers)",
        "Consensus: I am a 'e2e-worker'", f"Packages: {', '.join(TEST_POLICY_PACKAGES)}",
        "Install complete."])
    hx.wait_for(lambda: identity(worker).get("provisioned") is True, 120,
                "build2's packages to be installed (identity.json provisioned: true)")
    data = identity(worker)
    assert data["provision_error"] is None and data["provisioned_at"]
    assert data["config"] == {"slots": 2, "workers_before": 0}
    for package in TEST_POLICY_PACKAGES:
        status = worker.run("dpkg", "-s", package).stdout
        assert "Status: install ok installed" in status
    assert worker.path(f"/usr/share/build-hive-e2e/{TEST_POLICY_PACKAGES[0]}").exists()
    assert "Packages installed: " + ", ".join(TEST_POLICY_PACKAGES) in worker.journal("build-agent")


def test_ufw_rule_for_the_lan_when_active(policy_hive, lab, diagnose):
    """Real ufw, active with its default deny: install.sh allowed the hive's port from the LAN
    (build2 joined through it above), and only on the node where UFW is active."""
    worker = policy_hive["build2"]
    subnet = f"{lab.net.subnet}.0/24"
    assert f"UFW is active: allowed 50555/udp from {subnet} (the hive's LAN)." \
        in policy_hive["transcripts"]["build2"]
    status = worker.run("ufw", "status", "verbose").stdout
    assert "Status: active" in status and "deny (incoming)" in status
    rules = [line.split() for line in status.splitlines() if "50555" in line]
    assert rules == [["50555/udp", "ALLOW", "IN", subnet, "#", "build-hive"]], status
    assert "Status: inactive" in policy_hive["build1"].run("ufw", "status").stdout


def test_a_node_with_another_secret_founds_its_own_hive(policy_hive, diagnose):
    stranger = policy_hive["build7"]
    out, _ = install(stranger)
    lines_in_order(out, ["No peers found; this may be the first node (founder role).",
                         "Identity: founder", "", "Install complete."])
    # Two heartbeat intervals later nobody counts it, and it counts nobody.
    hx.wait_for(lambda: jq(policy_hive["build1"], ".updated_at", "/var/lib/build/peers.json")
                > identity(stranger)["assigned_at"], 10, "build1 to rewrite its peers.json")
    for name in ("build1", "build2"):
        assert "build7" not in jq(policy_hive[name], ".peers[].hostname",
                                  "/var/lib/build/peers.json").split()
    assert jq(stranger, ".peers | length", "/var/lib/build/peers.json") == "0"
    assert identity(policy_hive["build2"])["role"] == "e2e-worker"


# sysfs entries of a server with a BMC's VGA and an NVIDIA datacenter GPU: (vendor, class)
FAKE_PCI = {"0000:02:00.0": ("0x1a03", "0x030000"),   # ASPEED AST2600 VGA (the BMC)
            "0000:41:00.0": ("0x10de", "0x030200")}   # NVIDIA 3D controller (an L4, an H100)
FAKE_GPU_SCRIPT = "mount -t tmpfs -o mode=0755 fake-pci /sys/bus/pci/devices\n" + "".join(
    f"mkdir /sys/bus/pci/devices/{addr}\n"
    f"echo {vendor} > /sys/bus/pci/devices/{addr}/vendor\n"
    f"echo {klass} > /sys/bus/pci/devices/{addr}/class\n"
    for addr, (vendor, klass) in FAKE_PCI.items()) + "touch /dev/nvidia0\n"


def listed_has_gpu(member: hx.Container, hostname: str):
    peers = json.loads(member.read("/var/lib/build/peers.json"))["peers"]
    return [p.get("capabilities", {}).get("has_gpu") for p in peers if p["hostname"] == hostname]


def test_has_gpu_is_seen_through_the_agents_sandbox(policy_hive, diagnose):
    """The shipped unit's PrivateDevices=yes hides /dev/nvidia0 from the agent; the PCI class in
    sysfs stays visible, so the hive learns that build2 has a GPU (and not that its BMC's VGA is
    one).  A stand-in for the hardware: a tmpfs with the two devices' sysfs files over
    /sys/bus/pci/devices, and /dev/nvidia0 as the driver would make it."""
    host, member = policy_hive["build2"], policy_hive["build1"]
    assert listed_has_gpu(member, "build2") == [False]
    try:
        host.bash(FAKE_GPU_SCRIPT)
        assert host.run("test", "-e", "/dev/nvidia0", check=False).returncode == 0
        sandboxed = host.run("systemd-run", "--quiet", "--wait", "--pipe", "-p",
                             "PrivateDevices=yes", "-p", "ProtectKernelTunables=yes", "sh", "-c",
                             "test -e /dev/nvidia0; echo dev=$?; cat "
                             "/sys/bus/pci/devices/0000:41:00.0/class").stdout.split()
        assert sandboxed == ["dev=1", "0x030200"], sandboxed  # hidden / visible
        host.run("systemctl", "restart", "build-agent")
        hx.wait_for(lambda: listed_has_gpu(member, "build2") == [True], 20,
                    "build1's peers.json to list build2 with has_gpu: true")
    finally:
        host.bash("umount /sys/bus/pci/devices || true\nrm -f /dev/nvidia0\n")
        host.run("systemctl", "restart", "build-agent")
    hx.wait_for(lambda: listed_has_gpu(member, "build2") == [False], 20,
                "build1's peers.json to list build2 with has_gpu: false again")


SLOW_POLICY = '''"""e2e: a policy that takes 30 s to answer, as one querying a hung service would."""
import time


def suggest_role(view, newcomer):
    time.sleep(30)
    return {"role": "e2e-late", "reason": "30 s late"}
'''


def test_a_slow_policy_stalls_neither_the_watchdog_nor_the_newcomer(policy_hive, lab, diagnose):
    """build1's advisor runs, under the shipped unit with a 2 s watchdog (drop-in), a policy that
    sleeps 30 s: build2, asking again after `hive reset`, gets the default policy's answer within
    seconds, and the watchdog never restarts the advisor."""
    advisor, newcomer = policy_hive["build1"], policy_hive["build2"]
    policy = "/etc/build/e2e-policy.py"
    original = advisor.read(policy)
    dropin = "/etc/systemd/system/build-advisor.service.d/50-e2e-watchdog.conf"
    advisor.write(policy, SLOW_POLICY)
    advisor.write(dropin, "[Service]\nWatchdogSec=2s\n")
    try:
        advisor.run("systemctl", "daemon-reload")
        advisor.run("systemctl", "restart", "build-advisor")
        pid = advisor.run("systemctl", "show", "-p", "MainPID", "--value",
                          "build-advisor").stdout.strip()
        invocation = advisor.run("systemctl", "show", "-p", "InvocationID", "--value",
                                 "build-advisor").stdout.strip()
        started = time.monotonic()
        newcomer.run("hive", "reset")
        asked = newcomer.run("systemctl", "show", "-p", "InvocationID", "--value",
                             "build-agent").stdout.strip()

        def settled():
            return "Consensus: I am a 'controller'" in newcomer.run(
                "journalctl", "--no-pager", "-q", "-o", "cat",
                f"_SYSTEMD_INVOCATION_ID={asked}").stdout
        hx.wait_for(settled, 20, "build2 to be advised again after 'hive reset'")
        took = time.monotonic() - started
        measure(lab.release, "hive reset to identity, advisor's policy sleeping 30 s (s)",
                round(took, 2))
        data = identity(newcomer)
        assert (data["role"], data["reason"]) == ("controller", "first node becomes controller")
        assert data["assigned_by"] == ["build1"]
        time.sleep(max(0.0, started + 8 - time.monotonic()))  # 4 watchdog periods; still asleep
        show = advisor.run("systemctl", "show", "-p", "MainPID", "-p", "NRestarts", "-p",
                           "ActiveState", "build-advisor").stdout.split()
        assert sorted(show) == sorted([f"MainPID={pid}", "NRestarts=0", "ActiveState=active"])
        log = advisor.run("journalctl", "--no-pager", "-q", "-o", "cat",
                          f"_SYSTEMD_INVOCATION_ID={invocation}").stdout
        assert ("Policy failed for build2 (no answer within 1 s); using the default policy"
                in log), log
        assert "watchdog" not in advisor.journal("build-advisor", "-b").lower()
    finally:
        advisor.write(policy, original)
        advisor.run("rm", "-rf", "/etc/systemd/system/build-advisor.service.d")
        advisor.run("systemctl", "daemon-reload")
        advisor.run("systemctl", "restart", "build-advisor")


def test_uninstall_removes_the_ufw_rule(policy_hive, lab, diagnose):
    worker = policy_hive["build2"]
    out = worker.run("bash", "/src/install.sh", "--uninstall").stdout
    assert f"UFW: removed the rule allowing 50555/udp from {lab.net.subnet}.0/24." in out
    status = worker.run("ufw", "status").stdout
    assert "Status: active" in status and "50555" not in status


def test_uninstall_keeps_identity_and_purge_removes_everything(policy_hive, diagnose):
    host = policy_hive["build7"]
    before = identity(host)
    out = host.run("bash", "/src/install.sh", "--uninstall").stdout
    assert "Kept /var/lib/build (identity) and /etc/build (config and shared secret)" in out
    for path in ("/opt/build-agent", "/usr/local/bin/hive", "/usr/local/bin/hive-inventory",
                 "/usr/local/share/man/man1/hive-inventory.1",
                 "/etc/systemd/system/build-agent.service",
                 "/etc/systemd/system/build-advisor.service"):
        assert not host.path(path).exists() and not host.path(path).is_symlink(), path
    states = host.run("systemctl", "is-active", "build-agent", "build-advisor", check=False)
    assert states.stdout.split() == ["inactive", "inactive"]
    assert host.path("/var/lib/build/identity.json").exists()
    assert host.path("/etc/build/shared_secret").exists()
    # installing again finds the identity it kept
    out, _ = install(host)
    lines_in_order(out, ["Already identified as: founder", "Install complete."])
    assert identity(host)["assigned_at"] == before["assigned_at"]
    out = host.run("bash", "/src/install.sh", "--uninstall", "--purge").stdout
    assert "Purged /var/lib/build (identity) and /etc/build (config and shared secret)." in out
    for path in ("/opt/build-agent", "/usr/local/bin/hive", "/var/lib/build", "/etc/build"):
        assert not host.path(path).exists(), path
    # uninstalling twice is harmless
    host.run("bash", "/src/install.sh", "--uninstall", "--purge")


@pytest.fixture(scope="module")
def unbooted(lab):
    """A host where nothing was installed (refusals must leave it that way), not booted yet."""
    (host,) = lab.hosts(("build9", 19), boot=False)
    return host


@pytest.fixture(scope="module")
def fresh(unbooted):
    if unbooted.pid is None:
        unbooted.boot()
        unbooted.wait_booted()
    return unbooted


def test_refuses_without_systemd_as_pid1(unbooted, lab):
    """A plain container shell (no --boot), like a docker shell: a clear error, nothing done."""
    result = hx.sh("systemd-nspawn", "-D", str(unbooted.merged), "--register=no", "--keep-unit",
                   "--quiet", "--pipe", f"--machine={unbooted.name}x",
                   f"--network-namespace-path=/run/netns/{unbooted.ns}",
                   f"--bind-ro={hx.REPO}:/src", "bash", "/src/install.sh", check=False,
                   timeout=60)
    assert result.returncode != 0
    assert "install.sh: systemd is not running as PID 1 here" in result.stderr, result.stderr
    assert not unbooted.path("/opt/build-agent").exists()
    assert not unbooted.path("/etc/build/shared_secret").exists()


def refused(host: hx.Container, *args: str, prefix: tuple[str, ...] = ()) -> str:
    result = host.run(*prefix, "bash", "/src/install.sh", *args, check=False)
    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("install.sh: ")]
    assert len(errors) == 1, result.stderr
    assert not host.path("/opt/build-agent").exists()
    assert not host.path("/etc/systemd/system/build-agent.service").exists()
    return errors[0]


def test_refusals_are_one_clear_line_and_change_nothing(fresh, diagnose):
    nobody = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
    assert refused(fresh, prefix=nobody) == "install.sh: must run as root: sudo bash install.sh"
    assert refused(fresh, "--purge") == "install.sh: --purge only goes with --uninstall"
    assert "unknown option '--frobnicate'" in refused(fresh, "--frobnicate")

    secret = "/etc/build/shared_secret"
    fresh.write(secret, secrets.token_hex(32) + "\n", mode=0o644)
    assert refused(fresh) == (f"install.sh: {secret} has mode 0644 (group or others may read it): "
                              f"run 'chmod 0600 {secret}' and install.sh again")
    assert fresh.path(secret).stat().st_mode & 0o777 == 0o644, "fixes nothing silently"
    fresh.run("chmod", "0600", secret)
    fresh.run("chown", "1000:1000", secret)
    assert refused(fresh) == (f"install.sh: {secret} is owned by uid 1000, not root: "
                              f"run 'chown root:root {secret}' and install.sh again")
    fresh.run("chown", "root:root", secret)
    fresh.write(secret, "too-short\n", mode=0o600)
    line = refused(fresh)
    assert "shorter than 16 characters" in line and "too-short" not in line

    fresh.run("rm", "-f", secret)
    os_release = fresh.read("/etc/os-release")
    fresh.run("rm", "-f", "/etc/os-release")
    fresh.write("/etc/os-release", 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=40\n'
                'PRETTY_NAME="Fedora Linux 40"\n')
    try:
        assert refused(fresh).startswith("install.sh: unsupported system 'Fedora Linux 40'")
    finally:
        fresh.run("rm", "-f", "/etc/os-release")
        fresh.write("/etc/os-release", os_release)
    assert not fresh.path(secret).exists()


MARKER = "/root/policy-ran"
MARKER_POLICY = f'''import pathlib
pathlib.Path("{MARKER}").write_text("the policy ran as root")


def suggest_role(view, newcomer):
    return {{"role": "builder"}}
'''


def test_refuses_a_policy_others_can_write_without_running_it(fresh, diagnose):
    """install.sh runs the policy as root to check it: a file (or directory) others can write is
    code injection, refused in one line before a line of it runs."""
    policy = "/etc/build/e2e-marker-policy.py"
    fresh.write("/etc/build/hive.toml", f'policy = "{policy}"\n')
    fresh.write(policy, MARKER_POLICY, mode=0o666)
    hint = "(the advisor runs the policy with the hive's secret)"
    try:
        assert refused(fresh) == (f"install.sh: policy {policy} has mode 0666 (writable by group "
                                  f"or others): run 'chmod go-w {policy}' {hint}")
        assert not fresh.path(MARKER).exists()
        fresh.run("chmod", "0644", policy)
        fresh.run("chown", "1000:1000", policy)
        assert refused(fresh) == (f"install.sh: policy {policy} is owned by uid 1000, not root: "
                                  f"run 'chown root:root {policy}' {hint}")
        assert not fresh.path(MARKER).exists()
        fresh.run("chown", "root:root", policy)
        fresh.run("chmod", "0777", "/etc/build")
        assert refused(fresh) == (f"install.sh: policy {policy}: directory /etc/build has mode "
                                  f"0777 (writable by group or others): run 'chmod go-w "
                                  f"/etc/build' {hint}")
        assert not fresh.path(MARKER).exists()
        fresh.run("chmod", "0755", "/etc/build")
        fresh.run("chmod", "0600", policy)
        assert refused(fresh) == (f"install.sh: policy {policy} must be readable by everyone "
                                  f"(build-advisor is an unprivileged user): run 'chmod 0644 "
                                  f"{policy}'")
        assert not fresh.path(MARKER).exists()
    finally:
        fresh.run("rm", "-f", policy, "/etc/build/hive.toml", "/etc/build/shared_secret", MARKER)
        fresh.run("chmod", "0755", "/etc/build")


def test_installs_missing_prerequisites_from_the_lan(fresh, lab, diagnose):
    """jq and arping removed: install.sh apt-get installs exactly those (from the lab's mirror)."""
    fresh.run("dpkg", "--purge", "jq", "arping")
    assert fresh.run("sh", "-c", "command -v jq arping", check=False).stdout == ""
    out, seconds = install(fresh)
    measure(lab.release, "install.sh with 2 prerequisites to fetch (s)", round(seconds, 2))
    lines_in_order(out, ["Installing missing prerequisites: arping jq", "Identity: founder",
                         "Install complete."])
    for package in ("jq", "arping"):
        assert "Status: install ok installed" in fresh.run("dpkg", "-s", package).stdout
    # everything present now: a second run fetches nothing
    out, _ = install(fresh)
    assert "Installing missing prerequisites" not in out
    status = json.loads(fresh.run("hive", "status", "--json").stdout)
    assert status["role"] == "founder" and status["hostname"] == "build9"


def test_kill_switch_keeps_the_services_down(fresh, diagnose):
    fresh.write("/etc/build/hive.disabled", "")
    try:
        out, _ = install(fresh)
        assert "/etc/build/hive.disabled exists: the services are enabled but do not start" in out
        states = fresh.run("systemctl", "is-active", "build-agent", "build-advisor", check=False)
        assert states.stdout.split() == ["inactive", "inactive"]
        fresh.run("systemctl", "start", "build-agent")
        assert fresh.run("systemctl", "is-active", "build-agent", check=False).stdout.strip() \
            == "inactive"  # the condition holds it back
    finally:
        fresh.run("rm", "-f", "/etc/build/hive.disabled")
    fresh.run("systemctl", "start", "build-agent", "build-advisor")
    assert fresh.run("systemctl", "is-active", "build-agent", "build-advisor").stdout.split() \
        == ["active", "active"]


def test_a_bad_config_is_refused_before_the_services_restart(fresh, diagnose):
    config = fresh.read("/etc/build/hive.toml")
    fresh.write("/etc/build/hive.toml", config + "\nbogus_key = 1\n")
    try:
        result = fresh.run("bash", "/src/install.sh", check=False)
        assert result.returncode != 0
        assert "unknown key(s) in /etc/build/hive.toml: bogus_key" in result.stderr
        assert fresh.run("systemctl", "is-active", "build-agent").stdout.strip() == "active"
    finally:
        fresh.write("/etc/build/hive.toml", config)


def test_secret_never_in_the_journal(policy_hive, fresh):
    for host in (policy_hive["build1"], fresh):
        secret = host.read("/etc/build/shared_secret").strip()
        journal = host.run("journalctl", "--no-pager", "-q", "-o", "cat").stdout
        assert secret not in journal
