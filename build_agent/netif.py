"""Sockets and interface facts: the only module that knows how the hive reaches the LAN.

The agent receives the hive's datagrams; the advisor receives only what its agent hands it:
- broadcasts: the agent binds the interface's broadcast address (and 255.255.255.255) with
  SO_REUSEADDR (shared with `hive watch`);
- unicast: the agent binds the node's own address WITHOUT SO_REUSEADDR.  Linux then refuses
  any other socket on that address and port, and on the wildcard address too (it would
  overlap), whoever asks: no local process, of any user, can take the agent's replies;
- multicast (a discovery method, see build_agent.discovery): the agent binds the group address
  (never the wildcard) with SO_REUSEADDR and joins the group on the hive's interface; it sends
  to the group from its own socket;
- the advisor binds 127.0.0.1 on the hive's port, exclusively, and nothing else that receives:
  the agent hands it every IDENTIFY it accepted, however it came (relay_datagram), from the
  agent's own address and port, which only the agent can hold.  So a node's advisor never
  wakes for the hive's heartbeats.  The advisor sends its ADVICE from a socket of its own on
  the interface's address (open_sending_socket): the port is the kernel's choice (the agent
  holds the hive's port on that address), and nothing is ever sent to it (replies go to the
  hive's port).
"""

from __future__ import annotations

import errno
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


LIMITED_BROADCAST = "255.255.255.255"


def _udp_socket(reuse: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
    except OSError:
        pass
    sock.setblocking(False)
    return sock


def _bind(sock: socket.socket, address: str, port: int, what: str) -> socket.socket:
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        hint = (": another program holds the port (is a second build-agent running?)"
                if exc.errno == errno.EADDRINUSE else "")
        raise NetworkError(f"cannot bind {what} {address}:{port}: {exc.strerror}{hint}") from None
    return sock


def open_broadcast_sockets(iface: Interface, port: int) -> list[socket.socket]:
    """Sockets that receive the hive's broadcasts: to the subnet's broadcast address and to
    255.255.255.255.  Shared (SO_REUSEADDR) by the agent and `hive watch`; sending from one
    uses the interface's own address as source."""
    addresses = [iface.broadcast] + ([LIMITED_BROADCAST] if iface.broadcast != LIMITED_BROADCAST
                                     else [])
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            sockets.append(_bind(_udp_socket(reuse=True), address, port, "UDP broadcast"))
    except NetworkError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def open_unicast_socket(address: str, port: int) -> socket.socket:
    """Bound to the node's own address, exclusively: receives the replies meant for the agent."""
    return _bind(_udp_socket(reuse=False), address, port, "UDP")


LOOPBACK = "127.0.0.1"


def open_multicast_socket(iface: Interface, group: str, port: int) -> socket.socket:
    """Receives the hive's datagrams sent to the multicast ``group``: bound to the group address
    (shared, like the broadcast sockets) and joined on the hive's interface."""
    sock = _bind(_udp_socket(reuse=True), group, port, "UDP multicast")
    try:
        membership = socket.inet_aton(group) + socket.inet_aton(iface.address)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot join multicast group {group} on {iface.name}: "
                           f"{exc.strerror}") from None
    return sock


def enable_multicast_sending(sock: socket.socket, iface: Interface, ttl: int) -> None:
    """Datagrams this socket sends to a group leave by the hive's interface, with ``ttl`` hops
    (1: never beyond the subnet)."""
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface.address))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    except OSError as exc:
        raise NetworkError(f"cannot send multicast on {iface.name}: {exc.strerror}") from None


def open_relay_socket(port: int) -> socket.socket:
    """The advisor's own loopback address: the agent hands it every IDENTIFY it accepts here
    (relay_datagram).  Exclusive, like the agent's own address."""
    return _bind(_udp_socket(reuse=False), LOOPBACK, port, "UDP loopback")


def open_sending_socket(address: str) -> socket.socket:
    """A socket that only sends, from ``address`` (the interface's) and a port the kernel picks:
    nothing is sent to that port, and the socket is never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return _bind(sock, address, 0, "UDP")


# The agent's hand-off to its advisor: the IPv4 address the datagram came from (4 bytes), then
# the datagram as it came (signed by its sender: the advisor verifies it like any datagram).
RELAY_HEADER = 4


def relay_datagram(data: bytes, source_ip: str) -> bytes:
    """What the agent sends its advisor for a datagram ``data`` that came from ``source_ip``."""
    return socket.inet_aton(source_ip) + data


def from_relay(data: bytes) -> tuple[bytes, str] | None:
    """(the datagram, the address it came from) of a hand-off; None if it cannot be one."""
    if len(data) <= RELAY_HEADER:
        return None
    return data[RELAY_HEADER:], socket.inet_ntoa(data[:RELAY_HEADER])


class RelayListener:
    """The advisor's loopback socket.  Returns each hand-off of the agent as (the datagram as it
    came, (the address it came from, the hive's port)).  A hand-off comes from the agent's own
    address and port (``agent``), which no other local process can hold (the agent binds it
    exclusively) and no datagram from the network can claim (the kernel drops those); anything
    else is returned as (b"", its sender): dropped unread."""

    def __init__(self, sock: socket.socket, agent: tuple[str, int]) -> None:
        self.sock, self.agent = sock, agent

    def fileno(self) -> int:
        return self.sock.fileno()

    def recvfrom(self, size: int):
        data, sender = self.sock.recvfrom(size + RELAY_HEADER)  # (room for the header)
        handed = from_relay(data) if sender == self.agent else None
        if handed is None:
            return b"", sender
        return handed[0], (handed[1], self.agent[1])

    def close(self) -> None:
        self.sock.close()


class Listener:
    """A bound socket that tells ``heard(channel)`` before each datagram it returns, so the
    agent knows how a datagram reached it ("broadcast", "multicast" or "unicast")."""

    def __init__(self, sock: socket.socket, channel: str, heard) -> None:
        self.sock, self.channel, self.heard = sock, channel, heard
        # Read first when several sockets are ready: what is sent to this node alone (replies
        # to a join) must not wait behind a flooded broadcast.
        self.priority = channel == "unicast"

    def fileno(self) -> int:
        return self.sock.fileno()

    def recvfrom(self, size: int):
        result = self.sock.recvfrom(size)
        self.heard(self.channel)
        return result

    def sendto(self, data: bytes, address) -> int:
        return self.sock.sendto(data, address)

    def close(self) -> None:
        self.sock.close()
