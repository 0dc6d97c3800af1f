"""scripts/bootstrap.sh in network namespaces on a private bridge (10.78.201.0/24): the report,
the parallel arping scan, --claim, the hive's announced candidates, and its clear errors."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BOOTSTRAP = REPO / "scripts" / "bootstrap.sh"
SUBNET = "10.78.201"
TAG = f"hvbt{os.getpid() % 1000}"

sys.path.insert(0, str(REPO))
from build_agent import protocol  # noqa: E402


def sh(*argv, check=True, timeout=30, **kwargs):
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}): {result.stdout}{result.stderr}")
    return result


class Net:
    def __init__(self, workdir: Path) -> None:
        self.bridge = f"{TAG}br"
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.veths: list[str] = []
        self.secret = secrets.token_hex(32)
        sh("ip", "link", "del", self.bridge, check=False)
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")

    def host(self, name: str, octet: int | None, default_route: bool = True) -> str:
        ns = f"{TAG}-{name}"
        veth = f"{TAG}{name}"[:15]
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", veth, check=False)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.veths.append(veth)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if octet is not None:
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{octet}/24", "brd", "+", "dev", "eth0")
            if default_route:
                sh("ip", "-n", ns, "route", "add", "default", "via", f"{SUBNET}.1")
        # a hive config per host: its own secret file and state dir with a node id
        home = self.workdir / name
        (home / "state").mkdir(parents=True, exist_ok=True)
        (home / "state/node_id").write_text(f"00000000-0000-4000-8000-{octet or 0:012d}\n")
        secret = home / "shared_secret"
        secret.write_text(self.secret + "\n")
        secret.chmod(0o600)
        (home / "hive.toml").write_text(f'secret_file = "{secret}"\nstate_dir = "{home}/state"\n')
        return ns

    def config(self, name: str) -> str:
        return str(self.workdir / name / "hive.toml")

    def teardown(self) -> None:
        # Delete the veths ourselves: a deleted namespace takes its end away only later (the
        # kernel cleans namespaces up asynchronously), and the next test reuses the names.
        for veth in self.veths:
            sh("ip", "link", "del", veth, check=False)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


@pytest.fixture
def net(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("bootstrap tests need root (network namespaces, arping): run as root like CI")
    if shutil.which("arping") is None:
        pytest.fail("bootstrap tests need arping (apt-get install arping)")
    the_net = Net(tmp_path)
    yield the_net
    the_net.teardown()


def bootstrap(ns: str, *args: str, check: bool = True, env: dict | None = None, prefix=()):
    return sh("ip", "netns", "exec", ns, *prefix, "bash", str(BOOTSTRAP), *args, check=check,
              timeout=60, env=env)


def test_report_json_and_parallel_scan_of_a_busy_subnet(net):
    me = net.host("me", 10)
    busy = net.host("busy", 11)
    for octet in range(12, 61):  # .11 .. .60: 50 used addresses right after ours
        sh("ip", "-n", busy, "addr", "add", f"{SUBNET}.{octet}/24", "dev", "eth0")
    started = time.monotonic()
    out = bootstrap(me, "--config", net.config("me")).stdout
    elapsed = time.monotonic() - started
    assert out.splitlines() == ["Interface : eth0", f"Address   : {SUBNET}.10/24",
                                f"Broadcast : {SUBNET}.255", f"Next free : {SUBNET}.61"]
    assert elapsed < 5, f"scanning 50 used addresses took {elapsed:.1f}s"
    data = json.loads(bootstrap(me, "--json", "--config", net.config("me")).stdout)
    assert data == {"interface": "eth0", "address": f"{SUBNET}.10/24",
                    "broadcast": f"{SUBNET}.255", "next_free": f"{SUBNET}.61"}


def test_wraps_around_and_never_offers_network_broadcast_gateway_or_own(net):
    me = net.host("me", 254)  # default route via .1, which nobody holds here
    out = bootstrap(me, "--no-hive").stdout
    # after .254 comes only the broadcast .255; the scan wraps to .1 (the gateway), then .2
    assert f"Next free : {SUBNET}.2" in out.splitlines(), out


def test_claim_adds_announces_and_is_idempotent(net):
    me = net.host("me", 20)
    peer = net.host("peer", 21)
    out = bootstrap(me, "--claim", "--config", net.config("me")).stdout
    assert f"Claimed {SUBNET}.22/24 on eth0" in out.splitlines()
    assert f"{SUBNET}.22/24" in sh("ip", "-n", me, "-o", "-4", "addr", "show", "dev", "eth0").stdout
    # the peer now sees .22 as used
    assert sh("ip", "netns", "exec", peer, "arping", "-q", "-C", "1", "-c", "3", "-w", "3",
              "-i", "eth0", f"{SUBNET}.22", check=False).returncode == 0
    again = bootstrap(me, "--claim", "--json", "--config", net.config("me")).stdout
    assert json.loads(again)["claimed"] == f"{SUBNET}.22/24"
    addrs = sh("ip", "-n", me, "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert addrs.count("inet ") == 2


def _announcer(ns: str, net: Net, candidate: str, primary: str, seconds: float):
    """Another hive member (signed HELLO with candidate_ip) announcing CANDIDATE for a while."""
    code = (
        "import socket, sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from build_agent import protocol\n"
        "secret, cand, primary, seconds, bcast = sys.argv[2].encode(), sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
        "end = time.monotonic() + seconds\n"
        "while time.monotonic() < end:\n"
        "    p = protocol.make_payload('HELLO', '11111111-2222-4333-8444-555555555555', 'other', primary, time.time(), candidate_ip=cand)\n"
        "    s.sendto(protocol.encode(p, secret), (bcast, 50555))\n"
        "    time.sleep(0.2)\n")
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, str(REPO),
                             net.secret, candidate, primary, str(seconds), f"{SUBNET}.255"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_skips_a_candidate_another_member_announces(net):
    me = net.host("me", 30)
    other = net.host("other", 5)  # lower primary address: its claim wins
    sender = _announcer(other, net, f"{SUBNET}.31", f"{SUBNET}.5", 15)
    try:
        time.sleep(0.3)
        report = bootstrap(me, "--config", net.config("me")).stdout
        assert f"Next free : {SUBNET}.32" in report, report
        out = bootstrap(me, "--claim", "--config", net.config("me")).stdout
        assert f"Claimed {SUBNET}.32/24 on eth0" in out, out
    finally:
        sender.kill()
        sender.wait(5)


def test_two_nodes_claiming_at_once_get_different_addresses(net):
    first = net.host("first", 40)
    second = net.host("second", 41)
    procs = [subprocess.Popen(["ip", "netns", "exec", ns, "bash", str(BOOTSTRAP), "--claim",
                               "--json", "--config", net.config(name)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ns, name in ((first, "first"), (second, "second"))]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    claimed = {r["claimed"] for r in results}
    assert len(claimed) == 2, results
    assert claimed <= {f"{SUBNET}.{n}/24" for n in range(42, 50)}


def test_errors_are_one_clear_line(net):
    no_route = net.host("noroute", 50, default_route=False)
    result = bootstrap(no_route, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == ("bootstrap.sh: no IPv4 default route: name the LAN interface "
                                     "with --iface IFACE")
    no_ipv4 = net.host("noip", None)
    result = bootstrap(no_ipv4, "--iface", "eth0", check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == ("bootstrap.sh: interface eth0 has no IPv4 address "
                                     "(see 'ip -br addr')")
    env = dict(os.environ, PATH="/usr/bin:/bin")
    result = bootstrap(no_route, "--iface", "eth0", check=False, env=env)
    assert result.returncode != 0
    assert result.stderr.strip() == ("bootstrap.sh: 'arping' is required but missing "
                                     "(apt-get install arping)")
    nobody = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
    result = bootstrap(no_route, "--iface", "eth0", "--claim", check=False, prefix=nobody)
    assert result.returncode != 0
    assert "--claim must run as root" in result.stderr and result.stderr.count("\n") == 1
    result = bootstrap(no_route, "--bogus", check=False)
    assert result.returncode != 0 and "unknown option '--bogus'" in result.stderr
