"""etcd as coordinator: the registration under a lease, the member list, the role guard
(compare-and-swap on a revision), an unreachable etcd and its return.  A fake etcd here; the
real one (Debian's etcd-server) in tests/test_lab_subnets.py."""

from __future__ import annotations

import json
import logging

import pytest

from build_agent import timing
from build_agent.etcd import EtcdError, Registry, RoleGuard, prefix_end

PREFIX = "/build-hive/"


class FakeEtcd:
    """The v3 semantics the registry uses: revisions, leases (expired by hand), txn on a key's
    mod revision.  ``down`` makes every call fail like a refused connection."""

    def __init__(self) -> None:
        self.revision = 1
        self.kv: dict[str, tuple[str, int, str | None]] = {}  # key -> (value, mod_rev, lease)
        self.leases: dict[str, int] = {}
        self.down = False
        self.calls: list[str] = []
        self._next_lease = 100

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise EtcdError("http://10.0.0.5:2379: [Errno 111] Connection refused")

    def _put(self, key, value, lease):
        if lease is not None and lease not in self.leases:
            raise EtcdError("http://10.0.0.5:2379: etcdserver: requested lease not found")
        self.revision += 1
        self.kv[key] = (value, self.revision, lease)

    def grant(self, ttl):
        self._call("grant")
        self._next_lease += 1
        self.leases[str(self._next_lease)] = ttl
        return str(self._next_lease)

    def keepalive(self, lease):
        self._call("keepalive")
        return self.leases.get(lease, 0)

    def revoke(self, lease):
        self._call("revoke")
        self.expire(lease)

    def expire(self, lease):
        self.leases.pop(lease, None)
        for key in [k for k, (_, _, owner) in self.kv.items() if owner == lease]:
            del self.kv[key]
            self.revision += 1

    def put(self, key, value, lease=None):
        self._call("put")
        self._put(key, value, lease)
        return self.revision

    def delete(self, key):
        self._call("delete")
        self.kv.pop(key, None)

    def range_prefix(self, prefix):
        self._call("range")
        end = prefix_end(prefix)
        return self.revision, sorted((k, v, rev) for k, (v, rev, _) in self.kv.items()
                                     if prefix <= k < end)

    def txn_put_if(self, key, mod_revision, puts):
        self._call("txn")
        current = self.kv.get(key, (None, 0, None))[1]
        if current != mod_revision:
            return False
        for put_key, value, lease in puts:
            self._put(put_key, value, lease)
        return True


def record(node_id, ip, role=None, hostname=None):
    return {"node_id": node_id, "hostname": hostname or node_id, "ip": ip, "port": 50555,
            "role": role, "joining_since": None}


@pytest.fixture
def etcd():
    return FakeEtcd()


def registry(etcd, node_id="n1", interval=1.0):
    return Registry(["http://10.0.0.5:2379"], PREFIX, node_id, interval, client=etcd)


def test_prefix_end():
    assert prefix_end("/build-hive/") == "/build-hive0"
    assert prefix_end("a") == "b"


def test_registers_under_a_lease_and_reads_the_members(etcd):
    other = registry(etcd, "n2")
    other.set_record(record("n2", "10.8.2.22", "founder"), joining=False)
    other._cycle()
    mine = registry(etcd)
    mine.set_record(record("n1", "10.8.1.21"), joining=True)
    mine._cycle()
    assert json.loads(etcd.kv[PREFIX + "members/n1"][0])["ip"] == "10.8.1.21"
    assert etcd.kv[PREFIX + "members/n1"][2] == mine.lease
    assert etcd.leases[mine.lease] == timing.ETCD_LEASE_INTERVALS * 1  # 3 heartbeats
    assert mine.addresses() == [("10.8.2.22", 50555)]  # not ourselves
    assert mine.reachable is True


def test_the_lease_lives_three_heartbeats_in_whole_seconds_and_at_least_two(etcd):
    assert registry(etcd, interval=10).ttl == 30
    assert registry(etcd, interval=0.5).ttl == timing.ETCD_MIN_TTL
    assert registry(etcd, interval=1.4).ttl == 5  # 4.2 rounded up


def test_the_record_is_written_again_only_when_it_changed(etcd):
    mine = registry(etcd)
    mine.set_record(record("n1", "10.8.1.21"), joining=True)
    mine._cycle()
    etcd.calls.clear()
    mine._cycle()
    assert etcd.calls == ["keepalive", "range"]
    mine.set_record(record("n1", "10.8.1.21", "runner"), joining=False)
    mine._cycle()
    assert "put" in etcd.calls
    assert json.loads(etcd.kv[PREFIX + "members/n1"][0])["role"] == "runner"


def test_an_expired_lease_registers_again(etcd, caplog):
    mine = registry(etcd)
    mine.set_record(record("n1", "10.8.1.21", "runner"), joining=False)
    mine._cycle()
    etcd.expire(mine.lease)  # e.g. a long pause: the key went with it
    assert PREFIX + "members/n1" not in etcd.kv
    caplog.set_level(logging.INFO)
    mine._cycle()
    assert PREFIX + "members/n1" in etcd.kv
    assert "expired: registering again" in caplog.text


def test_a_new_node_id_moves_the_key(etcd):
    mine = registry(etcd)
    mine.set_record(record("n1", "10.8.1.21", "runner"), joining=False)
    mine._cycle()
    mine.set_record(record("n1b", "10.8.1.21", "runner"), joining=False)
    mine._cycle()
    assert sorted(etcd.kv) == [PREFIX + "members/n1b"]


