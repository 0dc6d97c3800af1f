"""etcd as the hive's coordinator (hive.toml: discovery = [..., "etcd"], [etcd] endpoints).

etcd's own v3 JSON API over HTTP (the gRPC gateway under /v3/ on the client port), with the
standard library only.  Keys, under the configured prefix:

  PREFIX members/NODE_ID   this node's record (JSON: node_id, hostname, ip, port, role,
                           joining_since), under a lease of ETCD_LEASE_INTERVALS heartbeats that
                           every heartbeat renews: a dead node's key expires with its lease
  PREFIX settled           the last node that took a role (JSON: node_id, hostname, role, at)

Newcomers read the members' addresses here and then talk to them as with seeds.  The role
guard: a node reads the revision of ``settled`` before it asks the hive (``guard_begin``) and,
when the hive has answered, takes its role in one transaction that succeeds only if nobody
took a role since (compare-and-swap on that revision, ``guard_claim``): two nodes that asked at
the same moment without hearing each other can never both take the role the hive needed once;
the second asks again.

The agent's loop never waits on the network for the record and its lease: a worker thread
renews the lease, writes the record when it changes and reads the member list.  The guard's two
requests are made from the loop (bounded by ETCD_REQUEST_TIMEOUT) and skipped while etcd is
known to be unreachable.  An unreachable etcd is said once (and its return once); the hive keeps
working on the other methods meanwhile.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from . import timing

LOG = logging.getLogger(__name__)


class EtcdError(Exception):
    """etcd did not answer, or answered with an error: the message says which."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "replace")


def prefix_end(prefix: str) -> str:
    """The end of the key range holding every key that starts with ``prefix``."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode("latin-1") if raw else "\0"


class Client(Protocol):
    def grant(self, ttl: int) -> str: ...
    def keepalive(self, lease: str) -> int: ...
    def revoke(self, lease: str) -> None: ...
    def put(self, key: str, value: str, lease: str | None = None) -> int: ...
    def delete(self, key: str) -> None: ...
    def range_prefix(self, prefix: str) -> tuple[int, list[tuple[str, str, int]]]: ...
    def txn_put_if(self, key: str, mod_revision: int,
                   puts: Sequence[tuple[str, str, str | None]]) -> bool: ...


class HttpClient:
    """etcd v3's JSON gateway over urllib.  Every request has a timeout; the endpoints are tried
    in turn, starting with the last one that answered.  Proxies from the environment are not
    used (etcd is on the hive's network)."""

    def __init__(self, endpoints: Sequence[str], timeout: float = timing.ETCD_REQUEST_TIMEOUT
                 ) -> None:
        import urllib.request  # only nodes that use etcd pay for http.client and ssl
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._request = urllib.request.Request
        self._preferred = 0

    def _post(self, path: str, body: dict) -> dict:
        import urllib.error
        errors = []
        for step in range(len(self.endpoints)):
            index = (self._preferred + step) % len(self.endpoints)
            url = self.endpoints[index] + path
            request = self._request(url, data=json.dumps(body).encode(), method="POST",
                                    headers={"Content-Type": "application/json"})
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    text = response.read(1 << 22).decode("utf-8")
            except urllib.error.HTTPError as exc:  # etcd answered: an error of the request
                try:
                    detail = json.loads(exc.read(65536).decode("utf-8")).get("error") or exc.reason
                except (ValueError, OSError, AttributeError):
                    detail = exc.reason
                raise EtcdError(f"{self.endpoints[index]}: {detail}") from None
            except (OSError, ValueError) as exc:  # URLError, timeouts, refused, reset
                reason = getattr(exc, "reason", exc)
                errors.append(f"{self.endpoints[index]}: {reason}")
                continue
            self._preferred = index
            try:
                # A streaming call (keepalive) answers one JSON object per line.
                return json.loads(text.splitlines()[0]) if text.strip() else {}
            except ValueError:
                raise EtcdError(f"{self.endpoints[index]}: not JSON: {text[:80]!r}") from None
        raise EtcdError("; ".join(errors))

    def grant(self, ttl: int) -> str:
        lease = self._post("/v3/lease/grant", {"TTL": ttl}).get("ID")
        if not lease:
            raise EtcdError("no lease granted")
        return str(lease)

    def keepalive(self, lease: str) -> int:
        result = self._post("/v3/lease/keepalive", {"ID": lease}).get("result") or {}
        return int(result.get("TTL") or 0)

    def revoke(self, lease: str) -> None:
        self._post("/v3/lease/revoke", {"ID": lease})

    def put(self, key: str, value: str, lease: str | None = None) -> int:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int((self._post("/v3/kv/put", body).get("header") or {}).get("revision") or 0)

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(key)})

    def range_prefix(self, prefix: str) -> tuple[int, list[tuple[str, str, int]]]:
        answer = self._post("/v3/kv/range", {"key": _b64(prefix),
                                              "range_end": _b64(prefix_end(prefix))})
        revision = int((answer.get("header") or {}).get("revision") or 0)
        kvs = [(_unb64(kv.get("key", "")), _unb64(kv.get("value", "")),
                int(kv.get("mod_revision") or 0)) for kv in answer.get("kvs") or []]
        return revision, kvs

    def txn_put_if(self, key: str, mod_revision: int,
                   puts: Sequence[tuple[str, str, str | None]]) -> bool:
        success = []
        for put_key, value, lease in puts:
            request = {"key": _b64(put_key), "value": _b64(value)}
            if lease:
                request["lease"] = lease
            success.append({"request_put": request})
        answer = self._post("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(mod_revision)}],
            "success": success, "failure": []})
        return answer.get("succeeded") is True  # etcd leaves out a false one


