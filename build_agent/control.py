"""The agent's local control socket: how `hive` commands talk to the running build-agent.

A Unix stream socket at ``control_socket`` in hive.toml (default STATE_DIR/control.sock, so
every lab host sharing a filesystem has its own), mode 0600, owned by root; a client whose
peer credentials (SO_PEERCRED) are not uid 0 is refused as well.  One request per connection:
the client sends one JSON object on one line ({"op": "...", ...}), the agent answers with one
JSON object on one line, then closes.  An answer may come later (`hive task wait`): the
request is held until the agent's logic answers it or its time is up.

The server never blocks the agent's loop: it is driven by daemon.run through Service.watch()
(accept, read, write when the client is slow to read) and by ``tick(now)`` for time limits.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Callable

from . import timing

LOG = logging.getLogger(__name__)

MAX_REQUEST = 256 * 1024
MAX_CLIENTS = 64


class ControlError(Exception):
    """The control socket cannot be used: one line saying why and what to do."""


class Reply:
    """The answer to one request: send() it now, or defer() it and send() later."""

    def __init__(self, server: "ControlServer", conn: "_Conn") -> None:
        self._server, self._conn = server, conn
        self.done = False
        self.expires: float | None = None
        self._fallback: Callable[[], dict] | None = None

    @property
    def open(self) -> bool:
        return not self.done and not self._conn.closed

    def send(self, answer: dict) -> None:
        if not self.done:
            self.done = True
            self._server._answer(self._conn, answer)

    def defer(self, until: float, fallback: Callable[[], dict]) -> None:
        """Answer ``fallback()`` at ``until`` (steady clock) unless send() came first."""
        self.expires, self._fallback = until, fallback


class _Conn:
    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.closed = False
        self.expires = now + timing.CONTROL_IDLE_TIMEOUT  # for its request to arrive
        self.reply: Reply | None = None
        self.refusal: str | None = None  # the answer to any request (a client not root)


Handler = Callable[[dict, Reply], "dict | None"]


class ControlServer:
    def __init__(self, path: Path | str, handler: Handler, watch: Callable, unwatch: Callable,
                 steady: Callable[[], float]) -> None:
        self.path = Path(path)
        self.handler = handler
        self.watch, self.unwatch = watch, unwatch
        self.steady = steady
        self.sock: socket.socket | None = None
        self.conns: list[_Conn] = []

    # --- life -------------------------------------------------------------------------------
    def open(self) -> None:
        """Bind the socket (root only); ControlError if the path cannot be used."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            info = None
        if info is not None:
            if not stat.S_ISSOCK(info.st_mode):
                raise ControlError(f"control socket {self.path} exists and is not a socket: "
                                   f"remove it or set control_socket in hive.toml")
            if _answers(self.path):
                raise ControlError(f"another build-agent answers on {self.path} (two agents with "
                                   f"one state_dir?): stop it, or give each its own state_dir")
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # born 0600: never a moment when others may connect
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot create the control socket {self.path}: "
                               f"{exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self.sock = sock
        self.watch(sock, self._accept)

    def close(self) -> None:
        for conn in list(self.conns):
            self._close(conn)
        if self.sock is not None:
            self.unwatch(self.sock)
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    # --- events -----------------------------------------------------------------------------
    def _accept(self, events: int) -> None:
        for _ in range(16):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                LOG.debug("accept on the control socket failed: %s", exc)
                return
            sock.setblocking(False)
            conn = _Conn(sock, self.steady())
            if len(self.conns) >= MAX_CLIENTS:
                try:
                    sock.close()
                except OSError:
                    pass
                LOG.warning("Refused a control-socket client: %d are connected", MAX_CLIENTS)
                continue
            if peer_uid(sock) != 0:
                LOG.warning("Refused a control-socket client that is not root")
                # (answered once its request is read: closing with it unread would reset the
                # connection before the client reads the answer)
                conn.refusal = "only root may use the agent's control socket (sudo hive ...)"
            self.conns.append(conn)
            self.watch(sock, lambda ev, c=conn: self._readable(c))

    def _readable(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if conn.reply is not None:
            try:  # while its answer is held: a client that closed goes; more bytes are dropped
                if conn.sock.recv(4096) == b"":
                    self._close(conn)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close(conn)
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.inbox += data
        if b"\n" not in conn.inbox:
            if len(conn.inbox) > MAX_REQUEST:
                self._answer(conn, {"error": "request too large"})
            return
        line = conn.inbox.split(b"\n", 1)[0]
        if conn.refusal is not None:
            self._answer(conn, {"error": conn.refusal})
            return
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("not an object with an op")
        except (UnicodeDecodeError, ValueError) as exc:
            self._answer(conn, {"error": f"bad request: {exc}"})
            return
        reply = Reply(self, conn)
        conn.reply = reply
        try:
            answer = self.handler(request, reply)
        except Exception as exc:  # a bug answers with an error, never stops the agent
            LOG.exception("Error while handling control request %r", request.get("op"))
            answer = {"error": f"internal error in build-agent: {type(exc).__name__}: {exc}"}
        if answer is not None:
            reply.send(answer)
        elif not reply.done and reply.expires is None:
            reply.defer(self.steady() + 60.0, lambda: {"error": "no answer from build-agent"})

    def _answer(self, conn: _Conn, answer: dict) -> None:
        if conn.closed:
            return
        conn.outbox += (json.dumps(answer, separators=(",", ":")) + "\n").encode()
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except (BlockingIOError, InterruptedError):
                if conn not in self.conns:
                    self.conns.append(conn)
                conn.expires = self.steady() + timing.CONTROL_IDLE_TIMEOUT
                self.watch(conn.sock, lambda ev, c=conn: self._flush(c),
                           selectors.EVENT_WRITE)
                return
            except OSError:
                break
            conn.outbox = conn.outbox[sent:]
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.unwatch(conn.sock)
        try:
            conn.sock.close()
        except OSError:
            pass
        if conn in self.conns:
            self.conns.remove(conn)

    def tick(self, now: float) -> float:
        """Answer held requests whose time is up; drop idle clients; next deadline."""
        deadline = float("inf")
        for conn in list(self.conns):
            reply = conn.reply
            if reply is not None and not reply.done:
                if reply.expires is not None and now >= reply.expires:
                    try:
                        answer = reply._fallback() if reply._fallback else {"error": "timed out"}
                    except Exception as exc:
                        answer = {"error": f"internal error in build-agent: {exc}"}
                    reply.send(answer)
                    continue
                if reply.expires is not None:
                    deadline = min(deadline, reply.expires)
                continue
            if now >= conn.expires:
                self._close(conn)
                continue
            deadline = min(deadline, conn.expires)
        return deadline


def peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    except OSError:
        return None


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


# --- the client (the hive CLI) ------------------------------------------------------------------

def request(path: Path | str, payload: dict[str, Any], timeout: float = 10.0) -> dict:
    """Send one request to the agent and return its answer; ControlError says what went wrong."""
    path = str(path)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as exc:
        raise ControlError(f"cannot create a socket: {exc.strerror}") from None
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"build-agent is not running here (no control socket at {path}; "
                               f"systemctl status build-agent)") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: only root may talk to build-agent "
                               f"(sudo hive ...)") from None
        except ConnectionRefusedError:
            raise ControlError(f"build-agent is not running here (nobody answers on {path}; "
                               f"systemctl status build-agent)") from None
        except OSError as exc:
            raise ControlError(f"cannot reach build-agent at {path}: {exc.strerror}") from None
        try:
            sock.sendall((json.dumps(payload, separators=(",", ":")) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise ControlError(f"build-agent did not answer within {timeout:.0f} s") from None
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                raise ControlError("build-agent closed the connection (did it restart?)") from None
            raise ControlError(f"talking to build-agent failed: {exc.strerror}") from None
    if not data:
        raise ControlError("build-agent closed the connection without an answer (did it "
                           "restart?)")
    try:
        answer = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError("build-agent answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise ControlError("build-agent answered something that is not a JSON object")
    return answer
