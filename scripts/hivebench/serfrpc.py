"""A minimal client of the Serf agent's RPC protocol (MessagePack over TCP), per lab host.

Each client connects from inside the host's network namespace to the agent's RPC address
(127.0.0.1:7373 there), so one bench process can ask every Serf agent without forking a
``serf members`` per query.  Only the commands the bench needs: handshake, members-filtered, leave.
"""

from __future__ import annotations

import socket
import time

from . import mpack
from .netns import socket_in


class RPCError(Exception):
    pass


class SerfRPC:
    def __init__(self, ns: str, port: int = 7373, timeout: float = 2.0) -> None:
        self.ns, self.port, self.timeout = ns, port, timeout
        self.sock: socket.socket | None = None
        self.unpacker = mpack.Unpacker()
        self.seq = 0

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.unpacker = mpack.Unpacker()

    def connect(self) -> None:
        self.close()
        sock = socket_in(self.ns, socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self._call("handshake", {"Version": 1}, body=False)

    def _read(self, deadline: float):
        while True:
            try:
                return self.unpacker.next()
            except mpack.NeedMore:
                pass
            if time.monotonic() > deadline:
                raise socket.timeout("serf rpc: no answer")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("serf rpc: connection closed")
            self.unpacker.feed(data)

    def _call(self, command: str, args: dict | None = None, body: bool = True):
        seq = self.seq
        self.seq += 1
        data = mpack.packb({"Command": command, "Seq": seq})
        if args is not None:
            data += mpack.packb(args)
        self.sock.sendall(data)
        deadline = time.monotonic() + self.timeout
        header = self._read(deadline)
        if not isinstance(header, dict) or header.get("Seq") != seq:
            raise RPCError(f"unexpected answer {header!r}")
        if header.get("Error"):
            raise RPCError(header["Error"])
        return self._read(deadline) if body else None

    def call(self, command: str, args: dict | None = None, body: bool = True):
        """One RPC, connecting first if needed; a broken connection is dropped and re-raised."""
        if self.sock is None:
            self.connect()
        try:
            return self._call(command, args, body)
        except (OSError, RPCError, ValueError):
            self.close()
            raise

    def alive_names(self, name_regex: str = "") -> set[str]:
        """Names of the members this agent sees as alive (optionally filtered by a regex)."""
        answer = self.call("members-filtered", {"Tags": {}, "Status": "alive", "Name": name_regex})
        return {m.get("Name") for m in (answer or {}).get("Members", [])}

    def try_alive_names(self, name_regex: str = "") -> set[str] | None:
        """Like alive_names, but None when the agent cannot be asked (not up yet, gone)."""
        try:
            return self.alive_names(name_regex)
        except (OSError, RPCError, ValueError):
            return None
