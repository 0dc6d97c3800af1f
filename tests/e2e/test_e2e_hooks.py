"""Role hooks in booted systemd hosts, under the real build-agent.service (its sandbox:
NoNewPrivileges, ProtectHome, PrivateTmp, ...): a hook that records what it was given, and the
example hook (examples/role.d/50-ci-agent) driving a stand-in CI agent unit with systemctl.

One lab per Debian release: build1 founds the hive; build2 becomes a builder (data/hooks_policy.py)
whose package is installed from the lab's apt repository before its hooks run.  build2 has the CI
unit, build1 has not (the example hook only says what it would do)."""

from __future__ import annotations

import json
import secrets

import pytest

import e2e_harness as hx
from conftest import DATA, measure
from test_e2e_hive import identity, install, lines_in_order

POLICY = "/etc/build/hooks-policy.py"
CI_UNIT = "hive-e2e-ci.service"
OUT = "/var/lib/hive-e2e-hooks"
RECORD_HOOK = f"""#!/bin/sh
set -e
mkdir -p {OUT}
env | sort > {OUT}/env
cat /proc/self/cgroup > {OUT}/cgroup
grep '^NoNewPrivs:' /proc/self/status > {OUT}/nnp
echo "$HIVE_ROLE" >> {OUT}/runs
"""
UNIT = """[Unit]
Description=Stand-in for a CI agent (Build Hive e2e)

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def example_hook() -> str:
    text = (hx.REPO / "examples" / "role.d" / "50-ci-agent").read_text()
    assert "\nCI_UNIT=ci-agent.service " in text
    return text.replace("\nCI_UNIT=ci-agent.service ", f"\nCI_UNIT={CI_UNIT} ")


@pytest.fixture(scope="module")
def hooks_hive(lab):
    nodes = lab.hosts(("build1", 11), ("build2", 12))
    secret = secrets.token_hex(32)
    for host in nodes:
        host.write("/etc/build/shared_secret", secret + "\n", mode=0o600)
        host.write("/etc/build/hive.toml", f'policy = "{POLICY}"\nheartbeat_interval = 2\n')
        host.write(POLICY, (DATA / "hooks_policy.py").read_text())
        host.write("/etc/build/role.d/10-record", RECORD_HOOK, mode=0o755)
        host.write("/etc/build/role.d/50-ci-agent", example_hook(), mode=0o755)
        host.write("/etc/build/role.d/README", "not a hook\n", mode=0o644)
        host.run("chmod", "0755", "/etc/build", "/etc/build/role.d")
    nodes[1].write(f"/etc/systemd/system/{CI_UNIT}", UNIT)
    nodes[1].run("systemctl", "daemon-reload")
    for host in nodes:
        install(host)
    return {h.name: h for h in nodes}


def hooks_record(host: hx.Container, role: str):
    """identity.json's role_hooks once hooks ran for this role, else None."""
    if not host.path("/var/lib/build/identity.json").exists():
        return None
    record = identity(host).get("role_hooks")
    return record if record and record.get("role") == role else None


def hook_env(host: hx.Container) -> dict:
    lines = host.read(f"{OUT}/env").splitlines()
    env = dict(line.split("=", 1) for line in lines)
    for name in ("PWD", "SHLVL", "_", "OLDPWD"):
        env.pop(name, None)
    return env


def unit_state(host: hx.Container) -> tuple[str, str]:
    active = host.run("systemctl", "is-active", CI_UNIT, check=False).stdout.strip()
    enabled = host.run("systemctl", "is-enabled", CI_UNIT, check=False).stdout.strip()
    return active, enabled


def journal_times(host: hx.Container, *needles: str) -> list[float]:
    """The journal time of the first build-agent line containing each needle."""
    out = host.run("journalctl", "--no-pager", "-q", "-o", "short-unix", "-u",
                   "build-agent").stdout.splitlines()
    return [float(next(line for line in out if needle in line).split()[0]) for needle in needles]


def test_a_builders_hooks_run_in_the_agents_unit_once_its_packages_are_in(hooks_hive, lab,
                                                                         diagnose):
    host = hooks_hive["build2"]
    record = hx.wait_for(lambda: hooks_record(host, "builder"), 120, "build2's role hooks")
    ident = identity(host)
    assert ident["provisioned"] is True
    assert record == {"role": "builder", "previous_role": "", "role_since": ident["assigned_at"],
                      "packages": "installed", "results": {"10-record": 0, "50-ci-agent": 0},
                      "ran_at": record["ran_at"]}
    assert hook_env(host) == {"PATH": PATH, "HIVE_ROLE": "builder", "HIVE_PREVIOUS_ROLE": "",
                              "HIVE_IDENTITY": "/var/lib/build/identity.json",
                              "HIVE_PACKAGES_STATE": "installed"}
    # it ran as part of build-agent.service, in its sandbox
    assert "build-agent.service" in host.read(f"{OUT}/cgroup")
    assert host.read(f"{OUT}/nnp").split() == ["NoNewPrivs:", "1"]
    # the example hook's systemctl worked from there: the CI agent runs, and will after a reboot
    assert unit_state(host) == ("active", "enabled")
    journal = host.journal("build-agent")
    lines_in_order(journal, [
        "Consensus: I am a 'builder'",
        "Packages installed: hive-e2e-tool",
        "Running role hooks (role 'builder', no previous role), packages installed: "
        "10-record, 50-ci-agent",
        "Role hook 10-record exited 0 (role 'builder', no previous role)",
        f"Role hook 50-ci-agent: role builder (was none): enabling and starting {CI_UNIT}",
        "Role hook 50-ci-agent exited 0 (role 'builder', no previous role)"])
    assert "README" not in journal
    installed, started, done = journal_times(host, "Packages installed", "Running role hooks",
                                             "Role hook 50-ci-agent exited")
    measure(lab.release, "packages installed -> role hooks started (s)",
            round(started - installed, 3))
    measure(lab.release, "role hooks incl. systemctl enable --now (s)", round(done - started, 3))


