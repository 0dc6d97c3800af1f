"""Installing a role's packages, in booted systemd hosts, where it used to go wrong: a package name
that apt would read as a regular expression, an install that would remove a package, an agent
restarted in the middle of a package's postinst, and a dpkg interrupted before the agent came.

One lab per Debian release: build1 founds a hive whose policy (data/provision_policy.py) gives
each newcomer the packages its test needs; each test then installs one newcomer.
"""

from __future__ import annotations

import secrets
import time

import pytest

import e2e_harness as hx
from conftest import DATA, SLOW_PACKAGE, SLOW_POSTINST_SECONDS, measure
from test_e2e_hive import identity, install, lines_in_order

POLICY = "/etc/build/provision-policy.py"
UNIT = "build-hive-provision.service"
STARTED, CONFIGURED = f"/run/{SLOW_PACKAGE}.started", f"/run/{SLOW_PACKAGE}.configured"


@pytest.fixture(scope="module")
def prov_hive(lab):
    nodes = lab.hosts(("build1", 11), ("build2", 12), ("build3", 13), ("build4", 14),
                      ("build5", 15))
    secret = secrets.token_hex(32)
    for host in nodes:
        host.write("/etc/build/shared_secret", secret + "\n", mode=0o600)
        host.write("/etc/build/hive.toml", f'policy = "{POLICY}"\nheartbeat_interval = 2\n')
        host.write(POLICY, (DATA / "provision_policy.py").read_text())
    out, _ = install(nodes[0])
    lines_in_order(out, ["Identity: founder", "Install complete."])
    return {h.name: h for h in nodes}


def packages_state(host: hx.Container) -> list[str]:
    """Every package dpkg knows, with its state."""
    return sorted(host.run("dpkg-query", "-W", "-f=${Package} ${Status}\\n").stdout.splitlines())


