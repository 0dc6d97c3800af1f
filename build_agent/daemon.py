"""What both daemons share: logging setup, systemd notification, signals and the event loop.

The loop is single-threaded: it waits in select() until a datagram arrives, a signal wakes it,
or the service's next deadline is due.  There is no polling: an idle daemon sleeps until its next
heartbeat (or systemd watchdog ping).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Callable, Sequence

from . import protocol, timing
from .config import Config, ConfigError, load_config, load_secrets, secret_path
from .metrics import Counters
from .protocol import Message, ProtocolError, ReplayGuard, RejectCounter, Stamper

LOG = logging.getLogger(__name__)

MAX_SLEEP = 3600.0  # seconds; the loop never sleeps longer, even with nothing scheduled

# journald reads a "<N>" prefix as the line's syslog priority (so `journalctl -p err` works).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(level: str = "info") -> None:
    """Log to stderr: bare messages with a priority prefix under journald, timestamps otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def notify(*lines: str) -> bool:
    """sd_notify(3) with the standard library: send 'READY=1' etc. to $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
        return True
    except OSError as exc:
        LOG.debug("sd_notify failed: %s", exc)
        return False


def watchdog_period() -> float | None:
    """Half of systemd's WatchdogSec for this process, or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


# The daemon's own line to systemd: a child that inherited it would speak for the daemon.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_environ() -> dict[str, str]:
    """Our environment without PRIVATE_ENV: what a child process (apt, systemd-run) gets."""
    return {key: value for key, value in os.environ.items() if key not in PRIVATE_ENV}


def local_hostname() -> str:
    """This machine's hostname, if the hive can carry it (ConfigError with what to do if not):
    a node whose hostname receivers would reject must fail at start, not be silently muted."""
    name = socket.gethostname()
    if not protocol.is_valid_hostname(name):
        raise ConfigError(f"hostname {name!r} cannot be sent in hive messages: use letters, "
                          f"digits, '-', '_' and '.' (at most 253, not starting with '-' or "
                          f"'.'), e.g. 'hostnamectl set-hostname build4'")
    return name


