"""Fakes and helpers for the unit tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import shutil
from pathlib import Path

from build_agent import protocol

SECRET = b"unit-test-secret-0123456789"
T0 = 1_795_694_400.0  # 2026-11-26T12:00:00Z


def message(kind: str, node_id: str, hostname: str, ip: str, now: float, secret: bytes = SECRET,
            **fields) -> protocol.Message:
    """A Message built the way it travels: make_payload, encode (sign), decode (verify)."""
    data = protocol.encode(protocol.make_payload(kind, node_id, hostname, ip, now, **fields), secret)
    return protocol.decode(data, [secret], now)


class FakeSocket:
    """Records sendto() calls; decode() returns them as verified Messages."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.sent.append((data, address))
        return len(data)

    def messages(self, now: float | None = None, secret: bytes = SECRET):
        out = []
        for data, address in self.sent:
            payload, _sig = protocol.parse_envelope(data)
            when = protocol.parse_ts(payload["ts"]) if now is None else now
            out.append((protocol.decode(data, [secret], when), address))
        return out

    def kinds(self) -> list[str]:
        return [m.kind for m, _ in self.messages()]

    def clear(self) -> None:
        self.sent.clear()


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
