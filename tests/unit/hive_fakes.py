"""Fakes and helpers for the unit tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import shutil
from pathlib import Path

from build_agent import protocol
from build_agent.netif import LOOPBACK, RelayListener, from_relay, relay_datagram

SECRET = b"unit-test-secret-0123456789"
T0 = 1_795_694_400.0  # 2026-11-26T12:00:00Z


def message(kind: str, node_id: str, hostname: str, ip: str, now: float, secret: bytes = SECRET,
            **fields) -> protocol.Message:
    """A Message built the way it travels: make_payload, encode (sign), decode (verify)."""
    data = protocol.encode(protocol.make_payload(kind, node_id, hostname, ip, now, **fields), secret)
    return protocol.decode(data, [secret], now)


def _decoded(data: bytes, now: float | None, secret: bytes) -> protocol.Message:
    payload, _sig = protocol.parse_envelope(data)
    when = protocol.parse_ts(payload["ts"]) if now is None else now
    return protocol.decode(data, [secret], when)


class FakeSocket:
    """Records sendto() calls; decode() returns them as verified Messages."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.sent.append((data, address))
        return len(data)

    def messages(self, now: float | None = None, secret: bytes = SECRET):
        """What was sent to the hive (not the hand-offs to the local advisor: handed_over)."""
        return [(_decoded(data, now, secret), address) for data, address in self.sent
                if address[0] != LOOPBACK]

    def handed_over(self, now: float | None = None, secret: bytes = SECRET):
        """The agent's hand-offs to its advisor on 127.0.0.1: (Message, the address it came
        from, the datagram as it came)."""
        out = []
        for data, address in self.sent:
            if address[0] == LOOPBACK:
                datagram, source_ip = from_relay(data)
                out.append((_decoded(datagram, now, secret), source_ip, datagram))
        return out

    def kinds(self) -> list[str]:
        return [m.kind for m, _ in self.messages()]

    def clear(self) -> None:
        self.sent.clear()


AGENT = ("10.9.0.2", 50555)  # the agent's own address and port (the iface fixture's address)


class _Queued:
    def __init__(self, data: bytes, sender: tuple[str, int]) -> None:
        self.datagrams = [(data, sender)]

    def recvfrom(self, size: int):
        data, sender = self.datagrams.pop(0)
        return data[:size], sender


def through_relay(data: bytes, source_ip: str, sender: tuple[str, int] = AGENT,
                  handed: bool = True) -> tuple[bytes, tuple[str, int]]:
    """What the advisor reads (netif.RelayListener) when ``sender`` sends it a hand-off of
    ``data`` that came from ``source_ip`` (``handed`` False: ``data`` sent as it is)."""
    sent = relay_datagram(data, source_ip) if handed else data
    return RelayListener(_Queued(sent, sender), AGENT).recvfrom(protocol.MAX_DATAGRAM + 1)


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def policy_copy(source: Path, directory: Path) -> str:
    """A copy of a policy file that load_policy accepts whoever owns the checkout: ours, mode
    0644, in a directory only we can write (pytest's tmp_path)."""
    target = Path(directory) / source.name
    shutil.copyfile(source, target)
    target.chmod(0o644)
    return str(target)
