"""Role hooks across real hosts (scripts/hive-lab): every host's role.d (hive.toml's
role_hooks_dir) runs when the host takes its first identity, with its own role in the
environment, and again after a restart only if the last run did not end cleanly (or a hook was
added since)."""

from __future__ import annotations

import datetime
import json
import time

from lab import log_lines

RECORD_HOOK = """#!/bin/sh
# writes what it was given where the test can see it
out={out}
env | sort > "$out/env"
cp "$HIVE_IDENTITY" "$out/identity-seen.json"
echo "$HIVE_ROLE" >> "$out/runs"
echo "hello from 10-record as $HIVE_ROLE"
"""
MARKER_HOOK = "#!/bin/sh\ntouch {out}/$(basename \"$0\").ran\n"
SHELL_VARS = {"PWD", "SHLVL", "_", "OLDPWD"}


def write(path, text, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def log_time(line: str) -> float:
    """The wall time of an agent.log line (logging's default asctime)."""
    stamp = " ".join(line.split(" ", 2)[:2])
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_each_host_runs_its_role_hooks_on_its_first_identity(make_lab):
    lab = make_lab(heartbeat=1)
    hosts = lab.add(3)
    outs = {}
    for i in hosts:
        role_d, out = lab.host_dir(i) / "role.d", lab.host_dir(i) / "hook-out"
        out.mkdir()
        outs[i] = out
        write(role_d / "10-record", RECORD_HOOK.format(out=out), 0o755)
        write(role_d / "20-skipped.sh", MARKER_HOOK.format(out=out), 0o755)  # a dot: skipped
        write(role_d / "30-not-executable", MARKER_HOOK.format(out=out), 0o644)
        if i == hosts[2]:
            write(role_d / "40-fails", "#!/bin/sh\necho cannot do it >&2\nexit 3\n", 0o755)
    for i in hosts:  # one after another: founder, controller, builder
        lab.start(i)
        lab.wait(i)
    roles = {hosts[0]: "founder", hosts[1]: "controller", hosts[2]: "builder"}
    assert lab.roles(hosts) == roles

    def recorded(i):
        identity = lab.identity(i) or {}
        return identity.get("role_hooks")
    lab.wait_for(lambda: all(recorded(i) for i in hosts), 20, "every host's role_hooks record")

    delays = []
    for i in hosts:
        role, identity = roles[i], lab.identity(i)
        env = dict(line.split("=", 1) for line in (outs[i] / "env").read_text().splitlines())
        for name in SHELL_VARS:
            env.pop(name, None)
        assert env == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "HIVE_ROLE": role, "HIVE_PREVIOUS_ROLE": "",
                       "HIVE_IDENTITY": str(lab.host_dir(i) / "state" / "identity.json"),
                       "HIVE_PACKAGES_STATE": "disabled"}, env
        seen = json.loads((outs[i] / "identity-seen.json").read_text())
        assert (seen["role"], seen["assigned_at"]) == (role, identity["assigned_at"])
        assert (outs[i] / "runs").read_text() == f"{role}\n"
        assert not list(outs[i].glob("*.ran"))  # neither 20-skipped.sh nor 30-not-executable
        expected = {"10-record": 0, **({"40-fails": 3} if role == "builder" else {})}
        assert identity["role_hooks"] == {
            "role": role, "previous_role": "", "role_since": identity["assigned_at"],
            "packages": "disabled", "results": expected,
            "ran_at": identity["role_hooks"]["ran_at"]}
        lines = log_lines(lab.log(i))
        assert f"Role hook 10-record: hello from 10-record as {role}" in lines
        assert f"Role hook 10-record exited 0 (role '{role}', no previous role)" in lines
        if role == "builder":
            assert "Role hook 40-fails: cannot do it" in lines
            assert "Role hook 40-fails exited 3 (role 'builder', no previous role)" in lines
        raw = lab.log(i).splitlines()
        settled = next(line for line in raw if line.endswith(f"Identity: {role}")
                       or line.endswith(f"Consensus: I am a '{role}'"))
        ran = next(line for line in raw if "Role hook 10-record exited 0" in line)
        delays.append(log_time(ran) - log_time(settled))
    print(f"\nidentity settled -> 10-record exited 0: "
          f"{', '.join(f'{d * 1000:.0f} ms' for d in delays)}")

    # Restarts: the controller's hooks all exited 0 for its role, so they do not run again; the
    # builder's 40-fails failed, so its hooks run again (a fixed hook gets its second chance).
    write(lab.host_dir(hosts[2]) / "role.d" / "40-fails", "#!/bin/sh\nexit 0\n", 0o755)
    for i in hosts[1:]:
        lab.restart(i)
    lab.wait_for(lambda: (outs[hosts[2]] / "runs").read_text() == "builder\nbuilder\n", 20,
                 "the builder's hooks to run again")
    lab.wait_for(lambda: recorded(hosts[2])["results"] == {"10-record": 0, "40-fails": 0}, 10,
                 "the builder's clean run to be recorded")
    lab.wait_for(lambda: log_lines(lab.log(hosts[1])).count("Already identified as: controller")
                 == 1, 10, "the controller to restart")
    time.sleep(3)  # heartbeat 1 s: three more ticks in which nothing may run
    assert (outs[hosts[1]] / "runs").read_text() == "controller\n"
    assert log_lines(lab.log(hosts[1])).count(
        "Role hook 10-record exited 0 (role 'controller', no previous role)") == 1
    # A hook added since: the next restart runs the folder again, the new hook with it.
    write(lab.host_dir(hosts[1]) / "role.d" / "20-added", MARKER_HOOK.format(out=outs[hosts[1]]),
          0o755)
    lab.restart(hosts[1])
    lab.wait_for(lambda: (outs[hosts[1]] / "20-added.ran").exists(), 20, "the added hook to run")
    lab.wait_for(lambda: recorded(hosts[1])["results"] == {"10-record": 0, "20-added": 0}, 10,
                 "the controller's new run to be recorded")
    assert (outs[hosts[1]] / "runs").read_text() == "controller\ncontroller\n"