def status(host: hx.Container, package: str) -> str:
    result = host.run("dpkg-query", "-W", "-f=${Status}", package, check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def provisioning_ended(host: hx.Container, since: str = "") -> dict | None:
    """identity.json once an attempt ended (after `since`, an ISO time): provisioned or an error."""
    if not host.path("/var/lib/build/identity.json").exists():
        return None
    data = identity(host)
    if (data.get("provisioned") is True or data.get("provision_error")) \
            and (data.get("provisioned_at") or "") >= since:
        return data
    return None


def exists(host: hx.Container, path: str) -> bool:
    """A file inside the running container (its /run is a tmpfs: not in the overlay)."""
    return host.run("test", "-e", path, check=False).returncode == 0


def utc_now(host: hx.Container) -> str:
    return host.run("date", "-u", "+%Y-%m-%dT%H:%M:%SZ").stdout.strip()


def test_a_name_apt_would_read_as_a_regex_installs_nothing(prov_hive, lab, diagnose):
    """The policy advises hive-e2e-lib and hive.e2e.tool: no package has that name, and apt-get
    would take it as a regex (selecting hive-e2e-tool).  Nothing is installed; the error names it."""
    host = prov_hive["build2"]
    before = packages_state(host)
    out, _ = install(host)
    lines_in_order(out, ["Consensus: I am a 'e2e-prov'", "Packages: hive-e2e-lib, hive.e2e.tool",
                         "Install complete."])
    data = hx.wait_for(lambda: provisioning_ended(host), 120, "build2's provisioning to end")
    assert data["provisioned"] is False, data
    assert data["provision_error"] == (
        "no package named exactly hive.e2e.tool in the apt sources "
        "(nothing installed; fix the policy's package names)")
    assert status(host, "hive-e2e-tool") == "unknown"
    assert status(host, "hive-e2e-lib") == "unknown"
    assert packages_state(host) == before
    journal = host.journal("build-agent")
    assert "Installing packages failed: no package named exactly hive.e2e.tool" in journal
    # what apt-get itself does with that name here, for the record
    host.run("apt-get", "update", "-qq")
    apt = host.run("apt-get", "-s", "install", "--", "hive.e2e.tool", check=False).stdout
    measure(lab.release, "apt-get -s install hive.e2e.tool selects",
            ", ".join(line.split()[1] for line in apt.splitlines() if line.startswith("Inst ")))


def test_an_install_never_removes_a_package(prov_hive, lab, diagnose):
    """hive-e2e-breaker conflicts with jq: apt-get -y would remove jq to install it."""
    host = prov_hive["build5"]
    before = packages_state(host)
    assert status(host, "jq") == "install ok installed"
    install(host)
    data = hx.wait_for(lambda: provisioning_ended(host), 120, "build5's provisioning to end")
    assert data["provisioned"] is False, data
    assert data["provision_error"].startswith("apt-get install failed (exit 100): E: ")
    measure(lab.release, "provision_error of an install that would remove jq",
            data["provision_error"])
    assert status(host, "jq") == "install ok installed"
    assert packages_state(host) == before


def agent_leftovers(host: hx.Container) -> list[tuple[int, str]]:
    """Processes in build-agent's cgroup that are not the running agent or its children: what an
    earlier agent left behind.  systemd in these containers does not kill them (LAB-NOTES): on
    this machine every container's build-agent.service is one and the same cgroup, so its
    cgroup.procs also lists other containers' agents, as PID 0 (not in this PID namespace), and
    systemd gives up on reading it (EIO).  Only this container's PIDs (> 1) are ours to kill."""
    cgroup = host.run("systemctl", "show", "-p", "ControlGroup", "--value",
                      "build-agent").stdout.strip()
    main = int(host.run("systemctl", "show", "-p", "MainPID", "--value", "build-agent").stdout)
    procs = host.run("cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs", check=False).stdout.split()
    parents = {}
    for line in host.run("ps", "-e", "-o", "pid=,ppid=").stdout.splitlines():
        pid, ppid = map(int, line.split())
        parents[pid] = ppid

    def from_main(pid: int) -> bool:
        for _ in range(64):
            if pid == main:
                return True
            if pid not in parents or pid <= 1:
                return False
            pid = parents[pid]
        return False
    out = []
    for pid in map(int, procs):
        if pid > 1 and not from_main(pid):
            out.append((pid, host.run("cat", f"/proc/{pid}/cmdline", check=False)
                        .stdout.replace("\0", " ").strip()))
    return out


def test_an_agent_restart_in_the_middle_of_a_postinst(prov_hive, lab, diagnose):
    """The agent restarts while hive-e2e-slow's postinst runs.  What a real host's systemd does
    to the old agent's processes (SIGTERM to everything left in its cgroup) is done here by hand.
    The install must survive it: the package ends installed, dpkg consistent, provisioned."""
    host = prov_hive["build3"]
    install(host)
    hx.wait_for(lambda: exists(host, STARTED), 120, f"{SLOW_PACKAGE}'s postinst to start")
    assert not exists(host, CONFIGURED)
    since = utc_now(host)
    restarted = time.monotonic()
    host.run("systemctl", "restart", "build-agent")
    leftovers = agent_leftovers(host)
    for pid, _ in leftovers:
        host.run("kill", "-TERM", str(pid), check=False)
    hx.wait_for(lambda: not agent_leftovers(host), 15, "the old agent's leftovers to exit")
    measure(lab.release, "leftovers of the old agent in its cgroup (SIGTERMed)",
            ", ".join(cmd.split()[0].rsplit("/", 1)[-1] for _, cmd in leftovers if cmd) or "none")
    data = hx.wait_for(lambda: provisioning_ended(host, since), 180,
                       "build3's provisioning to end after the restart")
    measure(lab.release, "agent restart to provisioned (s)", round(time.monotonic() - restarted, 1))
    assert data["provisioned"] is True and data["provision_error"] is None, data
    assert status(host, SLOW_PACKAGE) == "install ok installed"
    assert exists(host, CONFIGURED)
    assert host.run("dpkg", "--audit").stdout == ""
    assert host.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    log = host.run("journalctl", "--no-pager", "-q", "-o", "cat", "-u", UNIT).stdout
    assert f"Setting up {SLOW_PACKAGE}" in log  # apt's output went to the unit's journal
    # the restarted agent waited for the install of its previous life, then checked it again
    invocation = host.run("systemctl", "show", "-p", "InvocationID", "--value",
                          "build-agent").stdout.strip()
    agent_log = host.run("journalctl", "--no-pager", "-q", "-o", "cat",
                         f"_SYSTEMD_INVOCATION_ID={invocation}").stdout
    lines_in_order(agent_log, [
        f"Installing packages: {SLOW_PACKAGE}",
        f"An install started before this agent (re)started is still running ({UNIT}); "
        "waiting for it to finish",
        f"The earlier install ({UNIT}) finished", f"Packages installed: {SLOW_PACKAGE}"])


def test_an_interrupted_dpkg_is_repaired_by_the_next_provisioning(prov_hive, lab, diagnose):
    """Before the agent comes, an apt-get install is killed in hive-e2e-slow's postinst: dpkg is
    left interrupted (every apt-get says so).  The agent's provisioning repairs it, then installs."""
    host = prov_hive["build4"]
    host.bash(f"""
apt-get update -qq
apt-get install -y -qq {SLOW_PACKAGE} >/var/tmp/interrupted.log 2>&1 &
installer=$!
for _ in $(seq 600); do [ -e {STARTED} ] && break; sleep 0.1; done
tree() {{ echo "$1"; for child in $(ps -o pid= --ppid "$1"); do tree "$child"; done; }}
pids=$(tree "$installer")   # apt-get, dpkg, the postinst, its sleep: SIGTERM to all at once
kill -TERM $pids
wait "$installer" || true
for _ in $(seq 100); do ps -o pid= -p "$(echo $pids | tr ' ' ,)" >/dev/null || break; sleep 0.1; done
""", timeout=120)
    assert status(host, SLOW_PACKAGE) == "install ok half-configured"
    broken = host.run("apt-get", "install", "-y", "hive-e2e-lib", check=False)
    assert broken.returncode != 0 and "dpkg was interrupted" in broken.stderr
    host.run("rm", "-f", STARTED)
    install(host)
    data = hx.wait_for(lambda: provisioning_ended(host), 180 + SLOW_POSTINST_SECONDS,
                       "build4's provisioning to end")
    assert data["provisioned"] is True and data["provision_error"] is None, data
    assert status(host, SLOW_PACKAGE) == "install ok installed"
    assert status(host, "hive-e2e-lib") == "install ok installed"
    assert host.run("dpkg", "--audit").stdout == ""
    log = host.run("journalctl", "--no-pager", "-q", "-o", "cat", "-u", UNIT).stdout
    repair = [line for line in log.splitlines() if line.startswith("dpkg was interrupted earlier (")]
    assert len(repair) == 1 and repair[0].endswith(
        "; repairing it first: dpkg --configure -a --force-confdef --force-confold"), log
    measure(lab.release, "what the agent found before repairing dpkg", repair[0].split(";")[0])
    lines_in_order(log, [repair[0], f"Setting up {SLOW_PACKAGE} (1.0-e2e) ...", "dpkg repaired"])
