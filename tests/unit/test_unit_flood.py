"""Floods: the daemons drop garbage and replays cheaply, and a flood does not delay real work.

- ``protocol.precheck`` looks at the raw bytes only (shape, magic) and never refuses a datagram
  ``decode`` would accept; what it refuses, ``decode`` refuses too;
- ``ReplayGuard.repeated``: an exact copy of a datagram accepted lately is a replay, dropped
  before it is parsed;
- the loop (``daemon.run``) ticks the service only when something happened (a verified
  datagram, a local event, a deadline), not for every wake-up that brought only garbage, and
  reads the agent's own unicast socket before a flooded broadcast socket.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from build_agent import daemon, protocol
from build_agent.daemon import Service
from build_agent.netif import Listener
from build_agent.protocol import MAGIC, ProtocolError
from hive_fakes import SECRET, T0

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _status(i: int, now: float = T0, capacity: dict | None = None) -> dict:
    if capacity is None:
        capacity = {"slots": 2, "note": 'quotes " and \\ backslash'}
    return protocol.make_payload("STATUS", f"peer-{i}", f"build{i}", f"10.9.0.{10 + i}", now,
                                 role="runner", state="ready", load=[0.1, 0.2, 0.3], interval=10,
                                 capacity=capacity)


def _decodes(data: bytes, now: float = T0) -> bool:
    try:
        protocol.decode(data, [SECRET], now)
        return True
    except ProtocolError:
        return False


# --- precheck: never refuses a valid datagram ----------------------------------------------

def _variants(payload: dict) -> list[bytes]:
    """The same signed message as different senders may write it: compact (ours), with the
    default separators, pretty-printed, with blanks around, with '/' escaped as '\\/', with
    every non-ASCII character escaped or not, keys of the envelope in another order."""
    sig = protocol.sign(payload, SECRET)
    envelope = {"magic": MAGIC, "payload": payload, "sig": sig}
    reordered = {"sig": sig, "payload": payload, "magic": MAGIC}
    compact = json.dumps(envelope, separators=(",", ":"))
    return [compact.encode(),
            json.dumps(envelope).encode(),
            json.dumps(envelope, indent=2).encode(),
            b" \r\n\t" + compact.encode() + b"\n ",
            compact.replace("/", "\\/").encode(),
            compact.replace('"BUILD', '"\\u0042UILD').encode(),
            json.dumps(envelope, ensure_ascii=False).encode(),
            json.dumps(reordered, separators=(",", ":")).encode()]


def test_precheck_accepts_every_valid_spelling():
    for payload in (_status(1), _status(2, capacity={"label": "ünïcode/slash"}),
                    protocol.make_payload("HELLO", "peer-3", "build3", "10.9.0.13", T0),
                    protocol.make_payload("ADVICE", "adv-1", "build1", "10.9.0.11", T0,
                                          to="peer-3", suggested_role="runner", packages=[],
                                          config={"x": "a/b"}, reason="why")):
        for data in _variants(payload):
            assert protocol.precheck(data) is None, data[:80]
            assert _decodes(data), data[:80]


@settings(FUZZ)
@given(st.integers(0, 50), st.dictionaries(st.sampled_from(["note", "x", "path"]),
                                           st.text(max_size=30), max_size=3))
def test_precheck_accepts_fuzzed_valid_messages(i, capacity):
    for data in _variants(_status(i, capacity=capacity)):
        assert protocol.precheck(data) is None
        assert _decodes(data)


# --- precheck: what it refuses, decode refuses -------------------------------------------------

GARBAGE = {
    b"": "not json",
    b"\xff\xfe\x00\x01": "not json",
    b"random bytes that are not json": "not json",
    b'{"magic":"BUILD/HELLO/v1","payload":{"kind":"HELLO"},"sig":"ab': "not json",
    b'{"magic":"BUILD/HELLO/v0","payload":{"kind":"HELLO"},"sig":"00"}': "wrong magic",
    b'{"magic":"' + bytes([0xFF, 0xFE, 0x10, 0xC3]) + b'"}': "wrong magic",
    b"[1, 2, 3]": "not json",
    b"x" * (protocol.MAX_DATAGRAM + 1): "oversized",
    b"{" + b" " * protocol.MAX_DATAGRAM + b"}": "oversized",
}


def test_precheck_refuses_garbage_that_decode_refuses():
    for data, reason in GARBAGE.items():
        assert protocol.precheck(data) == reason, data[:60]
        assert not _decodes(data)


@settings(FUZZ, max_examples=400)
@given(st.binary(max_size=600)
       | st.builds(lambda head, tail: head + MAGIC.encode() + tail,
                   st.binary(max_size=40), st.binary(max_size=40)))
def test_precheck_refusal_implies_decode_refusal(data):
    if protocol.precheck(data) is not None:
        assert not _decodes(data)


@settings(FUZZ, max_examples=300)
@given(st.integers(0, 20), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)),
                                    min_size=1, max_size=4))
def test_precheck_on_damaged_real_datagrams(i, edits):
    data = bytearray(protocol.encode(_status(i), SECRET))
    for position, byte in edits:
        data[position % len(data)] = byte
    data = bytes(data)
    if protocol.precheck(data) is not None:
        assert not _decodes(data)


# --- the receive path ------------------------------------------------------------------------

class Sink(Service):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.handled: list = []

    def handle(self, message, source_ip, now):
        self.handled.append(message.node_id)

    def tick(self, now):
        return float("inf")


def test_exact_copy_is_dropped_before_parsing(monkeypatch):
    service = Sink(None, [SECRET], "me")
    good = protocol.encode(_status(1), SECRET)
    assert service.receive(good, ("10.9.0.11", 50555), T0) is not None

    def no_parsing(*args, **kwargs):
        raise AssertionError("a replayed copy was parsed")

    monkeypatch.setattr(protocol, "decode", no_parsing)
    for n in range(3):
        assert service.receive(good, ("10.9.0.66", 50555), T0 + n) is None
    assert service.rejects.counts["replayed"] == 3
    assert service.received == 1


def test_garbage_is_dropped_before_parsing(monkeypatch):
    service = Sink(None, [SECRET], "me")
    monkeypatch.setattr(protocol, "decode", lambda *a, **k: pytest.fail("garbage was parsed"))
    for data in GARBAGE:
        assert service.receive(data, ("10.9.0.66", 50555), T0) is None
    assert service.rejects.total == len(GARBAGE)


def test_valid_messages_still_accepted_and_older_replays_still_refused():
    service = Sink(None, [SECRET], "me")
    first = protocol.encode(_status(1, now=T0), SECRET)
    newer = protocol.encode(_status(1, now=T0 + 10), SECRET)
    assert service.receive(first, ("10.9.0.11", 50555), T0) is not None
    assert service.receive(newer, ("10.9.0.11", 50555), T0 + 10) is not None
    assert service.receive(first, ("10.9.0.11", 50555), T0 + 11) is None  # by bytes
    service.replays._recent.clear()  # forgotten by bytes: the guard by sender still refuses it
    assert service.receive(first, ("10.9.0.11", 50555), T0 + 12) is None
    assert service.rejects.counts["replayed"] == 2
    assert service.received == 2


def test_recent_copies_are_bounded():
    guard = protocol.ReplayGuard(recent=8)
    datagrams = [protocol.encode(_status(i), SECRET) for i in range(20)]
    for data in datagrams:
        guard.accepted(data)
    assert len(guard._recent) == 8
    assert guard.repeated(datagrams[-1]) and not guard.repeated(datagrams[0])


def test_flood_mix_is_cheap_to_drop():
    """A printed measurement, not a timing assert: microseconds per dropped datagram."""
    service = Sink(None, [SECRET], "me")
    real = [protocol.encode(_status(i), SECRET) for i in range(20)]
    for data in real:
        service.receive(data, ("10.9.0.11", 50555), T0)
    rng = random.Random(3)
    pool = real + [bytes(rng.randrange(256) for _ in range(200)) for _ in range(20)] \
        + [d[:-7] for d in real]
    t0 = time.perf_counter()
    for n in range(3000):
        assert service.receive(pool[n % len(pool)], ("10.9.0.66", 50555), T0) is None
    per = (time.perf_counter() - t0) / 3000 * 1e6
    print(f"flood mix: {per:.2f} us per dropped datagram")
    assert service.rejects.total == 3000


# --- the loop ----------------------------------------------------------------------------------

class LoopProbe(Service):
    """Counts ticks; stops at the second deadline (or after ``stop_after`` handled messages)."""

    def __init__(self, period: float, stop_after: int = 0) -> None:
        super().__init__(None, [SECRET], "me")
        self.period, self.stop_after = period, stop_after
        self.ticks = 0
        self.deadline = 0.0
        self.handled: list[str] = []

    def handle(self, message, source_ip, now):
        self.handled.append(message.node_id)
        if self.stop_after and len(self.handled) >= self.stop_after:
            self.stopping = True

    def tick(self, now):
        self.ticks += 1
        if self.deadline and now >= self.deadline:
            self.stopping = True
            return now
        if not self.deadline:
            self.deadline = now + self.period
        return self.deadline


@pytest.fixture
def udp_pair():
    """Two bound loopback sockets (as a daemon's broadcast and unicast sockets) and a sender."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    socks = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        socks.append(sock)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield socks, sender
    for sock in socks + [sender]:
        sock.close()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_a_flood_of_garbage_costs_no_ticks(udp_pair):
    (flooded, _), sender = udp_pair
    for n in range(300):  # more than several batches (max_batch) of garbage, queued already
        sender.sendto(b"garbage %d" % n, flooded.getsockname())
    probe = LoopProbe(period=0.3)
    daemon.run(probe, [Listener(flooded, "broadcast", lambda channel: None)])
    assert probe.rejects.total == 300
    assert probe.ticks == 2  # the first one and the deadline's: none for the garbage


def test_a_verified_datagram_gets_its_tick(udp_pair):
    (sock, _), sender = udp_pair
    for n in range(100):
        sender.sendto(b"garbage %d" % n, sock.getsockname())
    sender.sendto(protocol.encode(_status(1, now=time.time()), SECRET), sock.getsockname())
    probe = LoopProbe(period=0.3)
    daemon.run(probe, [Listener(sock, "broadcast", lambda channel: None)])
    assert probe.handled == ["peer-1"]
    assert probe.ticks == 3  # the first, the one after the real message, the deadline's


def test_unicast_is_read_before_a_flooded_broadcast_socket(udp_pair):
    (flooded, unicast), sender = udp_pair
    now = time.time()
    sender.sendto(protocol.encode(_status(1, now=now), SECRET), flooded.getsockname())
    for n in range(200):
        sender.sendto(b"garbage %d" % n, flooded.getsockname())
    sender.sendto(protocol.encode(_status(2, now=now), SECRET), unicast.getsockname())
    probe = LoopProbe(period=2.0, stop_after=2)
    # the flooded socket first in the list: the order of the sockets must not matter
    daemon.run(probe, [Listener(flooded, "broadcast", lambda channel: None),
                       Listener(unicast, "unicast", lambda channel: None)])
    assert probe.handled == ["peer-2", "peer-1"]


def test_what_came_to_this_node_alone_is_acted_on_before_the_broadcast_backlog(udp_pair):
    """A reply read from the unicast socket gets its tick before the broadcast socket is read
    (a joiner's advice behind 100 others' broadcasts), with ``behind`` set: the rest is still
    queued."""
    (flooded, unicast), sender = udp_pair
    now = time.time()
    for n in range(1, 41):
        sender.sendto(protocol.encode(_status(n, now=now), SECRET), flooded.getsockname())
    sender.sendto(protocol.encode(_status(99, now=now), SECRET), unicast.getsockname())
    seen: list[tuple[list[str], bool]] = []

    class Recorder(LoopProbe):
        def tick(self, now):
            seen.append((list(self.handled), self.behind))
            return super().tick(now)

    probe = Recorder(period=0.5)
    daemon.run(probe, [Listener(flooded, "broadcast", lambda channel: None),
                       Listener(unicast, "unicast", lambda channel: None)])
    assert seen[0] == ([], False)  # the first tick, before anything came
    assert (["peer-99"], True) in seen  # the reply alone, the broadcasts still queued
    assert len(probe.handled) == 41

