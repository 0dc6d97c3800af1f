"""Measurement 7: bytes each lab host sends and receives, per protocol, from the bridge side.

One AF_PACKET socket in the machine's own namespace sees every frame that crosses the lab's
host-side veths (``<lab>v<I>``).  A frame leaving the veth towards the namespace (PACKET_OUTGOING)
is one host I *received*; any other frame on it is one host I *sent*.  Frames are counted whole
(Ethernet header + IP packet) and classed by port: UDP 50555 is the hive, TCP/UDP 7946 is Serf.
Nothing is sent; the capture stops at its deadline.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections import defaultdict

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def classify(frame: bytes, fragments: dict) -> str:
    if len(frame) < 14:
        return "other"
    ethertype = struct.unpack_from(">H", frame, 12)[0]
    if ethertype == 0x0806:
        return "arp"
    if ethertype != 0x0800 or len(frame) < 34:
        return "other"
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    frag = struct.unpack_from(">H", frame, 20)[0]
    key = (frame[26:30], struct.unpack_from(">H", frame, 18)[0])  # (source, IP id)
    if frag & 0x1FFF:  # a later fragment: class of its first fragment
        return fragments.get(key, "other")
    if proto not in (6, 17) or len(frame) < 14 + ihl + 4:
        return "other"
    sport, dport = struct.unpack_from(">HH", frame, 14 + ihl)
    if 50555 in (sport, dport) and proto == 17:
        cls = "hive"
    elif 7946 in (sport, dport):
        cls = "serf"
    else:
        cls = "other"
    if frag & 0x2000:  # more fragments follow
        if len(fragments) > 10000:
            fragments.clear()
        fragments[key] = cls
    return cls


class Capture:
    """Count bytes per (host index, class, 'tx'/'rx') for ``seconds`` in a background thread."""

    def __init__(self, lab_name: str, seconds: float) -> None:
        self.pattern = re.compile(rf"^{re.escape(lab_name)}v(\d+)$")
        self.seconds = seconds
        self.bytes = defaultdict(int)
        self.frames = defaultdict(int)
        self.elapsed = 0.0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="wire-capture", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join(self.seconds + 10)

    def _run(self) -> None:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except OSError as exc:
            self.error = f"cannot open a packet socket: {exc}"
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.settimeout(0.2)
        buf = bytearray(128)
        fragments: dict = {}
        names: dict[str, int | None] = {}
        start = time.monotonic()
        deadline = start + self.seconds
        try:
            while time.monotonic() < deadline:
                try:
                    size, address = sock.recvfrom_into(buf, 128, socket.MSG_TRUNC)
                except socket.timeout:
                    continue
                ifname, pkttype = address[0], address[2]
                if ifname not in names:
                    match = self.pattern.match(ifname)
                    names[ifname] = int(match.group(1)) if match else None
                host = names[ifname]
                if host is None:
                    continue
                cls = classify(bytes(buf[:min(size, 128)]), fragments)
                direction = "rx" if pkttype == PACKET_OUTGOING else "tx"
                self.bytes[(host, cls, direction)] += size
                self.frames[(host, cls, direction)] += 1
        finally:
            self.elapsed = time.monotonic() - start
            sock.close()
