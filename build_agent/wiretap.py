"""`hive watch`: every hive datagram this node sends or receives, seen on the wire.

A packet socket (AF_PACKET, all interfaces, every protocol: only those see outgoing frames too)
sees a copy of each IPv4 packet in both directions, before any daemon reads it: broadcast,
multicast and unicast (WELCOME, ADVICE), from and to both daemons, forged ones too.  No daemon
socket is touched, so the agent keeps its own address exclusively.  It needs root
(CAP_NET_RAW); the secret (to verify) is root's too.

Pure parts for tests: ``parse_ipv4`` (one packet -> UDP datagram or fragment), ``Reassembler``
(IP fragments -> datagrams: a hive datagram may be up to 8192 bytes, more than one frame) and
``classify`` (bytes -> verified message or why not).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Sequence

from . import protocol

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
PACKET_LOOPBACK = 5
REASSEMBLY_TIMEOUT = 5.0  # seconds an incomplete fragmented datagram is kept
MAX_PENDING = 256         # fragmented datagrams being reassembled at once

COPY_WINDOW = 5.0         # seconds: the same datagram again, to another address, is a copy
# What watch says of a datagram: "ok", or why a receiver drops it.  DUPLICATE: the same signed
# datagram came a moment ago to another of this node's addresses (a sender reaches a node by
# broadcast and by unicast while it is not sure the broadcast arrives): dropped, harmless.
OK, UNSIGNED, FORGED, REPLAYED, STALE, INVALID, DUPLICATE = (
    "ok", "UNSIGNED", "FORGED", "REPLAYED", "STALE", "INVALID", "DUPLICATE")


@dataclass
class Packet:
    """One IPv4 packet carrying UDP (or a fragment of it)."""
    src: str
    dst: str
    ident: int
    offset: int       # in bytes
    more: bool        # more fragments follow
    payload: bytes    # the IP payload (UDP header included in the first fragment)


def parse_ipv4(data: bytes) -> Packet | None:
    """An IPv4 packet -> Packet if it carries UDP, else None."""
    if len(data) < 20 or data[0] >> 4 != 4 or data[9] != 17:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = struct.unpack("!H", data[2:4])[0]
    if ihl < 20 or total < ihl or len(data) < total:
        return None
    ident, flags = struct.unpack("!HH", data[4:8])
    return Packet(socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20]), ident,
                  (flags & 0x1FFF) * 8, bool(flags & 0x2000), data[ihl:total])


@dataclass
class Datagram:
    src: str
    sport: int
    dst: str
    dport: int
    data: bytes


def udp_datagram(src: str, dst: str, payload: bytes) -> Datagram | None:
    if len(payload) < 8:
        return None
    sport, dport, length = struct.unpack("!HHH", payload[:6])
    if length < 8:
        return None
    return Datagram(src, sport, dst, dport, payload[8:length])


@dataclass
class Reassembler:
    """IP fragments -> whole UDP datagrams (keyed by source, destination and IP id)."""
    timeout: float = REASSEMBLY_TIMEOUT
    pending: dict = field(default_factory=dict)  # key -> [first seen, {offset: bytes}, total]

    def add(self, packet: Packet, now: float) -> Datagram | None:
        if packet.offset == 0 and not packet.more:
            return udp_datagram(packet.src, packet.dst, packet.payload)
        self._expire(now)
        key = (packet.src, packet.dst, packet.ident)
        entry = self.pending.setdefault(key, [now, {}, None])
        entry[1][packet.offset] = packet.payload
        if not packet.more:
            entry[2] = packet.offset + len(packet.payload)
        if entry[2] is None:
            return None
        data, at = b"", 0
        for offset in sorted(entry[1]):
            if offset != at:
                return None  # a hole: wait for the missing fragment
            data += entry[1][offset]
            at = offset + len(entry[1][offset])
        if at != entry[2]:
            return None
        del self.pending[key]
        return udp_datagram(packet.src, packet.dst, data)

    def _expire(self, now: float) -> None:
        for key in [k for k, v in self.pending.items() if now - v[0] > self.timeout]:
            del self.pending[key]
        while len(self.pending) >= MAX_PENDING:
            del self.pending[next(iter(self.pending))]


@dataclass
class Verdict:
    status: str                # OK, UNSIGNED, FORGED, REPLAYED, STALE or INVALID
    reason: str                # the receiver's reason ("" when ok)
    payload: dict | None       # what the datagram says, verified or not (None: not JSON)
    message: protocol.Message | None = None


def classify(data: bytes, secrets: Sequence[bytes], now: float,
             guard: protocol.ReplayGuard | None) -> Verdict:
    """Decode a datagram as a receiver would (the same checks, in ``protocol.decode``) and say
    what it is.  ``guard`` (None: no replay check) remembers what was accepted."""
    try:
        payload, _sig = protocol.parse_envelope(data)
    except protocol.ProtocolError as exc:
        return Verdict(UNSIGNED, str(exc), _claimed(data))
    try:
        message = protocol.decode(data, secrets, now, seen=guard)
        if guard is not None and guard.is_replay(message, now):
            raise protocol.ProtocolError("replayed")
    except protocol.ProtocolError as exc:
        reason = str(exc)
        status = {"bad signature": FORGED, "replayed": REPLAYED, "stale": STALE}.get(reason,
                                                                                   INVALID)
        return Verdict(status, reason, payload)
    return Verdict(OK, "", message.payload, message)


def _claimed(data: bytes) -> dict | None:
    """What an unsigned datagram says, if it is a JSON object (its payload if it has one)."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(value, dict) and isinstance(value.get("payload"), dict):
        return value["payload"]
    return value if isinstance(value, dict) else None


