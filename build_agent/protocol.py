"""The hive wire format: pure functions from bytes to messages and back.

A datagram is one UTF-8 JSON object, at most MAX_DATAGRAM bytes:

    {"magic": "BUILD/HELLO/v1", "payload": {...}, "sig": "<hex>"}

``sig`` is the lowercase hex HMAC-SHA256 of ``json.dumps(payload, separators=(",", ":"))`` with the
payload's keys in the order they were received.  Nothing here touches a socket or a clock: ``now``
(seconds since the epoch) is passed in.  Every problem raises ProtocolError with a short reason.
"""

from __future__ import annotations

import collections
import datetime as _dt
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import timing

# HMAC-SHA256 is built here on the interpreter's built-in SHA-256 rather than imported from
# hmac/hashlib: those load OpenSSL, which costs each daemon about 4 MB of resident memory.
try:
    from _sha2 import sha256 as _sha256  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # Python 3.11
    except ImportError:  # an interpreter without the built-in module
        from hashlib import sha256 as _sha256
try:
    from _operator import _compare_digest as compare_digest  # what hmac.compare_digest is
except ImportError:
    from hmac import compare_digest

_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_sha256(key: bytes, message: bytes) -> str:
    """RFC 2104 HMAC with SHA-256, as lowercase hex (identical to hmac.new(...).hexdigest())."""
    if len(key) > _BLOCK:
        key = _sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = _sha256(key.translate(_IPAD))
    inner.update(message)
    outer = _sha256(key.translate(_OPAD))
    outer.update(inner.digest())
    return outer.hexdigest()

MAGIC = "BUILD/HELLO/v1"
MAX_DATAGRAM = 8192
DEFAULT_PORT = 50555

KINDS = ("HELLO", "WELCOME", "IDENTIFY", "ADVICE", "STATUS", "HEARTBEAT", "TASK", "RESULT")

ROLE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+\Z")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})\Z")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z\Z")


class ProtocolError(ValueError):
    """A datagram that is not a valid, correctly signed hive message."""


# --- validators: each takes a value and returns it, or raises ProtocolError -------------------

Validator = Callable[[Any], Any]


def _fail(what: str) -> None:
    raise ProtocolError(f"bad field: {what}")


def is_valid_role(name: Any) -> bool:
    return isinstance(name, str) and ROLE_RE.match(name) is not None


def is_valid_package(name: Any) -> bool:
    """Debian policy package name; never starts with '-' so it cannot become an apt-get option."""
    return (isinstance(name, str) and len(name) <= 128 and PACKAGE_RE.match(name) is not None
            and not name.endswith(("+", "-")))


def _text(maxlen: int, pattern: re.Pattern | None = None, nullable: bool = False) -> Validator:
    def check(value: Any) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or len(value) > maxlen or (pattern and not pattern.match(value)):
            _fail(f"expected text up to {maxlen} chars")
        return value
    return check


def _role(nullable: bool = False) -> Validator:
    def check(value: Any) -> Any:
        if value is None and nullable:
            return None
        if not is_valid_role(value):
            _fail("role")
        return value
    return check


def _ip(nullable: bool = False) -> Validator:
    def check(value: Any) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or len(value) > 15:
            _fail("ip")
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            _fail("ip")
        return value
    return check


def _number(low: float, high: float, integer: bool = False) -> Validator:
    def check(value: Any) -> Any:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            _fail("number")
        return value
    return check


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        _fail("boolean")
    return value


def _packages(value: Any) -> Any:
    if not isinstance(value, list) or len(value) > 64 or not all(is_valid_package(p) for p in value):
        _fail("packages")
    return value


def _timestamp(nullable: bool = False) -> Validator:
    def check(value: Any) -> Any:
        if value is None and nullable:
            return None
        parse_ts(value)
        return value
    return check


def _object(max_json: int) -> Validator:
    def check(value: Any) -> Any:
        if not isinstance(value, dict) or len(json.dumps(value)) > max_json:
            _fail("object")
        return value
    return check


def _load(value: Any) -> Any:
    """Load average: one number or a list of up to three."""
    if isinstance(value, list):
        if len(value) > 3:
            _fail("load")
        for item in value:
            _number(0, 1e6)(item)
        return value
    return _number(0, 1e6)(value)


CAPABILITY_FIELDS: dict[str, Validator] = {
    "cpu_cores": _number(0, 65536, integer=True),
    "ram_gb": _number(0, 1e7),
    "has_gpu": _boolean,
    "arch": _text(32),
    "os": _text(64),
    "docker_installed": _boolean,
}


def _capabilities(value: Any) -> Any:
    _object(2048)(value)
    for key, check in CAPABILITY_FIELDS.items():
        if key in value:
            check(value[key])
    return value


