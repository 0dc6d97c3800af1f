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
import functools
import ipaddress
import json
import re
import threading
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


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data`` from the built-in module (hashlib would load OpenSSL: ~3.5 MB of
    memory in each daemon)."""
    return _sha256(data).digest()


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

KINDS = ("HELLO", "WELCOME", "IDENTIFY", "ADVICE", "STATUS", "HEARTBEAT", "TASK", "RESULT",
         "ACK", "CANCEL", "LOGS", "LOGDATA", "PING", "PINGREQ", "PONG", "SUSPECT", "DEAD")

ROLE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+\Z")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
# What Linux and systemd allow in a hostname: letters, digits, '-', '_' and '.' (VM names often
# carry '_'), up to an FQDN's 253 characters.
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})\Z")
# A join round's id (IDENTIFY) echoed by its ADVICE: advice for an abandoned round never counts.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z\Z")
# A task's id as our controllers make it and workers accept it (it names files and units).
TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
BASE64_RE = re.compile(r"^[A-Za-z0-9+/]*={0,2}\Z")
# What a task's result may say happened (RESULT outcome).
OUTCOMES = ("exited", "signal", "timeout", "cancelled", "error", "lost")


class ProtocolError(ValueError):
    """A datagram that is not a valid, correctly signed hive message."""


class IgnoredKind(ProtocolError):
    """A datagram of a kind the receiver does not use: left unverified (decode's ``kinds``)."""


# --- validators: each takes a value and returns it, or raises ProtocolError -------------------

Validator = Callable[[Any], Any]


def _fail(what: str) -> None:
    raise ProtocolError(f"bad field: {what}")


def is_valid_role(name: Any) -> bool:
    return isinstance(name, str) and ROLE_RE.match(name) is not None


def is_valid_hostname(name: Any) -> bool:
    return isinstance(name, str) and HOSTNAME_RE.match(name) is not None


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


@functools.lru_cache(maxsize=4096)
def is_ipv4(text: str) -> bool:
    """A dotted-quad IPv4 address, as ipaddress reads it.  Remembered: a hive's few hundred
    addresses come in every message and every WELCOME's list (at 200 members a newcomer checked
    thousands, and ipaddress is slow)."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ip(nullable: bool = False) -> Validator:
    def check(value: Any) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or len(value) > 15 or not is_ipv4(value):
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
        if not isinstance(value, dict):
            _fail("object")
        try:  # what a receiver can parse: JSON values only (no sets, no NaN), within the size
            size = len(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError, RecursionError):
            _fail("object")
        if size > max_json:
            _fail("object")
        return value
    return check


# A join round's queue (IDENTIFY ``batch``): the joiners advised in the same round after the
# sender, in the agreed order.  At most MAX_BATCH ids, so the IDENTIFY fits in one datagram.
MAX_BATCH = 100

# A join round asks at most MAX_ADVISORS members' advisors (IDENTIFY ``advisors``), chosen
# afresh for each round; in a hive of up to MAX_ADVISORS members, all of them.  Advisors share
# one view and one policy, so 16 agree as 200 would: 200 answers to each joiner cost every
# member of a 200-host hive a view rewrite and an advice per join, and swamped the joiner.
MAX_ADVISORS = 16


def _node_ids(limit: int) -> Validator:
    def check(value: Any) -> Any:
        if not isinstance(value, list) or not 1 <= len(value) <= limit \
                or len(set(map(str, value))) != len(value):
            _fail("node ids")
        for item in value:
            _text(64, NODE_ID_RE)(item)
        return value
    return check


def _argv(value: Any) -> Any:
    """A command as an argument list: 1 to 256 strings, none with a NUL byte."""
    if not isinstance(value, list) or not 1 <= len(value) <= 256:
        _fail("argv")
    for item in value:
        if not isinstance(item, str) or "\0" in item or len(item) > 4096:
            _fail("argv")
    if not value[0]:
        _fail("argv")
    return value


def _choice(*values: str) -> Validator:
    def check(value: Any) -> Any:
        if value not in values:
            _fail("one of " + ", ".join(values))
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
        ("interval", _number(0.05, 86400), False),
        ("started", _timestamp(nullable=True), False),
        ("joined_at", _timestamp(nullable=True), False),
        ("role_since", _timestamp(nullable=True), False),
        ("rebalance", _boolean, False),
        ("probe", _number(0, 3600), False),            # its probe interval: it answers PINGs
        ("incarnation", _timestamp(), False),          # its newest refutation (default: started)
        ("keepalive", _number(0.1, 60), False),        # a joiner: its next keep-alive within
    ),
    "WELCOME": (
        ("to", _text(64, NODE_ID_RE), False),
        ("role", _role(nullable=True), False),
        ("members", _number(0, 1_000_000, integer=True), False),
        ("joining_since", _timestamp(nullable=True), False),
        ("capabilities", _capabilities, False),
        ("interval", _number(0.05, 86400), False),
        ("started", _timestamp(nullable=True), False),
        ("joined_at", _timestamp(nullable=True), False),
        ("role_since", _timestamp(nullable=True), False),
        ("rebalance", _boolean, False),
        ("probe", _number(0, 3600), False),            # its probe interval: it answers PINGs
        ("incarnation", _timestamp(), False),          # its newest refutation (default: started)
    ),
    "IDENTIFY": (
        ("request", _text(32), False),
        ("request_id", _text(32, REQUEST_ID_RE), False),
        ("candidate_ip", _ip(nullable=True), False),
        ("capabilities", _capabilities, False),
        ("attempt", _number(0, 1000, integer=True), False),
        ("joining_since", _timestamp(nullable=True), False),
        ("reask", _boolean, False),         # a member asking for a new role (healing)
        ("role", _role(nullable=True), False),  # ... and the role it has now
        ("batch", _node_ids(MAX_BATCH), False),  # joiners advised after the sender, in order
        ("batch_of", _text(64, NODE_ID_RE), False),  # a joiner of that asker's batch, again
        ("members", _number(0, 1_000_000, integer=True), False),  # members the asker knows
        ("advisors", _node_ids(MAX_ADVISORS), False),  # the members asked (default: all)
    ),
    "ADVICE": (
        ("to", _text(64, NODE_ID_RE), False),
        ("suggested_role", _role(), True),
        ("packages", _packages, True),
        ("config", _object(4096), True),
        ("reason", _text(300), True),
        ("request_id", _text(32, REQUEST_ID_RE), False),
        ("batch_of", _text(64, NODE_ID_RE), False),  # the asker whose batch this answers
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
        ("started", _timestamp(nullable=True), False),
        ("joined_at", _timestamp(nullable=True), False),
        ("role_since", _timestamp(nullable=True), False),
        ("rebalance", _boolean, False),
        ("queue", _number(0, 1_000_000, integer=True), False),  # a controller's queued tasks
        ("probe", _number(0, 3600), False),            # its probe interval: it answers PINGs
        ("incarnation", _timestamp(), False),          # its newest refutation (default: started)
    ),
    "HEARTBEAT": (
        ("identity", _identity, False),
        ("interval", _number(0.05, 86400), False),
    ),
    # Failure detection (see build_agent/probe.py): each member PINGs its successor on a ring
    # by node id and gets a PONG; with none, PINGREQ asks helpers to PING the target for it, and
    # they answer PONG with ``target`` (``ok`` false: they got no answer either).  SUSPECT tells
    # a target it is suspected (it refutes with a STATUS carrying a new ``incarnation``); DEAD
    # (to everyone) declares a member dead, unless the receiver knows a newer incarnation.
    "PING": (
        ("to", _text(64, NODE_ID_RE), True),
        ("seq", _number(0, 2**31, integer=True), True),
    ),
    "PINGREQ": (
        ("to", _text(64, NODE_ID_RE), True),
        ("target", _text(64, NODE_ID_RE), True),
        ("target_ip", _ip(), True),
        ("seq", _number(0, 2**31, integer=True), True),
    ),
    "PONG": (
        ("to", _text(64, NODE_ID_RE), True),
        ("seq", _number(0, 2**31, integer=True), True),
        ("target", _text(64, NODE_ID_RE), False),  # a helper's answer about this node
        ("ok", _boolean, False),                   # ... false: it did not answer the helper
        ("incarnation", _timestamp(), False),      # the sender's, once it refuted a suspicion
    ),
    "SUSPECT": (
        ("to", _text(64, NODE_ID_RE), True),
        ("incarnation", _timestamp(), True),
    ),
    "DEAD": (
        ("target", _text(64, NODE_ID_RE), True),
        ("target_ip", _ip(), False),
        ("incarnation", _timestamp(), True),
    ),
    # Build work (see build_agent/tasks.py): a controller sends TASK to a worker; every TASK,
    # RESULT and CANCEL is acknowledged (ACK) and sent again until it is; LOGS asks a worker for
    # a task's output, LOGDATA is one chunk of it.  ``to`` names the one node a message is for.
    "TASK": (
        ("id", _text(64), True),
        ("command", _text(4096), False),   # the seed's form; our controllers send argv
        ("repo", _text(1024), False),
        ("to", _text(64, NODE_ID_RE), False),
        ("attempt", _number(1, 1000, integer=True), False),
        ("argv", _argv, False),
        ("role", _role(nullable=True), False),
        ("timeout", _number(1, 604800), False),
        ("probe", _boolean, False),        # "do you still have this attempt?" (never starts it)
    ),
    "RESULT": (
        ("task_id", _text(64), True),
        ("output", _text(4096), False),    # the last lines of the output
        ("rc", _number(-1024, 1024, integer=True), False),
        ("to", _text(64, NODE_ID_RE), False),
        ("attempt", _number(1, 1000, integer=True), False),
        ("outcome", _choice(*OUTCOMES), False),
        ("signal", _number(1, 128, integer=True), False),
        ("duration", _number(0, 1e8), False),
        ("error", _text(300), False),
    ),
    "ACK": (
        ("to", _text(64, NODE_ID_RE), True),
        ("of", _choice("TASK", "RESULT", "CANCEL"), True),
        ("task_id", _text(64, TASK_ID_RE), True),
        ("attempt", _number(1, 1000, integer=True), True),
        ("state", _text(16), False),
        ("error", _text(300), False),
    ),
    "CANCEL": (
        ("to", _text(64, NODE_ID_RE), True),
        ("task_id", _text(64, TASK_ID_RE), True),
        ("attempt", _number(1, 1000, integer=True), True),
    ),
    "LOGS": (
        ("to", _text(64, NODE_ID_RE), True),
        ("task_id", _text(64, TASK_ID_RE), True),
        ("attempt", _number(1, 1000, integer=True), True),
        ("offset", _number(0, 2**53, integer=True), True),
        ("request", _text(32, REQUEST_ID_RE), True),
    ),
    "LOGDATA": (
        ("to", _text(64, NODE_ID_RE), True),
        ("task_id", _text(64, TASK_ID_RE), True),
        ("attempt", _number(1, 1000, integer=True), True),
        ("offset", _number(0, 2**53, integer=True), True),
        ("request", _text(32, REQUEST_ID_RE), True),
        ("data", _text(6000, BASE64_RE), False),   # base64 of up to LOG_CHUNK bytes
        ("size", _number(0, 2**53, integer=True), False),  # the output's size so far
        ("done", _boolean, False),        # the attempt has ended: the output is complete
        ("error", _text(300), False),
    ),
}


# --- time -----------------------------------------------------------------------------------

# peers.json stamps every member's times at each rewrite, and most are the same as the last
# time: strftime was a tenth of a 200-member rewrite.  (Pure functions: safe to remember.)
@functools.lru_cache(maxsize=4096)
def format_ts(now: float) -> str:
    """Seconds since the epoch -> UTC ISO 8601 with microseconds and 'Z'."""
    moment = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_ts_seconds(now: float) -> str:
    """Seconds since the epoch -> UTC ISO 8601 to the second with 'Z' (as in identity.json)."""
    return _format_second(int(now // 1))


@functools.lru_cache(maxsize=1024)
def _format_second(second: int) -> str:
    return _dt.datetime.fromtimestamp(second, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(value: Any) -> float:
    """UTC ISO 8601 with 'Z' -> seconds since the epoch."""
    if not isinstance(value, str):
        raise ProtocolError("bad field: ts")
    return _parse_ts(value)


# A member's STATUS repeats the same stamps (joined_at, role_since, started) at every
# heartbeat, and a message's ts is parsed by the replay guard then by decode(): remembered,
# they are parsed once (bounded: TS_CACHE entries; a failure is not remembered).
@functools.lru_cache(maxsize=timing.TS_CACHE)
def _parse_ts(value: str) -> float:
    if not TS_RE.match(value):
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
    # The datagram as it came (decode): the agent hands an IDENTIFY to its advisor as it came.
    data: bytes = field(default=b"", repr=False, compare=False)

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
    """Sign a payload and return the datagram.

    The payload is checked with exactly the rules a receiver applies (``validate``): a message
    the hive would drop is never sent, so a node is never silently muted.  ProtocolError says
    why (also for a datagram over MAX_DATAGRAM or a value JSON cannot carry, such as NaN)."""
    validate(payload)
    try:
        signature = sign(payload, secret)
        envelope = {"magic": MAGIC, "payload": payload, "sig": signature}
        data = json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"not json: {exc}") from None
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError("oversized")
    return data


_MAGIC_TOKEN = b'"' + MAGIC.encode("ascii") + b'"'
_JSON_SPACE = b" \t\n\r"


def precheck(data: bytes) -> str | None:
    """Cheap checks on the raw bytes, before any parsing: the reason to drop, or None.

    They never refuse a datagram ``decode`` would accept: an accepted datagram is a JSON object
    (first and last non-blank bytes ``{`` and ``}``) whose text holds the magic as a string, and
    with no backslash in the text (no JSON escape) that is the literal ``"BUILD/HELLO/v1"``.
    A flood of garbage is then dropped without decoding, parsing or hashing it."""
    if len(data) > MAX_DATAGRAM:
        return "oversized"
    if data[:1] != b"{" or data[-1:] != b"}":
        body = data.strip(_JSON_SPACE)
        if body[:1] != b"{" or body[-1:] != b"}":
            return "not json"
    if _MAGIC_TOKEN not in data and b"\\" not in data:
        return "wrong magic"
    return None


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
        try:
            check(payload[name])
        except ProtocolError:
            raise ProtocolError(f"bad field: {name}") from None
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
           seen: Callable[[dict], bool] | None = None,
           kinds: frozenset[str] | None = None) -> Message:
    """Bytes -> verified, fresh, well-formed Message.

    ``seen`` (a ReplayGuard) refuses a message no newer than one already accepted from its
    sender before the costly checks, so a flood of replays is cheap to refuse; the guard
    remembers only what passed them (see ReplayGuard.is_replay).

    ``kinds``: the kinds the receiver uses; any other raises IgnoredKind before the signature
    is checked (a daemon that has no use for a message need not pay for verifying it).
    """
    payload, sig = parse_envelope(data)
    if kinds is not None and payload.get("kind") not in kinds:
        raise IgnoredKind("ignored kind")
    if seen is not None and seen(payload):
        raise ProtocolError("replayed")
    verify(payload, sig, secrets)
    message = validate(payload)
    if abs(message.ts - now) > timing.MAX_CLOCK_SKEW:
        raise ProtocolError("stale")
    return Message(message.kind, message.node_id, message.hostname, message.primary_ip,
                   message.ts, payload, sig, data)


class ReplayGuard:
    """Replay protection that holds at any hive size: per sender and kind, the newest ``ts``
    accepted.  A message that is not strictly newer is a replay (goodbyes included).

    Senders stamp their messages with strictly increasing times (``Stamper``), so a sender's
    messages of one kind arrive with growing ``ts`` even across a wall-clock step back.  Memory
    is one entry per (sender, kind): bounded by ``size`` (least recently used forgotten first),
    and an entry older than the skew window is dropped, since decode() refuses anything that
    old as stale anyway.  Only verified messages create entries, so a flood of forgeries
    cannot push real senders out.
    """

    def __init__(self, size: int = timing.REPLAY_GUARD_SENDERS,
                 window: float = timing.MAX_CLOCK_SKEW,
                 recent: int = timing.REPLAY_GUARD_RECENT) -> None:
        self.size = size
        self.window = window
        self._newest: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        # Digests of the last ``recent`` datagrams accepted (bytes as received): a datagram
        # identical to one of them is a replay, known before it is even parsed.
        self.recent = recent
        self._recent: dict[int, None] = {}

    def repeated(self, data: bytes) -> bool:
        """Cheapest pre-check, on the raw bytes: a copy of a datagram accepted lately?  (A
        sender never sends the same bytes twice: its stamps strictly increase.)"""
        return hash(data) in self._recent

    def accepted(self, data: bytes) -> None:
        """Remember a datagram that passed every check, or was dropped as a kind the receiver
        does not use (see ``repeated``); bounded."""
        recent = self._recent
        recent[hash(data)] = None
        if len(recent) > self.recent:
            del recent[next(iter(recent))]

    def __call__(self, payload: dict) -> bool:
        """Cheap pre-check on an unverified payload: is it no newer than what we accepted?"""
        try:
            key = (payload["node_id"], payload["kind"])
            newest = self._newest.get(key)
            return newest is not None and parse_ts(payload.get("ts")) <= newest
        except (KeyError, TypeError, ProtocolError):
            return False  # malformed: decode() refuses it with the precise reason

    def is_replay(self, message: Message, now: float) -> bool:
        """For a verified message: True if it is a replay, else remember it as the newest."""
        self._expire(now)
        key = (message.node_id, message.kind)
        newest = self._newest.get(key)
        if newest is not None and message.ts <= newest:
            return True
        self._newest[key] = message.ts
        self._newest.move_to_end(key)
        while len(self._newest) > self.size:
            self._newest.popitem(last=False)
        return False

    def _expire(self, now: float) -> None:
        # Least recently updated first: stop at the first entry still inside the window.
        while self._newest:
            key, newest = next(iter(self._newest.items()))
            if newest + self.window > now:
                break
            del self._newest[key]

    def __len__(self) -> int:
        return len(self._newest)


class Stamper:
    """Strictly increasing message times (microseconds) from a wall clock that may step back.

    A receiver's ReplayGuard refuses a message no newer than the last one of its kind from us;
    after an NTP step back we keep counting up from the last stamp until the clock catches up
    (within MAX_CLOCK_SKEW, so receivers still find the stamp fresh)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._last_us = 0
        self._lock = threading.Lock()  # the advisor builds ADVICE in policy threads too

    def __call__(self) -> float:
        now_us = int(self.clock() * 1_000_000)
        with self._lock:
            self._last_us = max(now_us, self._last_us + 1)
            return self._last_us / 1_000_000


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

