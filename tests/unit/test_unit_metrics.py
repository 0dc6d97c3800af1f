"""The metrics file: the renderer (pure), the exporter, and the agent's counters and writes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace

import pytest

from build_agent import metrics, protocol, timing
from build_agent.config import ConfigError, _check
from test_unit_agent import deliver, make_agent, run_until, step  # noqa: F401 (fixture)
from hive_fakes import SECRET, T0


def snap(**kw) -> metrics.Snapshot:
    values = dict(hostname="build5", node_id="eeee-5", role="builder", role_since=T0 - 90,
                  started=T0 - 100, agent_state="settled", provisioned=True,
                  members=[("builder", "active"), ("builder", "active"), ("founder", "active"),
                           ("controller", "moving")], joining=1)
    values.update(kw)
    return metrics.Snapshot(**values)


def samples(text: str) -> dict[str, float]:
    """'name{labels}' -> value, for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def promtool_check(text: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)


def test_render_counts_members_by_role_and_status_and_says_the_role():
    counters = metrics.Counters()
    counters.sent.update({"STATUS": 7, "HELLO": 3})
    counters.received.update({"WELCOME": 2})
    counters.peer_joins, counters.own_joins, counters.peer_moves, counters.own_moves = 4, 1, 2, 0
    text = metrics.render(T0, snap(), counters, {"bad signature": 5, "stale": 1})
    got = samples(text)
    assert got['build_hive_members{role="builder",status="active"}'] == 2
    assert got['build_hive_members{role="founder",status="active"}'] == 1
    assert got['build_hive_members{role="controller",status="moving"}'] == 1
    assert got['build_hive_role_info{role="builder"}'] == 1
    assert got["build_hive_role_duration_seconds"] == 90
    assert got["build_hive_role_since_timestamp_seconds"] == T0 - 90
    assert got['build_hive_agent_state{state="settled"}'] == 1
    assert got['build_hive_agent_state{state="provisioning"}'] == 0
    assert got["build_hive_provisioned"] == 1
    assert got["build_hive_joining_nodes"] == 1
    assert got["build_hive_peer_joins_total"] == 4 and got["build_hive_own_joins_total"] == 1
    assert got["build_hive_peer_moves_total"] == 2 and got["build_hive_own_moves_total"] == 0
    assert got['build_hive_messages_sent_total{kind="STATUS"}'] == 7
    assert got['build_hive_messages_sent_total{kind="ADVICE"}'] == 0  # every kind, from 0
    assert got['build_hive_messages_received_total{kind="WELCOME"}'] == 2
    assert got['build_hive_messages_rejected_total{reason="bad signature"}'] == 5
    # Every family has HELP and TYPE, counters end in _total.
    for name in {re.match(r"[a-z_]+", k).group(0) for k in got}:
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text
        assert name.endswith("_total") == (f"# TYPE {name} counter" in text)
    assert promtool_check(text).returncode == 0, promtool_check(text).stderr


def test_render_without_a_role_has_no_role_samples_and_is_valid():
    text = metrics.render(T0, snap(role=None, role_since=None, agent_state="joining",
                                   provisioned=None, members=[]), metrics.Counters(), {})
    assert "build_hive_role_info{" not in text and "role_duration" not in text
    assert samples(text)['build_hive_agent_state{state="joining"}'] == 1
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_label_values_are_escaped():
    assert metrics.escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    text = metrics.render(T0, snap(hostname='we"ird\\host'), metrics.Counters(),
                          {'not "json"\n': 1})
    assert 'hostname="we\\"ird\\\\host"' in text
    assert 'reason="not \\"json\\"\\n"' in text
    assert promtool_check(text).returncode == 0


def test_exporter_writes_0644_atomically_only_when_the_folder_exists(tmp_path):
    path = tmp_path / "node-exporter" / "build_hive.prom"
    exporter = metrics.Exporter(str(path))
    assert not exporter.enabled and exporter.write("x 1\n") is False
    assert not path.parent.exists()  # never created
    path.parent.mkdir()
    os.umask(0o077)
    try:
        assert exporter.write("x 1\n") is True
    finally:
        os.umask(0o022)
    assert path.read_text() == "x 1\n"
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["build_hive.prom"]  # no temp left
    assert metrics.Exporter("").enabled is False


def test_config_key_metrics_file():
    assert _check("metrics_file", "") == ""
    assert _check("metrics_file", "/srv/x/hive.prom") == "/srv/x/hive.prom"
    for bad in ("relative.prom", "/var/lib/x.txt", 3):
        with pytest.raises(ConfigError, match="metrics_file"):
            _check("metrics_file", bad)


def test_agent_writes_metrics_on_changes_and_each_heartbeat(make_agent, config, clock):
    path = config.metrics_file
    os.makedirs(os.path.dirname(path))
    agent = make_agent()
    agent.start(T0)
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX, start=T0)  # founder
    got = samples(open(path).read())
    assert got['build_hive_role_info{role="founder"}'] == 1
    assert got["build_hive_own_joins_total"] == 1
    assert got['build_hive_members{role="founder",status="active"}'] == 1
    assert got['build_hive_messages_sent_total{kind="HELLO"}'] == len(timing.HELLO_SCHEDULE)
    # A member appears, then changes role: counted, written (at most every METRICS_MIN_GAP).
    now = T0 + 3
    deliver(agent, "STATUS", "aaaa-1", "build1", "10.9.0.11", now, role="builder", interval=10)
    run_until(agent, clock, now + timing.METRICS_MIN_GAP)
    deliver(agent, "STATUS", "aaaa-1", "build1", "10.9.0.11", now + 1.5, role="runner",
            interval=10)
    run_until(agent, clock, now + 1.5 + timing.METRICS_MIN_GAP)
    got = samples(open(path).read())
    assert got["build_hive_peer_joins_total"] == 1 and got["build_hive_peer_moves_total"] == 1
    assert got['build_hive_members{role="runner",status="active"}'] == 1
    assert got['build_hive_messages_received_total{kind="STATUS"}'] == 2
    # A forged datagram is counted by reason.
    forged = protocol.encode(protocol.make_payload("STATUS", "bbbb", "build9", "10.9.0.19",
                                                   now + 2, role="builder"), b"x" * 20)
    assert agent.receive(forged, ("10.9.0.19", 50555), now + 2) is None
    mtime = os.stat(path).st_mtime_ns
    run_until(agent, clock, now + 2 + config.heartbeat_interval + 0.01)
    assert os.stat(path).st_mtime_ns != mtime  # rewritten at the heartbeat
    got = samples(open(path).read())
    assert got['build_hive_messages_rejected_total{reason="bad signature"}'] == 1
    assert promtool_check(open(path).read()).returncode == 0


def test_agent_without_the_folder_writes_nothing(make_agent, config, clock):
    agent = make_agent(cfg=replace(config, metrics_file=config.metrics_file))
    agent.start(T0)
    run_until(agent, clock, T0 + 15, start=T0)
    assert not os.path.exists(os.path.dirname(config.metrics_file))