def _identity(value: Any) -> Any:
    _object(4096)(value)
    if "role" in value:
        _role(nullable=True)(value["role"])
    return value


# Fields every payload carries, in emission order; ``ts`` is always emitted last.
COMMON_FIELDS: tuple[tuple[str, Validator], ...] = (
    ("kind", _text(16)),
    ("node_id", _text(64, NODE_ID_RE)),
    ("hostname", _text(253, HOSTNAME_RE)),
    ("primary_ip", _ip()),
)

# Kind-specific fields in emission order: name -> (validator, required).
KIND_FIELDS: dict[str, tuple[tuple[str, Validator, bool], ...]] = {
    "HELLO": (
        ("candidate_ip", _ip(nullable=True), False),
        ("joining_since", _timestamp(nullable=True), False),
        ("role", _role(nullable=True), False),
        ("capabilities", _capabilities, False),
    ),
    "WELCOME": (
        ("to", _text(64, NODE_ID_RE), False),
        ("role", _role(nullable=True), False),
        ("members", _number(0, 1_000_000, integer=True), False),
        ("joining_since", _timestamp(nullable=True), False),
        ("capabilities", _capabilities, False),
        ("interval", _number(0.05, 86400), False),
    ),
    "IDENTIFY": (
        ("request", _text(32), False),
        ("candidate_ip", _ip(nullable=True), False),
        ("capabilities", _capabilities, False),
        ("attempt", _number(0, 1000, integer=True), False),
        ("joining_since", _timestamp(nullable=True), False),
    ),
    "ADVICE": (
        ("to", _text(64, NODE_ID_RE), False),
        ("suggested_role", _role(), True),
        ("packages", _packages, True),
        ("config", _object(4096), True),
        ("reason", _text(300), True),
    ),
    "STATUS": (
        ("role", _role(nullable=True), False),
        ("state", _text(16), False),
        ("load", _load, False),
        ("capacity", _object(1024), False),
        ("health", _text(64), False),
        ("interval", _number(0.05, 86400), False),
        ("joining_since", _timestamp(nullable=True), False),
        ("capabilities", _capabilities, False),
    ),
    "HEARTBEAT": (
        ("identity", _identity, False),
        ("interval", _number(0.05, 86400), False),
    ),
    "TASK": (
        ("id", _text(64), True),
        ("command", _text(4096), False),
        ("repo", _text(1024), False),
    ),
    "RESULT": (
        ("task_id", _text(64), True),
        ("output", _text(4096), False),
        ("rc", _number(-1024, 1024, integer=True), False),
    ),
}


# --- time -----------------------------------------------------------------------------------

def format_ts(now: float) -> str:
    """Seconds since the epoch -> UTC ISO 8601 with microseconds and 'Z'."""
    moment = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_ts_seconds(now: float) -> str:
    """Seconds since the epoch -> UTC ISO 8601 to the second with 'Z' (as in identity.json)."""
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(value: Any) -> float:
    """UTC ISO 8601 with 'Z' -> seconds since the epoch."""
    if not isinstance(value, str) or not TS_RE.match(value):
        raise ProtocolError("bad field: ts")
    try:
        moment = _dt.datetime.fromisoformat(value[:-1]).replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise ProtocolError("bad field: ts") from None
    return moment.timestamp()


# --- messages ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    kind: str
    node_id: str
    hostname: str
    primary_ip: str
    ts: float
    payload: dict
    sig: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        return self.payload.get(key, default)


def canonical(payload: dict) -> bytes:
    """The exact bytes that are signed: compact JSON, keys in their current order."""
    return json.dumps(payload, separators=(",", ":")).encode("ascii")


def sign(payload: dict, secret: bytes) -> str:
    return hmac_sha256(secret, canonical(payload))


def make_payload(kind: str, node_id: str, hostname: str, primary_ip: str, now: float,
                 **fields: Any) -> dict:
    """Build a payload with keys in the one fixed order for its kind; unknown extras go last
    before ``ts``.  Fields whose value is None and that are not part of the schema are left out."""
    if kind not in KIND_FIELDS:
        raise ProtocolError(f"unknown kind: {kind}")
    payload: dict[str, Any] = {"kind": kind, "node_id": node_id, "hostname": hostname,
                               "primary_ip": primary_ip}
    for name, _check, _required in KIND_FIELDS[kind]:
        if name in fields:
            payload[name] = fields.pop(name)
    payload.update(fields)
    payload["ts"] = format_ts(now)
    return payload