@dataclass
class Guard:
    """What ``guard_begin`` read: the revision to compare and the node that settled last."""
    revision: int
    last: dict | None
    records: list[dict] = field(default_factory=list)


def _record(value: str) -> dict | None:
    """A member record from etcd, or None if it is not one (another program's key)."""
    try:
        data = json.loads(value)
        ipaddress.IPv4Address(data["ip"])
        port = data.get("port")
        if not isinstance(data.get("node_id"), str) or isinstance(port, bool) \
                or not isinstance(port, int) or not 1 <= port <= 65535 \
                or not isinstance(data.get("role"), (str, type(None))):
            return None
        return data
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class Registry:
    """This node's record in etcd, under a lease, and the hive's records as last read."""

    def __init__(self, endpoints: Sequence[str], prefix: str, node_id: str, interval: float,
                 client: Client | None = None, steady: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.endpoints = list(endpoints)
        self.prefix = prefix
        self.client = client if client is not None else HttpClient(endpoints)
        self.interval = interval
        self.ttl = max(timing.ETCD_MIN_TTL,
                       int(-(-timing.ETCD_LEASE_INTERVALS * interval // 1)))  # whole seconds, up
        self.steady, self.wall = steady, wall
        self._lock = threading.Lock()
        self._lease_lock = threading.Lock()  # the worker and the guard may both need a lease
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.node_id = node_id
        self._written_key: str | None = None
        self._record: dict | None = None     # what this node's key should say
        self._written: dict | None = None    # what it says (as far as we know)
        self._joining = True
        self.lease: str | None = None
        self._records: list[dict] = []
        self.reachable: bool | None = None   # None: not tried yet
        self.error = ""
        self.changed_at = wall()

    # --- keys -------------------------------------------------------------------------------
    @property
    def members_prefix(self) -> str:
        return self.prefix + "members/"

    @property
    def settled_key(self) -> str:
        return self.prefix + "settled"

    def _key(self, node_id: str) -> str:
        return self.members_prefix + node_id

    # --- what the agent calls ---------------------------------------------------------------
    def start(self, record: dict, joining: bool) -> None:
        """First contact, from the loop before it runs (bounded), then the worker thread."""
        self.set_record(record, joining)
        self._cycle()
        self._thread = threading.Thread(target=self._work, name="etcd", daemon=True)
        self._thread.start()

    def set_record(self, record: dict, joining: bool) -> None:
        """What this node's key says (written by the worker when it changed)."""
        with self._lock:
            changed = record != self._record or joining != self._joining
            self._record, self._joining = dict(record), joining
            if record.get("node_id") and record["node_id"] != self.node_id:
                self.node_id = record["node_id"]  # a clone took a fresh id: a new key
        if changed:
            self._wake.set()

    def records(self) -> list[dict]:
        with self._lock:
            return list(self._records)

    def addresses(self) -> list[tuple[str, int]]:
        return [(r["ip"], r["port"]) for r in self.records() if r["node_id"] != self.node_id]

    def status(self) -> dict:
        return {"endpoints": self.endpoints, "prefix": self.prefix,
                "reachable": self.reachable, "error": self.error or None,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.changed_at))}

    def stop(self) -> None:
        """Leave: stop the worker and revoke the lease, so our key goes at once."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * timing.ETCD_REQUEST_TIMEOUT)
        lease = self.lease
        if lease and self.reachable:
            try:
                self.client.revoke(lease)
            except EtcdError as exc:
                LOG.debug("Could not revoke the etcd lease: %s", exc)

    # --- the role guard ---------------------------------------------------------------------
    def guard_begin(self) -> Guard | None:
        """Before asking the hive: the revision of ``settled`` now (None: no guard, etcd is
        unreachable; the hive then decides as without etcd)."""
        if not self.reachable:
            return None
        try:
            _revision, kvs = self.client.range_prefix(self.prefix)
        except EtcdError as exc:
            self._failed(exc)
            return None
        guard = Guard(0, None)
        for key, value, mod_revision in kvs:
            if key == self.settled_key:
                guard.revision = mod_revision
                try:
                    last = json.loads(value)
                    guard.last = last if isinstance(last, dict) else None
                except ValueError:
                    guard.last = None
            elif key.startswith(self.members_prefix):
                record = _record(value)
                if record is not None:
                    guard.records.append(record)
        with self._lock:
            self._records = guard.records
        return guard

    def guard_claim(self, guard: Guard | None, record: dict) -> str:
        """Take the role in ``record`` if nobody took one since ``guard`` was read:
        "ok", "conflict" (someone did: ask again) or "unguarded" (etcd unreachable)."""
        if guard is None:
            return "unguarded"
        settled = {"node_id": record["node_id"], "hostname": record.get("hostname"),
                   "role": record.get("role"),
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall()))}
        try:
            lease = self._ensure_lease()
            won = self.client.txn_put_if(self.settled_key, guard.revision, [
                (self.settled_key, json.dumps(settled), None),
                (self._key(record["node_id"]), json.dumps(record), lease)])
        except EtcdError as exc:
            self._failed(exc)
            return "unguarded"
        if won:
            with self._lock:
                self._record = self._written = dict(record)
                self._written_key = self._key(record["node_id"])
                self._joining = False
            return "ok"
        return "conflict"

    # --- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopped:
            with self._lock:
                joining = self._joining
            period = self.interval if not joining else min(self.interval,
                                                           timing.ETCD_JOINING_POLL)
            if not self.reachable:
                period = min(period, timing.ETCD_RETRY)
            self._wake.wait(period)
            self._wake.clear()
            if self._stopped:
                break
            try:
                self._cycle()
            except Exception:  # a bug must not end the renewals silently
                LOG.exception("etcd worker")

    def _ensure_lease(self) -> str:
        with self._lease_lock:
            if self.lease is None:
                self.lease = self.client.grant(self.ttl)
                with self._lock:
                    self._written = None  # a new lease: the record must be written under it
            return self.lease

    def _cycle(self) -> None:
        """Renew the lease, write our record if it changed, read the members."""
        try:
            if self.lease is not None and self.client.keepalive(self.lease) <= 0:
                LOG.info("etcd lease %s expired: registering again", self.lease)
                self.lease = None
            lease = self._ensure_lease()
            with self._lock:
                record, written, key = self._record, self._written, self._written_key
            if record is not None and (record != written or key != self._key(record["node_id"])):
                if key is not None and key != self._key(record["node_id"]):
                    self.client.delete(key)
                try:
                    self.client.put(self._key(record["node_id"]), json.dumps(record), lease)
                except EtcdError as exc:
                    if "lease not found" not in str(exc):
                        raise
                    self.lease = None
                    lease = self._ensure_lease()
                    self.client.put(self._key(record["node_id"]), json.dumps(record), lease)
                with self._lock:
                    self._written, self._written_key = record, self._key(record["node_id"])
            _revision, kvs = self.client.range_prefix(self.members_prefix)
        except EtcdError as exc:
            self._failed(exc)
            return
        records = [r for r in (_record(value) for _key, value, _rev in kvs) if r is not None]
        with self._lock:
            self._records = records
        if self.reachable is not True:
            if self.reachable is False:
                LOG.warning("etcd answers again (%s): this node is registered and reads the "
                            "hive's members there again", ", ".join(self.endpoints))
            else:
                LOG.info("Registered in etcd (%s) under %s", ", ".join(self.endpoints),
                         self.members_prefix)
            self.reachable, self.error, self.changed_at = True, "", self.wall()

    def _failed(self, exc: EtcdError) -> None:
        if self.reachable is not False:
            LOG.warning("etcd is unreachable (%s): the hive keeps working on its other methods "
                        "and the members it knows; trying again every %g s", exc,
                        timing.ETCD_RETRY)
            self.reachable, self.changed_at = False, self.wall()
        self.error = str(exc)
        self.lease = None if "lease not found" in str(exc) else self.lease


class RoleGuard:
    """etcd's role guard for the join/move state machine (lifecycle.Guard).

    ``begin`` reads the revision the claim will compare (once per round; kept while it holds).
    A joiner holds (at most GUARD_VIEW_WAIT) until the node etcd says took a role last is in its
    view with that role, so the hive's advice counts it; a would-be founder that etcd shows
    members it has not heard says HELLO to them and holds instead of founding.  ``claim`` is the
    transaction.  While etcd does not answer there is no guard: the hive decides as on one
    subnet (said by the agent)."""

    def __init__(self, registry: Registry, record: Callable[[str | None], dict],
                 in_view: Callable[[str, str | None], bool],
                 hello: Callable[[list[tuple[str, int]]], None]) -> None:
        self.registry = registry
        self.record = record      # role -> this node's record with that role
        self.in_view = in_view    # (node id, role or None: any) -> a member in our view?
        self.hello = hello        # say HELLO to these addresses
        self._pending: Guard | bool | None = None  # read for the next round (False: no answer)
        self._active: Guard | None = None
        self._until = 0.0

    def begin(self, now: float, founding: bool = False, move: bool = False) -> float | None:
        if self._pending is None or move:
            self._pending = self.registry.guard_begin() or False
            self._until = now + timing.GUARD_VIEW_WAIT
            if founding and self._pending:
                others = self._unheard_members(self._pending)
                if others:
                    LOG.info("etcd lists %d member(s) this node has not heard from: saying "
                             "HELLO to them rather than founding a hive", len(others))
                    self.hello(others)
        guard = self._pending or None
        if guard is not None and not move:
            if founding and self._unheard_members(guard):
                if now < self._until:
                    return self._until
                self._pending = None  # read again: a dead member's key expires with its lease
                return now
            last = guard.last or {}
            if last.get("node_id") not in (None, self.record(None)["node_id"]) \
                    and not self.in_view(last["node_id"], last.get("role")) and now < self._until:
                return self._until
        self._active, self._pending = guard, None
        return None

    def _unheard_members(self, guard: Guard) -> list[tuple[str, int]]:
        me = self.record(None)["node_id"]
        return [(r["ip"], r["port"]) for r in guard.records
                if r.get("role") and r["node_id"] != me and not self.in_view(r["node_id"], None)]

    def claim(self, role: str) -> bool:
        guard, self._active = self._active, None
        result = self.registry.guard_claim(guard, self.record(role))
        if result == "conflict":
            LOG.info("Another node took a role while the hive answered this one (etcd's "
                     "guard): asking again")
            return False
        if result == "unguarded":
            LOG.warning("Taking the role '%s' without etcd's guard: etcd does not answer", role)
        return True