def test_a_move_runs_the_movers_hooks_with_its_previous_role(make_lab):
    """founder, controller, builder; the controller is killed: the builder moves to controller
    (healing) and its hooks, added after it joined, run once with HIVE_PREVIOUS_ROLE=builder."""
    lab = make_lab(heartbeat=1)
    lab.up(3)
    assert lab.roles() == {1: "founder", 2: "controller", 3: "builder"}
    out = lab.host_dir(3) / "hook-out"
    out.mkdir()
    write(lab.host_dir(3) / "role.d" / "10-record", RECORD_HOOK.format(out=out), 0o755)
    lab.kill(2)
    killed = time.monotonic()
    lab.wait_for(lambda: lab.role(3) == "controller", 30, "build3 to move to controller")
    lab.wait_for(lambda: (lab.identity(3) or {}).get("role_hooks", {}).get("role")
                 == "controller", 10, "build3's hooks for its new role")
    print(f"\nkill -9 of the controller -> the mover's hooks ran in "
          f"{time.monotonic() - killed:.2f}s (heartbeat 1 s)")
    identity = lab.identity(3)
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    assert (env["HIVE_ROLE"], env["HIVE_PREVIOUS_ROLE"]) == ("controller", "builder")
    assert identity["role_hooks"]["previous_role"] == "builder"
    assert identity["role_hooks"]["role_since"] == identity["changed_at"]
    assert identity["role_hooks"]["results"] == {"10-record": 0}
    assert "Role hook 10-record exited 0 (role 'controller', was 'builder')" in log_lines(
        lab.log(3))
    time.sleep(3)
    assert (out / "runs").read_text() == "controller\n"  # once