def encode(payload: dict, secret: bytes) -> bytes:
    """Sign a payload and return the datagram; ProtocolError if it would exceed MAX_DATAGRAM."""
    envelope = {"magic": MAGIC, "payload": payload, "sig": sign(payload, secret)}
    data = json.dumps(envelope, separators=(",", ":")).encode("ascii")
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError("oversized")
    return data


def _reject_constant(name: str) -> Any:
    raise ProtocolError("not json")


def parse_envelope(data: bytes) -> tuple[dict, str]:
    """Bytes -> (payload, sig) without checking the signature."""
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError("oversized")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("not utf-8") from None
    try:
        envelope = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ProtocolError("not json") from None
    if not isinstance(envelope, dict):
        raise ProtocolError("bad envelope")
    if envelope.get("magic") != MAGIC:
        raise ProtocolError("wrong magic")
    payload, sig = envelope.get("payload"), envelope.get("sig")
    if not isinstance(payload, dict) or not isinstance(sig, str):
        raise ProtocolError("bad envelope")
    return payload, sig


def verify(payload: dict, sig: str, secrets: Sequence[bytes]) -> None:
    """Raise ProtocolError unless ``sig`` matches the payload under one of the secrets."""
    if len(sig) != 64 or not sig.isascii():  # compare_digest raises TypeError on non-ASCII
        raise ProtocolError("bad signature")
    try:
        body = canonical(payload)
    except (ValueError, RecursionError, TypeError):
        raise ProtocolError("bad signature") from None
    for secret in secrets:
        if compare_digest(hmac_sha256(secret, body), sig):
            return
    raise ProtocolError("bad signature")


def validate(payload: dict) -> Message:
    """Check every known field's type and size; unknown keys are kept and ignored."""
    for name, check in COMMON_FIELDS:
        if name not in payload:
            raise ProtocolError(f"missing field: {name}")
        check(payload[name])
    kind = payload["kind"]
    if kind not in KIND_FIELDS:
        raise ProtocolError(f"unknown kind: {kind}")
    ts = parse_ts(payload.get("ts"))
    for name, check, required in KIND_FIELDS[kind]:
        if name in payload:
            try:
                check(payload[name])
            except ProtocolError:
                raise ProtocolError(f"bad field: {name}") from None
        elif required:
            raise ProtocolError(f"missing field: {name}")
    return Message(kind, payload["node_id"], payload["hostname"], payload["primary_ip"], ts, payload)


def decode(data: bytes, secrets: Sequence[bytes], now: float,
           seen: Callable[[str], bool] | None = None) -> Message:
    """Bytes -> verified, fresh, well-formed Message.

    ``seen`` (a ReplayGuard) drops a signature already seen before the costly checks, so a
    flood of replays is cheap to refuse; the guard remembers only what passed them.
    """
    payload, sig = parse_envelope(data)
    if seen is not None and seen(sig):
        raise ProtocolError("replayed")
    verify(payload, sig, secrets)
    message = validate(payload)
    if abs(message.ts - now) > timing.MAX_CLOCK_SKEW:
        raise ProtocolError("stale")
    return Message(message.kind, message.node_id, message.hostname, message.primary_ip,
                   message.ts, payload, sig)


class ReplayGuard:
    """Remembers signatures seen within the skew window; an exact repeat is a replay.

    Bounded: at most ``size`` entries, the oldest forgotten first.  A message older than the
    window is already refused by ``decode`` as stale, so forgetting it here is safe.
    """

    def __init__(self, size: int = timing.REPLAY_CACHE_SIZE,
                 window: float = timing.MAX_CLOCK_SKEW) -> None:
        self.size = size
        self.window = window
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __call__(self, sig: str) -> bool:
        """Has this signature been seen (a cheap pre-check; see decode)?"""
        return sig in self._seen

    def is_replay(self, message: Message, now: float) -> bool:
        self._expire(now)
        if message.sig in self._seen:
            return True
        # After ts + window, decode() refuses the message as stale: no need to remember it.
        self._seen[message.sig] = message.ts + self.window
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return False

    def _expire(self, now: float) -> None:
        # Entries are in arrival order, so expiries are only roughly sorted: stop at the first
        # live one; a later, already expired entry is dropped on a later call or by the bound.
        while self._seen:
            expiry = next(iter(self._seen.values()))
            if expiry > now:
                break
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class RejectCounter:
    """Counts dropped datagrams by reason, and says when a (debug) log line is due."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    next_log: float = 0.0

    def add(self, reason: str, now: float) -> bool:
        self.counts[reason.split(":")[0]] += 1
        if now >= self.next_log:
            self.next_log = now + timing.REJECT_LOG_PERIOD
            return True
        return False

    @property
    def total(self) -> int:
        return sum(self.counts.values())