class Service:
    """A daemon's logic: the loop feeds it verified messages and wakes it at its deadlines.

    Subclasses implement ``handle(message, source_ip, now)`` and ``tick(now) -> next deadline``,
    where ``now`` and deadlines are readings of the steady clock (``steady``, monotonic: timers
    survive wall-clock steps); wall-clock stamps (message ts, assigned_at) come from ``clock``.
    ``secrets`` holds the verifying secrets (the first signs).
    """

    max_batch = 64  # datagrams read per wake-up before timers get a turn
    # The kinds handle() uses (None: all).  Others are dropped unverified and uncounted: a
    # daemon that ignores heartbeats does not spend a signature check on each (see decode).
    wanted_kinds: frozenset[str] | None = None

    def __init__(self, config: Config, secrets: Sequence[bytes], node_id: str | None,
                 clock: Callable[[], float] = time.time,
                 steady: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.steady = steady
        self.secrets = list(secrets)
        self.node_id = node_id
        self.clock = clock
        self.stamp = Stamper(clock)  # ts of the messages we send: strictly increasing
        self.replays = ReplayGuard()
        self.rejects = RejectCounter()
        self.received = 0
        self.counters = Counters()  # messages by kind, for the metrics file (agent)
        self.ignored = 0  # datagrams of a kind this service does not use (wanted_kinds)
        self.stopping = False
        self.reload_requested = False
        # Set by handle(): the message changed nothing the tick looks at before its next
        # deadline (a member's routine STATUS, a probe answered at once): no tick for it.
        self.quiet = False
        # The last wake-up left datagrams unread (a socket gave max_batch): a timeout the tick
        # would conclude now may have its answer queued behind them (see Lifecycle.behind).
        self.behind = False
        # More to wait for than the hive's sockets (a local control socket, child processes):
        # file object -> (selector events, callback(events)); see watch().
        self.watches: dict = {}
        self._selector: selectors.BaseSelector | None = None

    # --- to implement ---------------------------------------------------------------------
    def handle(self, message: Message, source_ip: str, now: float) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> float:
        raise NotImplementedError

    def reload(self) -> None:
        """SIGHUP: re-read the secret file (a rotation); keep the old secrets if it is unusable.
        Says "Reloaded" only when the secrets in use (or their order: the first signs) changed."""
        try:
            secrets = load_secrets(secret_path(self.config))
        except ConfigError as exc:
            LOG.error("Reload failed, keeping the old secret: %s", exc)
            return
        if secrets == self.secrets:
            LOG.info("Secret file unchanged: still using %d secret(s)", len(secrets))
            return
        self.secrets = secrets
        LOG.info("Reloaded the shared secret (%d secret(s))", len(secrets))

    def shutdown(self) -> None:
        """Called once when the loop ends."""

    def own_id_heard(self, message: Message, now: float) -> None:
        """A verified message carrying our node id (at wall time ``now``): our own broadcast
        coming back, or a cloned machine's (the agent resolves that)."""

    # --- shared -----------------------------------------------------------------------------
    def watch(self, fileobj, callback: Callable[[int], None],
              events: int = selectors.EVENT_READ) -> None:
        """Have the loop call ``callback(events)`` when ``fileobj`` is ready (then tick)."""
        self.watches[fileobj] = (events, callback)
        if self._selector is not None:
            try:
                self._selector.modify(fileobj, events, (callback,))
            except KeyError:
                self._selector.register(fileobj, events, (callback,))

    def unwatch(self, fileobj) -> None:
        """Stop watching ``fileobj`` (call it before closing the file)."""
        if self.watches.pop(fileobj, None) is not None and self._selector is not None:
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError, OSError):
                pass

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> Message | None:
        """Verify one datagram at wall time ``now``; drop bad, replayed and our own ones.
        Never raises."""
        # Cheapest first: the raw bytes' shape, then an exact copy of a datagram accepted
        # lately; only then parse, the replay guard by sender, and the signature (decode).
        reason = protocol.precheck(data)
        if reason is None and self.replays.repeated(data):
            reason = "replayed"
        if reason is not None:
            self.reject(reason, source, now)
            return None
        try:
            message = protocol.decode(data, self.secrets, now, seen=self.replays,
                                      kinds=self.wanted_kinds)
        except protocol.IgnoredKind:
            self.ignored += 1
            self.replays.accepted(data)  # a copy of it (a flood of replays) is not parsed again
            return None
        except ProtocolError as exc:
            self.reject(str(exc), source, now)
            return None
        if self.replays.is_replay(message, now):
            self.reject("replayed", source, now)
            return None
        self.replays.accepted(data)
        if message.node_id == self.node_id:
            self.own_id_heard(message, now)
            return None
        self.received += 1
        self.counters.received[message.kind] += 1
        return message

    def reject(self, reason: str, source: tuple[str, int], now: float) -> None:
        if self.rejects.add(reason, now):
            LOG.debug("Dropped datagram from %s: %s (%d dropped so far: %s)", source[0], reason,
                      self.rejects.total, dict(self.rejects.counts))

    def send(self, sock: socket.socket, payload: dict, address: tuple[str, int]) -> None:
        try:
            data = protocol.encode(payload, self.secrets[0])
            sock.sendto(data, address)
            self.counters.sent[payload["kind"]] += 1
        except ProtocolError as exc:
            LOG.error("Not sending %s: %s", payload.get("kind"), exc)
        except OSError as exc:
            LOG.warning("Sending %s to %s failed: %s", payload.get("kind"), address[0], exc)


def run(service: Service, sockets: Sequence[socket.socket], ready: Sequence[str] = ()) -> int:
    """Run the loop until SIGTERM/SIGINT; SIGHUP asks the service to reload.

    READY=1 (with the ``ready`` lines) goes to systemd only once the signal handlers are in
    place: a `systemctl reload` right after start must reach a handler, not kill the daemon."""
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    old_wakeup = signal.set_wakeup_fd(wake_w.fileno())

    def on_stop(signum, frame):  # handlers only set flags
        service.stopping = True

    def on_hup(signum, frame):
        service.reload_requested = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)

    selector = selectors.DefaultSelector()
    selector.register(wake_r, selectors.EVENT_READ, None)
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ, sock)
    for fileobj, (events, callback) in service.watches.items():
        selector.register(fileobj, events, (callback,))
    service._selector = selector
    notify("READY=1", *ready)
    dog = watchdog_period()
    next_dog = time.monotonic()
    deadline = 0.0
    busy = True  # something happened that the service's tick must see
    try:
        while not service.stopping:
            if service.reload_requested:
                service.reload_requested = False
                notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
                service.reload()
                notify("READY=1")
                busy = True
            # A wake-up that brought only dropped datagrams (a flood) changes nothing the tick
            # looks at: it costs no tick until a deadline is due.
            if busy or service.steady() >= deadline:
                deadline = service.tick(service.steady())
            busy = False
            if dog is not None and time.monotonic() >= next_dog:
                notify("WATCHDOG=1")
                next_dog = time.monotonic() + dog
            timeout = min(max(0.0, deadline - service.steady()), MAX_SLEEP)
            if dog is not None:
                timeout = min(timeout, max(0.0, next_dog - time.monotonic()))
            ready = selector.select(timeout)
            flooded = False
            service.behind = False
            if len(ready) > 1:  # replies to this node first (a flood hits the broadcast sockets)
                ready.sort(key=lambda item: not getattr(item[0].data, "priority", False))
            for index, (key, events) in enumerate(ready):
                if key.data is None:
                    try:
                        while wake_r.recv(512):
                            pass
                    except BlockingIOError:
                        pass
                    busy = True
                    continue
                if isinstance(key.data, tuple):  # a watch() of the service
                    try:
                        key.data[0](events)
                    except Exception:  # a bug must not stop the daemon
                        LOG.exception("Error while handling a local event")
                    busy = True
                    continue
                read, rejected, ignored, quiet = _drain(service, key.data)
                # (a batch of nothing but datagrams to drop is a flood, not news queued)
                service.behind = service.behind or (read >= service.max_batch
                                                    and rejected + ignored < read)
                if rejected + ignored + quiet < read or not read:
                    busy = True
                elif rejected:
                    flooded = True
                if busy and getattr(key.data, "priority", False) and index < len(ready) - 1:
                    # What came to this node alone (its WELCOMEs, its advice) is acted on
                    # before the broadcast backlog is read: 100 joining together, a joiner
                    # read 64 broadcasts per socket between the advice it waited for and its
                    # tick, 0.4 s on a busy machine.
                    service.behind = True  # (the rest is still queued)
                    deadline = service.tick(service.steady())
                    busy = False
            if flooded and not busy:
                # Nothing but dropped datagrams (a flood): let more queue up and read them in
                # batches, rather than wake up (and pay a select) for every one.
                time.sleep(timing.FLOOD_PAUSE)
    finally:
        notify("STOPPING=1")
        service.shutdown()
        service._selector = None
        selector.close()
        signal.set_wakeup_fd(old_wakeup)
        wake_r.close()
        wake_w.close()
    return 0


