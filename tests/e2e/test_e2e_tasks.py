"""Build work in booted systemd hosts: a task runs as a transient unit with a dynamic user, cannot
read the hive's secret or the agent's state, is killed at its time limit and at its memory limit,
and its output lands both in the journal under the task's unit and on the worker (hive task logs).

One lab per Debian release: build1 founds the hive, build2 becomes the controller and build3 a
builder (the default policy); tasks are enabled on build2 and build3.
"""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest

import e2e_harness as hx
from conftest import measure
from test_e2e_hive import install

TASKS = """heartbeat_interval = 2
install_packages = false
[tasks]
enabled = true
roles = ["builder"]
memory_max_mb = 100
"""


@pytest.fixture(scope="module")
def task_hive(lab):
    nodes = lab.hosts(("build1", 11), ("build2", 12), ("build3", 13))
    secret = secrets.token_hex(32)
    for host in nodes:
        host.write("/etc/build/shared_secret", secret + "\n", mode=0o600)
        host.write("/etc/build/hive.toml", TASKS if host.name != "build1"
                   else "heartbeat_interval = 2\ninstall_packages = false\n")
    for host in nodes:
        install(host)
    hive = {h.name: h for h in nodes}
    hx.wait_for(lambda: _task_slots(hive["build2"]), 20, "build2 to see build3's task slots")
    return hive


def _task_slots(host: hx.Container):
    peers = json.loads(host.read("/var/lib/build/peers.json")).get("peers") or []
    return [p for p in peers if (p.get("capacity") or {}).get("task_slots")]


def hive_task(host: hx.Container, *args: str, timeout: float = 120):
    return host.run("hive", "task", *args, check=False, timeout=timeout)


def test_a_task_runs_as_a_dynamic_user_in_a_transient_unit_without_the_secret(task_hive, lab,
                                                                               diagnose):
    ctl, worker = task_hive["build2"], task_hive["build3"]
    script = ("id -u; grep -o 'hive-task-[^/]*' /proc/self/cgroup; pwd; "
              "cat /etc/build/shared_secret; echo secret:$?; ls /var/lib/build; echo state:$?; "
              "touch /usr/x 2>/dev/null; echo usr:$?; exit 3")
    started = time.monotonic()
    result = hive_task(ctl, "run", "--role", "builder", "--", "sh", "-c", script)
    took = time.monotonic() - started
    assert result.returncode == 3, result.stdout + result.stderr
    head, *lines = result.stdout.splitlines()
    match = re.match(r"^task ([0-9a-f]{16}) on build3 \(builder\): exit 3 in [0-9.]+ s$", head)
    assert match, head
    task_id = match.group(1)
    uid = int(lines[0])
    assert 61184 <= uid <= 65519, lines  # systemd's range for dynamic users
    assert lines[1] == f"hive-task-{task_id}-1.service"
    assert lines[2] == "/var/tmp/work"
    assert "secret:1" in lines and "state:2" in lines and "usr:1" in lines
    assert secret_words(worker) not in result.stdout
    # the output is on the worker (root's, 0600) and in the journal under the task's unit
    out = f"/var/lib/build/tasks/out/{task_id}-1.log"
    assert worker.run("stat", "-c", "%U %a", out).stdout.split() == ["root", "600"]
    assert worker.read(out).splitlines()[:3] == lines[:3]
    journal = worker.journal(f"hive-task-{task_id}-1.service")
    assert f"hive-task-{task_id}-1" in journal and str(uid) in journal, journal
    # the whole output comes back through the hive
    logs = hive_task(ctl, "logs", task_id)
    assert logs.returncode == 0 and logs.stdout == worker.read(out)
    # the unit is gone (--collect), no process of it is left
    state = worker.run("systemctl", "is-active", f"hive-task-{task_id}-1.service", check=False)
    assert state.stdout.strip() in ("inactive", "unknown"), state.stdout
    measure(lab.release, "hive task run (sh -c ..., 3 hosts) wall time (s)", round(took, 2))


def secret_words(host: hx.Container) -> str:
    return host.read("/etc/build/shared_secret").strip()


def test_a_task_is_killed_at_its_time_limit(task_hive, lab, diagnose):
    ctl, worker = task_hive["build2"], task_hive["build3"]
    started = time.monotonic()
    result = hive_task(ctl, "run", "--role", "builder", "--timeout", "3", "--", "sh", "-c",
                       "echo going; exec sleep 600")
    took = time.monotonic() - started
    assert result.returncode == 124, result.stdout + result.stderr
    head = result.stdout.splitlines()[0]
    assert "failed: killed at its time limit (3 s)" in head, head
    assert 3 <= took < 20, took
    task_id = head.split()[1]
    assert worker.run("pgrep", "-f", "sleep 600", check=False).returncode == 1  # nothing left
    show = json.loads(hive_task(ctl, "show", task_id, "--json").stdout)
    assert show["result"]["outcome"] == "timeout" and show["exit_status"] == 124
    assert 3 <= show["result"]["duration"] < 10
    measure(lab.release, "task with a 3 s limit: hive task run returned after (s)", round(took, 2))


def test_a_task_over_its_memory_limit_does_not_get_the_memory(task_hive, lab, diagnose):
    """memory_max_mb = 100: the unit has MemoryMax= (the cgroup) and LimitDATA= (per process).
    In these containers systemd has no cgroup v2 memory controller (the machine's cgroups are
    v1/hybrid), so MemoryMax= is not enforced here and LimitDATA= is what stops it; on a host
    with the unified hierarchy the kernel's OOM killer stops it first (outcome: signal 9)."""
    ctl, worker = task_hive["build2"], task_hive["build3"]
    result = hive_task(ctl, "run", "--role", "builder", "--", "python3", "-c",
                       "x = bytearray(400 * 1024 * 1024); print('allocated')")
    head = result.stdout.splitlines()[0] if result.stdout else ""
    assert "allocated" not in result.stdout.splitlines(), result.stdout
    assert result.returncode != 0
    assert ": exit 1 in " in head and "MemoryError" in result.stdout \
        or "over its memory limit" in head, result.stdout
    task_id = head.split()[1]
    unit = worker.journal(f"hive-task-{task_id}-1.service")
    measure(lab.release, "task allocating 400 MB with memory_max_mb = 100",
            head.split(": ", 1)[1] + (" (MemoryError: LimitDATA=)" if "MemoryError" in
                                      result.stdout else " (cgroup OOM kill: MemoryMax=)"))
    assert "MemoryError" in unit or "oom" in unit.lower(), unit
