"""Sockets and interface facts: the only module that knows how the hive reaches the LAN.

Both daemons of a node share UDP port 50555:
- each binds the wildcard address with SO_REUSEADDR, so every broadcast reaches both;
- the agent also binds the node's own unicast address, which Linux prefers over the wildcard
  for unicast, so replies (WELCOME, ADVICE) sent to port 50555 reach the agent deterministically.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

SIOCGIFADDR = 0x8915
SIOCGIFBRDADDR = 0x8919
SIOCGIFNETMASK = 0x891B
RECV_BUFFER = 1 << 20


class NetworkError(Exception):
    """The network is not usable: the message says what to check."""


@dataclass(frozen=True)
class Interface:
    name: str
    address: str
    netmask: str
    broadcast: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.address}/{self.netmask}", strict=False)


def default_route_interface(route_table: str = "/proc/net/route") -> str:
    """The interface of the IPv4 default route (lowest metric)."""
    best: tuple[int, str] | None = None
    try:
        with open(route_table, encoding="ascii") as handle:
            next(handle, None)
            for line in handle:
                cols = line.split()
                if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
                    metric = int(cols[6])
                    if best is None or metric < best[0]:
                        best = (metric, cols[0])
    except OSError as exc:
        raise NetworkError(f"cannot read {route_table}: {exc}") from None
    if best is None:
        raise NetworkError("no default route: set 'interface' in hive.toml to the LAN interface")
    return best[1]


def _ioctl_addr(sock: socket.socket, request: int, name: str) -> str:
    packed = struct.pack("256s", name.encode()[:15])
    return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), request, packed)[20:24])


def interface_info(name: str) -> Interface:
    """The primary IPv4 address, netmask and broadcast address of an interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            address = _ioctl_addr(sock, SIOCGIFADDR, name)
            netmask = _ioctl_addr(sock, SIOCGIFNETMASK, name)
        except OSError:
            raise NetworkError(f"interface {name} has no IPv4 address "
                               f"(check 'ip -br addr', or set 'interface' in hive.toml)") from None
        try:
            broadcast = _ioctl_addr(sock, SIOCGIFBRDADDR, name)
        except OSError:
            broadcast = "0.0.0.0"
    if broadcast == "0.0.0.0":
        net = ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)
        broadcast = str(net.broadcast_address)
    return Interface(name, address, netmask, broadcast)


def find_interface(configured: str) -> Interface:
    return interface_info(configured or default_route_interface())


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
    except OSError:
        pass
    sock.setblocking(False)
    return sock


def open_broadcast_socket(port: int) -> socket.socket:
    """Bound to the wildcard address: receives every broadcast on the port."""
    sock = _udp_socket()
    try:
        sock.bind(("", port))
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot bind UDP port {port}: {exc.strerror}") from None
    return sock


def open_unicast_socket(address: str, port: int) -> socket.socket:
    """Bound to the node's own address: receives the unicast replies meant for the agent."""
    sock = _udp_socket()
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot bind {address}:{port}: {exc.strerror}") from None
    return sock