def _drain(service: Service, sock: socket.socket) -> tuple[int, int, int, int]:
    """Read up to max_batch datagrams from a ready socket: (how many, how many were rejected,
    how many ignored, how many were handled quietly).  When every one was one of those, nothing
    changed for the service's tick."""
    rejected, ignored = service.rejects.total, service.ignored
    count = quiet = 0
    for _ in range(service.max_batch):
        try:
            data, source = sock.recvfrom(protocol.MAX_DATAGRAM + 1)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            LOG.debug("recvfrom failed: %s", exc)
            break
        count += 1
        message = service.receive(data, source, service.clock())
        if message is None:
            continue
        service.quiet = False
        try:
            service.handle(message, source[0], service.steady())
        except Exception:  # a bug must not let one datagram stop the daemon
            LOG.exception("Error while handling %s from %s", message.kind, source[0])
            service.quiet = False
        quiet += service.quiet
    return count, service.rejects.total - rejected, service.ignored - ignored, quiet


# build(config, secrets, interface) -> (service, its bound sockets)
Builder = Callable[..., "tuple[Service, list[socket.socket]]"]


def _config_option(prog: str, description: str, argv: list[str]) -> str | None:
    """The daemons' one option, --config FILE.  The forms the units and hive-lab use are read
    here; anything else (--help, a typo) gets argparse's usual answer.  Not argparse for all:
    it and what it loads (gettext, locale, shutil, bz2, lzma) would stay in the daemon's memory
    for its whole life, about 1 MB in each of the two daemons on every node."""
    if not argv:
        return None
    if len(argv) == 2 and argv[0] == "--config" and argv[1][:1] not in ("", "-"):
        return argv[1]
    if len(argv) == 1 and argv[0].startswith("--config=") and argv[0][9:10] not in ("", "-"):
        return argv[0][9:]
    import argparse  # lazy: see above

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=None,
                        help="hive.toml (default /etc/build/hive.toml; missing means defaults)")
    return parser.parse_args(argv).config


def main(prog: str, description: str, argv: Sequence[str] | None, build: Builder) -> int:
    """The start of both daemons: options, logging, config, secret, interface, then ``build``
    makes the service and its bound sockets.  A user error is one logged line and exit 1."""
    from .netif import NetworkError, find_interface

    config_file = _config_option(prog, description, sys.argv[1:] if argv is None else list(argv))
    setup_logging("info")
    try:
        config = load_config(config_file)
        setup_logging(config.log_level)
        secrets = load_secrets(secret_path(config))
        iface = find_interface(config.interface)
        service, sockets = build(config, secrets, iface)
    except (ConfigError, NetworkError) as exc:
        LOG.error("%s: %s", prog, exc)
        return 1
    except PermissionError as exc:
        LOG.error("%s: permission denied on %s: run it as root (or through systemd)", prog,
                  exc.filename)
        return 1
    return run(service, sockets, ready=[f"STATUS={prog} listening on {iface.address}:{config.port}"])