def describe(payload: dict | None, data: bytes) -> str:
    """'STATUS    build1       role="builder" ...' (the kind's own fields as key=value)."""
    if payload is None:
        text = data[:60].decode("utf-8", "replace").replace("\n", " ")
        return f"({len(data)} bytes: {text!r})"
    skip = {"kind", "node_id", "hostname", "primary_ip", "ts", "capabilities"}
    fields = " ".join(f"{key}={json.dumps(value, separators=(',', ':'))}"
                      for key, value in payload.items() if key not in skip)
    return f"{str(payload.get('kind', '?')):<9} {str(payload.get('hostname', '?')):<12} " \
           f"{fields}".rstrip()


def open_capture() -> socket.socket:
    """A packet socket on every interface, every protocol (PermissionError without root)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    except OSError:
        pass
    return sock


class Tap:
    """Feeds packets from a packet socket; yields the hive's datagrams with their direction."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.fragments = Reassembler()
        self._recent: dict[bytes, tuple[str, float]] = {}  # datagram -> (destination, when)

    def copy_of_recent(self, datagram: Datagram, now: float) -> bool:
        """Did the same bytes arrive within COPY_WINDOW at another destination address?
        (Remembers this one.)"""
        for key in [k for k, (_, t) in self._recent.items() if now - t > COPY_WINDOW]:
            del self._recent[key]
        before = self._recent.get(datagram.data)
        self._recent[datagram.data] = (datagram.dst, now)
        return before is not None and before[0] != datagram.dst

    def feed(self, frame: bytes, address: tuple, now: float) -> tuple[str, Datagram] | None:
        """One frame from recvfrom(): ("out" or "in", datagram), or None if not the hive's."""
        ifname, proto, pkttype = address[0], address[1], address[2]
        if proto != ETH_P_IP or pkttype == PACKET_LOOPBACK:
            return None
        if ifname == "lo" and pkttype == PACKET_OUTGOING:
            return None  # on lo each packet shows twice: keep the copy that arrives
        packet = parse_ipv4(frame)
        if packet is None:
            return None
        datagram = self.fragments.add(packet, now)
        if datagram is None or self.port not in (datagram.sport, datagram.dport):
            return None
        if ipaddress.IPv4Address(datagram.dst).is_loopback:
            return None  # the agent handing a request to its advisor: seen when it arrived
        # (To this node's own address, on lo: the daemons receive it, so it is "in".)
        return ("out" if pkttype == PACKET_OUTGOING else "in"), datagram