def test_without_the_unit_the_example_hook_only_says_so(hooks_hive, diagnose):
    host = hooks_hive["build1"]
    record = hx.wait_for(lambda: hooks_record(host, "founder"), 60, "build1's role hooks")
    assert record["results"] == {"10-record": 0, "50-ci-agent": 0}
    assert hook_env(host)["HIVE_ROLE"] == "founder"
    assert (f"Role hook 50-ci-agent: {CI_UNIT} is not installed: nothing to stop "
            f"(role founder, was none)") in host.journal("build-agent")


def test_a_reboot_keeps_the_ci_agent_and_runs_no_hook(hooks_hive, diagnose):
    host = hooks_hive["build2"]
    hx.wait_for(lambda: hooks_record(host, "builder"), 120, "build2's role hooks")
    host.reboot()
    hx.wait_for(lambda: host.run("systemctl", "is-active", "build-agent",
                                 check=False).stdout.strip() == "active", 60, "build-agent")
    hx.wait_for(lambda: "Already identified as: builder" in host.journal("build-agent", "-b"),
                30, "the agent to start with its identity")
    assert unit_state(host) == ("active", "enabled")
    host.run("sleep", "5")  # heartbeat 2 s: the agent ticked; no hook may have run
    assert host.read(f"{OUT}/runs") == "builder\n"
    assert "Role hook" not in host.journal("build-agent", "-b")


def test_a_role_change_the_agent_did_not_finish_runs_the_hooks_at_start(hooks_hive, diagnose):
    """The agent was stopped right after it wrote a new role (a move from builder to runner)
    and before its hooks ran: at the next start they run, and the CI agent stops."""
    host = hooks_hive["build2"]
    hx.wait_for(lambda: hooks_record(host, "builder"), 120, "build2's role hooks")
    host.run("systemctl", "stop", "build-agent")
    moved = identity(host)
    changed_at = host.run("date", "-u", "+%Y-%m-%dT%H:%M:%SZ").stdout.strip()
    moved.update(role="runner", previous_role="builder", changed_at=changed_at, packages=[],
                 provisioned=False, provision_error=None)
    host.write("/var/lib/build/identity.json", json.dumps(moved, indent=2) + "\n")
    host.run("systemctl", "start", "build-agent")
    record = hx.wait_for(lambda: hooks_record(host, "runner"), 60, "the runner's role hooks")
    assert record["previous_role"] == "builder" and record["role_since"] == changed_at
    assert record["results"] == {"10-record": 0, "50-ci-agent": 0}
    env = hook_env(host)
    assert (env["HIVE_ROLE"], env["HIVE_PREVIOUS_ROLE"]) == ("runner", "builder")
    assert host.read(f"{OUT}/runs") == "builder\nrunner\n"
    assert unit_state(host) == ("inactive", "disabled")
    assert (f"Role hook 50-ci-agent: role runner (was builder): stopping and disabling "
            f"{CI_UNIT}") in host.journal("build-agent")
    # and once they ran cleanly, another restart runs nothing
    host.run("systemctl", "restart", "build-agent")
    host.run("sleep", "5")
    assert host.read(f"{OUT}/runs") == "builder\nrunner\n"


def test_install_sh_refuses_a_hooks_folder_others_may_write(hooks_hive, diagnose):
    host = hooks_hive["build1"]
    invocation = host.run("systemctl", "show", "-p", "InvocationID", "--value",
                          "build-agent").stdout.strip()
    host.run("chmod", "0777", "/etc/build/role.d")
    try:
        result = host.run("bash", "/src/install.sh", check=False, timeout=180)
    finally:
        host.run("chmod", "0755", "/etc/build/role.d")
    assert result.returncode == 1
    assert result.stderr == ("install.sh: role hooks folder /etc/build/role.d has mode 0777 "
                             "(writable by group or others): run 'chmod go-w /etc/build/role.d' "
                             "(build-agent runs role hooks as root)\n")
    assert host.run("systemctl", "show", "-p", "InvocationID", "--value",
                    "build-agent").stdout.strip() == invocation  # nothing was restarted
