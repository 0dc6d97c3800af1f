"""Observing the hive on booted systemd hosts, both install paths: the metrics file written by
the sandboxed build-agent unit into node_exporter's textfile folder (checked by the real
promtool), and `hive watch` / `hive send` as an operator runs them.

build1 founds the hive with install.sh, build2 joins it with the Debian package; both have
node_exporter's folder /var/lib/prometheus/node-exporter before the install.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import time

import pytest

import e2e_harness as hx
from test_e2e_deb import apt
from test_e2e_hive import SECRET_RE, SEED_WAY, identity, install

PROM_DIR = "/var/lib/prometheus/node-exporter"
PROM_FILE = f"{PROM_DIR}/build_hive.prom"


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


@pytest.fixture(scope="module")
def obs_hive(lab, release):
    build1, build2 = lab.hosts(("build1", 11), ("build2", 12))
    for host in (build1, build2):
        host.run("mkdir", "-p", PROM_DIR)
    build1.write("/etc/build/hive.toml", "heartbeat_interval = 2\n")
    out, _ = install(build1)
    secret = SECRET_RE.search(out).group(1)
    build2.bash(SEED_WAY.format(secret=secret))
    www = release["deb"].parent
    url = f"{lab.server.url}/{release['deb'].relative_to(www).as_posix()}"
    build2.run("curl", "-fsS", "-o", f"/tmp/{release['deb'].name}", url)
    apt(build2, "install", f"/tmp/{release['deb'].name}")
    hx.wait_for(lambda: build2.path("/var/lib/build/identity.json").exists(), 60,
                "build2's identity (the package)")
    return {"build1": build1, "build2": build2, "secret": secret}


def test_both_install_paths_write_the_metrics_file_under_the_units_sandbox(obs_hive, diagnose):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    for name in ("build1", "build2"):
        host = obs_hive[name]
        path = host.path(PROM_FILE)

        def counts_both() -> bool:
            try:
                got = samples(path.read_text())
            except FileNotFoundError:
                return False
            return sum(v for k, v in got.items() if k.startswith("build_hive_members{")) == 2
        hx.wait_for(counts_both, 40, f"{name}'s metrics file to count 2 members")
        assert path.stat().st_mode & 0o777 == 0o644 and path.stat().st_uid == 0
        text = path.read_text()
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        role = identity(host)["role"]
        assert samples(text)[f'build_hive_role_info{{role="{role}"}}'] == 1
        # Written by the unit's process, as root, through its sandbox.
        assert host.run("systemctl", "is-active", "build-agent").stdout.strip() == "active"
        assert "Cannot write the metrics file" not in host.journal("build-agent")
        before = path.stat().st_mtime_ns
        hx.wait_for(lambda: path.stat().st_mtime_ns != before, 30,
                    f"{name}'s metrics file to be rewritten at a heartbeat")


def test_watch_and_send_on_installed_nodes(obs_hive, diagnose):
    build1, build2 = obs_hive["build1"], obs_hive["build2"]
    ip2 = json.loads(build2.run("hive", "status", "--json").stdout)["ip"]
    # In the background inside build2 (as Container.run runs a command), for 8 s.
    watch = subprocess.Popen(
        ["nsenter", "-t", str(build2.pid), "-a", "--", *hx.CLEAN_ENV, "hive", "watch", "--json",
         "--seconds", "8"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # the capture is open well before this (it prints 'Watching' at once)
        sent = build1.run("hive", "send", "STATUS", "node_id=e2e-ghost-1", "hostname=ghost1",
                          "role=tester", "interval=30", "state=active", "--to", ip2).stdout
        assert sent.startswith("Sent STATUS")
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines() if line]
    seen = collections.Counter((r["direction"], r["status"], (r["payload"] or {}).get("kind"),
                                (r["payload"] or {}).get("hostname")) for r in records)
    assert seen[("in", "ok", "STATUS", "ghost1")] == 1, seen
    assert seen[("in", "ok", "STATUS", "build1")] >= 1, seen   # build1's heartbeats (2 s)
    hx.wait_for(lambda: "ghost1" in {p["hostname"] for p in json.loads(
        build2.read("/var/lib/build/peers.json"))["peers"]}, 10, "build2 to list ghost1")
    assert obs_hive["secret"] not in out + err
