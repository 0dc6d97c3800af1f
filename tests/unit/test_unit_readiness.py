"""The agent's state for machines (build_agent.readiness): what the agent writes as it joins,
how a reader tells a stale file, and `hive status --wait [--timeout S]`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from build_agent import cli, readiness, state, timing
from build_agent.lifecycle import Phase
from hive_fakes import T0
from test_unit_agent import (ME, advice_fields, deliver, make_agent, run_until,  # noqa: F401
                             step)

BUILDER = {"role": "builder", "packages": ["git", "maven"], "provisioned": False,
           "provision_error": None}


def written(config) -> dict:
    return json.loads(config.agent_state_path.read_text())


# --- what each phase is called ---------------------------------------------------------------------

@pytest.mark.parametrize("phase, identity, expected", [
    (Phase.NEW, None, "joining"),
    (Phase.DISCOVER, None, "joining"),
    (Phase.WAIT, None, "waiting"),
    (Phase.BACKOFF, None, "waiting"),
    (Phase.ASK, None, "asking"),
    (Phase.MOVE, {**BUILDER, "provisioned": True}, "asking"),
    (Phase.OPERATE, BUILDER, "provisioning"),
    (Phase.OPERATE, {**BUILDER, "provisioned": True}, "settled"),
    (Phase.OPERATE, {**BUILDER, "provision_error": "skipped: install_packages = false"}, "settled"),
    (Phase.OPERATE, {**BUILDER, "provision_error": "apt-get install failed (exit 100)"}, "failed"),
])
def test_each_phase_has_a_state_and_a_reason(phase, identity, expected):
    name, reason = readiness.describe(phase, identity, advisors=2, advised=1)
    assert name == expected and name in readiness.STATES and reason
    if expected == "asking":
        assert "1 of 2 member(s) advised" in reason
    if expected == "failed":
        assert "apt-get install failed (exit 100)" in reason and "role 'builder'" in reason


# --- the agent writes it as it goes --------------------------------------------------------------

def test_a_joining_agent_writes_each_state_it_passes(make_agent, config, clock, monkeypatch):
    agent = make_agent()
    seen = []
    original = state.write_json_atomic

    def recording(path, data):
        if str(path) == str(config.agent_state_path):
            seen.append((data["state"], data["identified"]))
        return original(path, data)
    monkeypatch.setattr(state, "write_json_atomic", recording)
    agent.start(T0)
    step(agent, clock, T0)
    assert written(config)["state"] == "joining"
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 0.01, to=ME,
            role="founder", members=1)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + 0.001)
    data = written(config)
    assert (data["state"], data["reason"]) == ("asking", "0 of 1 member(s) advised so far")
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.3, **advice_fields())
    step(agent, clock, T0 + 0.3)
    data = written(config)
    # install_packages is off in the unit tests' config: settled at once, packages skipped
    assert (data["state"], data["identified"], data["role"]) == ("settled", True, "builder")
    assert data["pid"] == os.getpid() and data["since"] == "2026-11-26T12:00:00Z"
    assert seen == [("joining", False), ("asking", False), ("settled", True)], \
        "written once per change, not at every tick"


def test_provisioning_then_failed_with_apt_s_error(make_agent, config, clock):
    cfg = replace(config, install_packages=True)
    state.write_json_atomic(cfg.identity_path, {
        "role": "builder", "packages": ["git"], "config": {}, "assigned_by": ["build1"],
        "assigned_at": "2026-11-25T10:00:00Z", "provisioned": False})
    release = []

    def slow_failing(packages):
        while not release:
            time.sleep(0.01)
        return "apt-get install failed (exit 100): E: Unable to locate package git"
    agent = make_agent(installer=slow_failing, cfg=cfg)
    agent.start(T0)
    step(agent, clock, T0)
    assert (written(cfg)["state"], written(cfg)["identified"]) == ("provisioning", True)
    release.append(True)
    agent.provisioner.join(5)
    step(agent, clock, T0 + 1)
    data = written(cfg)
    assert data["state"] == "failed" and "Unable to locate package git" in data["reason"]


# --- the reader: is the file the running agent's? -------------------------------------------------

def write_state(path, pid, name="settled"):
    state.write_json_atomic(path, {"state": name, "reason": "role 'builder'", "since": "x",
                                   "identified": True, "role": "builder", "pid": pid})


def test_a_file_of_a_running_agent_is_its_state(tmp_path):
    path = tmp_path / "agent-state.json"
    write_state(path, 1234)
    data = readiness.current(str(path), is_agent=lambda pid: pid == 1234, unit=lambda: "active")
    assert (data["state"], data["identified"]) == ("settled", True)


@pytest.mark.parametrize("unit, expected", [
    ("active", ("joining", "build-agent is starting (active)")),        # restarted a moment ago
    ("activating", ("joining", "build-agent is starting (activating)")),
    ("failed", ("failed", "build-agent is failed: see 'systemctl status build-agent' and "
                          "'journalctl -u build-agent -p warning'")),
    ("inactive", ("failed", "build-agent is inactive: see 'systemctl status build-agent' and "
                            "'journalctl -u build-agent -p warning'")),
    (None, ("failed", "build-agent is not running")),                   # no systemd here
])
def test_a_stale_or_missing_file_is_not_taken_for_the_state(tmp_path, unit, expected):
    path = tmp_path / "agent-state.json"
    for setup in (lambda: write_state(path, 1234), lambda: path.unlink(),
                  lambda: path.write_text("{not json")):
        setup()
        data = readiness.current(str(path), is_agent=lambda pid: False, unit=lambda: unit)
        assert (data["state"], data["reason"]) == expected and data["identified"] is False


def test_pid_is_agent_knows_a_build_agent_process(tmp_path):
    fake = tmp_path / "build_agent"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import time\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-m", "build_agent", "--config", "x"],
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10  # (its cmdline is empty until it has exec'd)
        while not readiness.pid_is_agent(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert readiness.pid_is_agent(proc.pid)
        assert not readiness.pid_is_agent(os.getpid())  # pytest
        assert not readiness.pid_is_agent(None) and not readiness.pid_is_agent("12")
    finally:
        proc.kill()
        proc.wait()
    assert not readiness.pid_is_agent(proc.pid)


# --- hive status --wait ----------------------------------------------------------------------------

class Script:
    """agent_state() answering a scripted sequence; a fake clock that sleep() moves."""

    def __init__(self, *states):
        self.states = list(states)
        self.now = 0.0
        self.sleeps = 0

    def agent_state(self, path):
        name = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"state": name, "reason": f"because {name}", "since": None,
                "identified": name in ("provisioning", "settled"), "role": None}

    def sleep(self, seconds):
        assert seconds == timing.STATUS_WAIT_POLL
        self.sleeps += 1
        self.now += seconds


def status(config, script, *argv):
    args = cli.build_parser().parse_args(["status", *argv])
    return cli.cmd_status(config, args, sleep=script.sleep, monotonic=lambda: script.now,
                          agent_state=script.agent_state)


def test_wait_returns_0_once_settled(config, capsys):
    script = Script("joining", "asking", "provisioning", "settled")
    assert status(config, script, "--wait", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["agent"]["state"] == "settled" and script.sleeps == 3


def test_wait_returns_1_with_the_reason_when_failed(config, capsys):
    script = Script("asking", "failed")
    assert status(config, script, "--wait") == 1
    captured = capsys.readouterr()
    assert captured.err == "hive: failed: because failed\n"
    assert "State:       failed (because failed)" in captured.out


def test_wait_gives_up_after_the_timeout(config, capsys):
    script = Script("waiting")
    assert status(config, script, "--wait", "--timeout", "1") == 1
    assert capsys.readouterr().err == "hive: still waiting after 1 s: because waiting\n"
    assert script.sleeps == round(1 / timing.STATUS_WAIT_POLL)


def test_without_wait_status_reports_the_state_and_exits_0(config, capsys):
    script = Script("asking")
    assert status(config, script, "--json") == 0
    assert json.loads(capsys.readouterr().out)["agent"]["state"] == "asking"
    assert script.sleeps == 0


def test_timeout_must_be_seconds(capsys):
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["status", "--wait", "--timeout", bad])
    assert "is not a number of seconds" in capsys.readouterr().err