def test_unreachable_is_said_once_and_its_return_once(etcd, caplog):
    caplog.set_level(logging.INFO)
    mine = registry(etcd)
    mine.set_record(record("n1", "10.8.1.21", "runner"), joining=False)
    mine._cycle()
    etcd.down = True
    mine._cycle()
    mine._cycle()
    assert mine.reachable is False
    assert caplog.text.count("etcd is unreachable") == 1
    assert mine.status()["reachable"] is False and "refused" in mine.status()["error"]
    assert mine.guard_begin() is None  # no guard while it does not answer ...
    assert mine.guard_claim(None, record("n1", "10.8.1.21", "runner")) == "unguarded"
    etcd.down = False
    etcd.expire(mine.lease)  # it lost our lease meanwhile
    mine._cycle()
    assert caplog.text.count("etcd answers again") == 1
    assert mine.reachable is True and PREFIX + "members/n1" in etcd.kv


def test_stop_revokes_the_lease_so_the_key_goes_at_once(etcd):
    mine = registry(etcd)
    mine.start(record("n1", "10.8.1.21", "runner"), joining=False)
    mine.stop()
    assert PREFIX + "members/n1" not in etcd.kv


def test_the_guard_lets_one_of_two_simultaneous_claims_through(etcd):
    """Two joiners on different subnets asked the hive at the same moment (same revision read):
    exactly one takes the role; the other is told to ask again."""
    a, b = registry(etcd, "na"), registry(etcd, "nb")
    for reg, ip in ((a, "10.8.1.21"), (b, "10.8.2.22")):
        reg.set_record(record(reg.node_id, ip), joining=True)
        reg._cycle()
    guard_a, guard_b = a.guard_begin(), b.guard_begin()
    assert guard_a.revision == guard_b.revision == 0  # nobody settled yet
    assert a.guard_claim(guard_a, record("na", "10.8.1.21", "controller")) == "ok"
    assert b.guard_claim(guard_b, record("nb", "10.8.2.22", "controller")) == "conflict"
    settled = json.loads(etcd.kv[PREFIX + "settled"][0])
    assert settled["node_id"] == "na" and settled["role"] == "controller"
    assert json.loads(etcd.kv[PREFIX + "members/na"][0])["role"] == "controller"
    # b reads again (its view now holds na) and takes the next role.
    guard_b = b.guard_begin()
    assert guard_b.last["node_id"] == "na"
    assert {r["node_id"] for r in guard_b.records} == {"na", "nb"}
    assert b.guard_claim(guard_b, record("nb", "10.8.2.22", "builder")) == "ok"


class FakeRegistry:
    def __init__(self, guards, results=()):
        self.guards = list(guards)
        self.results = list(results)
        self.claims = []

    def guard_begin(self):
        return self.guards.pop(0)

    def guard_claim(self, guard, rec):
        self.claims.append((guard, rec["role"]))
        return self.results.pop(0)


def role_guard(reg, members=None, hellos=None):
    members = {} if members is None else members
    return RoleGuard(reg, lambda role: record("me", "10.8.1.21", role),
                     lambda node_id, role: node_id in members and role in (None,
                                                                           members[node_id]),
                     (hellos if hellos is not None else []).append)


def test_a_joiner_waits_for_the_last_settler_to_be_in_its_view():
    from build_agent.etcd import Guard
    members = {}
    guard = Guard(7, {"node_id": "nx", "role": "controller"})
    rg = role_guard(FakeRegistry([guard]), members)
    hold = rg.begin(100.0)
    assert hold == 100.0 + timing.GUARD_VIEW_WAIT
    assert rg.begin(100.5) == hold  # (no second read while it holds)
    members["nx"] = "controller"
    assert rg.begin(100.6) is None  # in view: ask, and claim against revision 7


def test_the_wait_for_the_last_settler_is_bounded():
    from build_agent.etcd import Guard
    rg = role_guard(FakeRegistry([Guard(7, {"node_id": "nx", "role": "controller"})]))
    assert rg.begin(100.0) is not None
    assert rg.begin(100.0 + timing.GUARD_VIEW_WAIT) is None


def test_a_would_be_founder_says_hello_to_members_etcd_knows_instead():
    from build_agent.etcd import Guard
    hellos = []
    members = {}
    listed = [record("nf", "10.8.2.22", "founder"), record("me", "10.8.1.21")]
    reg = FakeRegistry([Guard(3, None, listed), Guard(3, None, listed)])
    rg = role_guard(reg, members, hellos)
    assert rg.begin(10.0, founding=True) == 10.0 + timing.GUARD_VIEW_WAIT
    assert hellos == [[("10.8.2.22", 50555)]]
    assert rg.begin(10.0 + timing.GUARD_VIEW_WAIT, founding=True) == 10.0 + \
        timing.GUARD_VIEW_WAIT  # still unheard: read again (a dead one's key expires) ...
    assert rg.begin(10.0 + timing.GUARD_VIEW_WAIT, founding=True) is not None  # ... and hold
    assert len(hellos) == 2


def test_claims_conflict_and_unguarded(caplog):
    from build_agent.etcd import Guard
    reg = FakeRegistry([Guard(1, None), Guard(1, None), False], ["conflict", "ok", "unguarded"])
    rg = role_guard(reg)
    assert rg.begin(0.0) is None and rg.claim("controller") is False
    assert rg.begin(1.0) is None and rg.claim("controller") is True
    caplog.set_level(logging.WARNING)
    assert rg.begin(2.0) is None and rg.claim("builder") is True
    assert "without etcd's guard" in caplog.text
    assert [role for _, role in reg.claims] == ["controller", "controller", "builder"]
