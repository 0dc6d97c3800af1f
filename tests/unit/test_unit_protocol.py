"""The wire format: test vector, signatures, envelope errors, freshness, replays, field checks."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from build_agent import protocol, timing
from build_agent.protocol import MAGIC, Message, ProtocolError, ReplayGuard
from hive_fakes import SECRET, T0

VECTOR_SECRET = b"s3cr3t-hive"
VECTOR = (b'{"magic":"BUILD/HELLO/v1","payload":{"kind":"HELLO",'
          b'"node_id":"0b5c1a9e-3f1e-4c59-9a3c-2f7d0f6b1e01","hostname":"build3",'
          b'"primary_ip":"192.168.1.23","candidate_ip":null,"ts":"2026-11-26T12:00:00.000000Z"},'
          b'"sig":"aae36f187692f0c9219a5e9e3fb4ab878371f658dd64e9420d9132f7d2a9c7e3"}')
VECTOR_SIG = "aae36f187692f0c9219a5e9e3fb4ab878371f658dd64e9420d9132f7d2a9c7e3"
VECTOR_NODE = "0b5c1a9e-3f1e-4c59-9a3c-2f7d0f6b1e01"
VECTOR_TS = 1_795_694_400.0  # 2026-11-26T12:00:00Z

NODE = "11111111-2222-3333-4444-555555555555"


def datagram(payload: dict, secret: bytes = SECRET, magic: str = MAGIC, sig: str | None = None
             ) -> bytes:
    """A datagram for a hand-made payload (keys in the dict's order), signed unless sig given."""
    envelope = {"magic": magic, "payload": payload,
                "sig": protocol.sign(payload, secret) if sig is None else sig}
    return json.dumps(envelope, separators=(",", ":")).encode()


def base(kind: str = "HELLO", now: float = T0, **fields) -> dict:
    payload = {"kind": kind, "node_id": NODE, "hostname": "build1", "primary_ip": "10.0.0.1"}
    payload.update(fields)
    payload["ts"] = protocol.format_ts(now)
    return payload


def decode(data: bytes, now: float = T0, secrets=(SECRET,)) -> Message:
    return protocol.decode(data, list(secrets), now)


def reason(data: bytes, now: float = T0, secrets=(SECRET,)) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, now, secrets)
    return str(info.value)


# --- the test vector from the issue ---------------------------------------------------------

def test_vector_decodes_and_verifies():
    message = protocol.decode(VECTOR, [VECTOR_SECRET], VECTOR_TS)
    assert message.kind == "HELLO"
    assert message.node_id == VECTOR_NODE
    assert message.hostname == "build3"
    assert message.primary_ip == "192.168.1.23"
    assert message.ts == VECTOR_TS
    assert message.sig == VECTOR_SIG
    assert message.get("candidate_ip") is None and "candidate_ip" in message.payload
    assert list(message.payload) == ["kind", "node_id", "hostname", "primary_ip", "candidate_ip",
                                     "ts"]


def test_vector_is_reproduced_byte_for_byte():
    payload = protocol.make_payload("HELLO", VECTOR_NODE, "build3", "192.168.1.23", VECTOR_TS,
                                    candidate_ip=None)
    assert protocol.sign(payload, VECTOR_SECRET) == VECTOR_SIG
    assert protocol.encode(payload, VECTOR_SECRET) == VECTOR


def test_vector_with_another_secret_is_rejected():
    assert reason(VECTOR, VECTOR_TS, [b"another-secret-of-16+"]) == "bad signature"


# --- signatures -----------------------------------------------------------------------------

@pytest.mark.parametrize("old, new", [
    (b'"hostname":"build3"', b'"hostname":"build4"'),
    (b'"primary_ip":"192.168.1.23"', b'"primary_ip":"192.168.1.24"'),
    (b'"candidate_ip":null', b'"candidate_ip":"192.168.1.99"'),
    (b'"ts":"2026-11-26T12:00:00.000000Z"', b'"ts":"2026-11-26T12:00:01.000000Z"'),
    (b'"candidate_ip":null,', b''),  # a key removed
    (b'"candidate_ip":null,', b'"candidate_ip":null,"role":"builder",'),  # a key added
])
def test_tampered_payload_is_rejected(old, new):
    tampered = VECTOR.replace(old, new)
    assert tampered != VECTOR
    assert reason(tampered, VECTOR_TS, [VECTOR_SECRET]) == "bad signature"


@pytest.mark.parametrize("sig", [
    "b" + VECTOR_SIG[1:],          # one hex digit changed
    VECTOR_SIG.upper(),            # not lowercase
    VECTOR_SIG[:-1],               # too short
    VECTOR_SIG + "0",              # too long
    "",
    "z" * 64,
    "é" * 64,                      # 64 characters, not ASCII
    "\u0000" * 64,
])
def test_tampered_signature_is_rejected(sig):
    data = VECTOR.replace(VECTOR_SIG.encode(), json.dumps(sig)[1:-1].encode())
    assert reason(data, VECTOR_TS, [VECTOR_SECRET]) == "bad signature"


def test_signature_that_is_not_a_string_is_rejected():
    for sig in (None, 5, ["a"], {"a": 1}):
        envelope = {"magic": MAGIC, "payload": base(), "sig": sig}
        assert reason(json.dumps(envelope).encode()) == "bad envelope"
    envelope = {"magic": MAGIC, "payload": base()}
    assert reason(json.dumps(envelope).encode()) == "bad envelope"


def test_signature_is_over_received_key_order():
    payload = base(candidate_ip=None)
    reordered = {"ts": payload["ts"], **{k: v for k, v in payload.items() if k != "ts"}}
    assert reordered == payload and list(reordered) != list(payload)
    # The original signature does not cover the reordered payload ...
    assert reason(datagram(reordered, sig=protocol.sign(payload, SECRET))) == "bad signature"
    # ... but a signature over the order as sent verifies, and the order is kept.
    message = decode(datagram(reordered))
    assert list(message.payload) == list(reordered)
    assert decode(datagram(payload)).sig != message.sig


def test_signature_over_non_compact_json_is_over_the_compact_form():
    payload = base()
    spaced = json.dumps({"magic": MAGIC, "payload": payload,
                         "sig": protocol.sign(payload, SECRET)}, indent=2).encode()
    assert decode(spaced).hostname == "build1"


# --- multiple secrets -------------------------------------------------------------------------

def test_several_secrets_all_verify_and_others_do_not():
    old, new, other = b"old-secret-0123456789", b"new-secret-0123456789", b"other-secret-01234567"
    for signer in (old, new):
        data = datagram(base(), secret=signer)
        assert decode(data, secrets=[new, old]).node_id == NODE
        assert decode(data, secrets=[old, new]).node_id == NODE
    assert reason(datagram(base(), secret=other), secrets=[new, old]) == "bad signature"
    assert reason(datagram(base(), secret=old), secrets=[]) == "bad signature"


# --- envelope errors --------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [0, 1, 10, len(VECTOR) // 2, len(VECTOR) - 2, len(VECTOR) - 1])
def test_truncated_datagram_is_rejected(cut):
    with pytest.raises(ProtocolError):
        protocol.decode(VECTOR[:cut], [VECTOR_SECRET], VECTOR_TS)


def _padded(size: int) -> bytes:
    """A correctly signed datagram of exactly ``size`` bytes (padding in an unknown key)."""
    payload = base(pad="")
    payload = {**{k: v for k, v in payload.items() if k != "ts"}, "pad": "", "ts": payload["ts"]}
    short = len(datagram(payload))
    payload["pad"] = "x" * (size - short)
    data = datagram(payload)
    assert len(data) == size
    return data


def test_datagram_of_exactly_max_size_is_accepted():
    assert len(decode(_padded(protocol.MAX_DATAGRAM)).get("pad")) > 7900


def test_oversized_datagram_is_rejected_even_when_signed():
    assert reason(_padded(protocol.MAX_DATAGRAM + 1)) == "oversized"
    assert reason(b" " * 100_000) == "oversized"


def test_encode_refuses_to_build_an_oversized_datagram():
    with pytest.raises(ProtocolError, match="oversized"):
        protocol.encode(base(pad="x" * protocol.MAX_DATAGRAM), SECRET)


@pytest.mark.parametrize("data", [
    VECTOR.replace(b"build3", b"build\xff"),
    b"\xff\xfe{}",
    b'{"magic":"\xc3"}',              # truncated UTF-8 sequence
    b'{"magic":"\xed\xa0\x80"}',      # an encoded surrogate
])
def test_non_utf8_is_rejected(data):
    assert reason(data, VECTOR_TS, [VECTOR_SECRET]) == "not utf-8"


@pytest.mark.parametrize("magic", ["BUILD/HELLO/v2", "build/hello/v1", "", None, 1, ["BUILD/HELLO/v1"]])
def test_wrong_magic_is_rejected(magic):
    assert reason(datagram(base(), magic=magic)) == "wrong magic"


def test_missing_magic_is_rejected():
    payload = base()
    data = json.dumps({"payload": payload, "sig": protocol.sign(payload, SECRET)}).encode()
    assert reason(data) == "wrong magic"


@pytest.mark.parametrize("data", [b"", b"hello", b"{", b"{'a': 1}", b'{"magic":}', b"\x00",
                                  b'{"a":1} {"b":2}', VECTOR + b"}"])
def test_not_json_is_rejected(data):
    assert reason(data) == "not json"


@pytest.mark.parametrize("data", [b"[]", b'["magic"]', b'"BUILD/HELLO/v1"', b"1", b"null",
                                  b"true"])
def test_json_that_is_not_an_object_is_rejected(data):
    assert reason(data) == "bad envelope"


@pytest.mark.parametrize("payload", [None, [], "x", 1, [["kind", "HELLO"]]])
def test_payload_that_is_not_an_object_is_rejected(payload):
    data = json.dumps({"magic": MAGIC, "payload": payload, "sig": "0" * 64}).encode()
    assert reason(data) == "bad envelope"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_constants_are_rejected(constant):
    # Signed by the sender over the same text, so only the constant can be the reason.
    payload = base(load=0.5)
    text = datagram(payload).decode().replace('"load":0.5', f'"load":{constant}')
    signed_text = protocol.canonical(payload).decode().replace('"load":0.5', f'"load":{constant}')
    sig = hmac.new(SECRET, signed_text.encode(), hashlib.sha256).hexdigest()
    text = text.replace(protocol.sign(payload, SECRET), sig)
    assert constant in text
    assert reason(text.encode()) == "not json"


def test_deep_nesting_is_rejected_without_recursion_error():
    depth = 4000
    data = (b'{"magic":"BUILD/HELLO/v1","payload":{"x":' + b"[" * depth + b"]" * depth
            + b'},"sig":"' + b"0" * 64 + b'"}')
    assert len(data) <= protocol.MAX_DATAGRAM
    assert reason(data) == "not json"
    objects = b'{"a":' * 1300 + b"1" + b"}" * 1300
    assert len(objects) <= protocol.MAX_DATAGRAM
    with pytest.raises(ProtocolError):
        decode(objects)


def test_moderate_nesting_in_an_unknown_key_is_kept():
    nested: object = 1
    for _ in range(30):
        nested = {"n": [nested]}
    message = decode(datagram(base(extra=nested)))
    assert message.get("extra") == nested


# --- freshness ----------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [-timing.MAX_CLOCK_SKEW, -1.0, 0.0, 1.0, timing.MAX_CLOCK_SKEW])
def test_fresh_within_and_at_the_boundary(offset):
    assert timing.MAX_CLOCK_SKEW == 300.0
    assert decode(datagram(base(now=T0)), now=T0 + offset).ts == T0


@pytest.mark.parametrize("offset", [-300.001, -301.0, 300.001, 301.0, 3600.0, -86400.0 * 365])
def test_stale_either_way_is_rejected(offset):
    assert reason(datagram(base(now=T0)), now=T0 + offset) == "stale"


@pytest.mark.parametrize("ts, expected", [
    ("2026-11-26T12:00:00Z", T0),
    ("2026-11-26T12:00:00.5Z", T0 + 0.5),
    ("2026-11-26T12:00:00.000001Z", T0 + 0.000001),
])
def test_timestamp_formats_accepted(ts, expected):
    assert protocol.parse_ts(ts) == pytest.approx(expected, abs=1e-6)
    payload = {**base(), "ts": ts}
    assert decode(datagram(payload)).ts == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("ts", [
    "2026-11-26T12:00:00", "2026-11-26T12:00:00+00:00", "2026-11-26 12:00:00Z",
    "2026-11-26T12:00:00.1234567Z", "2026-13-26T12:00:00Z", "2026-11-26T25:00:00Z",
    "2026-11-26T12:00:00z", "2026-11-26T12:00:00Z\n", "", None, 1795694400, 1795694400.0, [],
])
def test_bad_timestamps_are_rejected(ts):
    payload = {**base(), "ts": ts}
    with pytest.raises(ProtocolError):
        decode(datagram(payload))


def test_missing_timestamp_is_rejected():
    payload = base()
    del payload["ts"]
    with pytest.raises(ProtocolError):
        decode(datagram(payload))


def test_format_ts_round_trips():
    for now in (T0, T0 + 0.25, T0 + 123.456789):
        text = protocol.format_ts(now)
        assert text.endswith("Z") and protocol.TS_RE.match(text)
        assert protocol.parse_ts(text) == pytest.approx(now, abs=1e-6)
    assert protocol.format_ts_seconds(T0 + 0.9) == "2026-11-26T12:00:00Z"


# --- replays ------------------------------------------------------------------------------------

def test_a_message_no_newer_than_its_senders_last_is_a_replay():
    guard = ReplayGuard()
    first = decode(datagram(base(now=T0)))
    again = decode(datagram(base(now=T0)))  # the same bytes received twice
    other = decode(datagram(base(now=T0 + 0.001)))
    older = decode(datagram(base(now=T0 - 5)))  # an earlier message of the sender, replayed late
    assert not guard.is_replay(first, T0)
    assert guard.is_replay(again, T0 + 1)
    assert not guard.is_replay(other, T0 + 1)
    assert guard.is_replay(other, T0 + 2)
    assert guard.is_replay(older, T0 + 2)
    assert len(guard) == 1  # one entry per sender and kind, however many messages


def test_each_kind_of_a_sender_is_tracked_on_its_own():
    # The agent (STATUS, HELLO ...) and the advisor (ADVICE) of one node share its node id.
    guard = ReplayGuard()
    status = decode(datagram(base("STATUS", now=T0 + 1, role="builder")))
    hello = decode(datagram(base("HELLO", now=T0)))
    assert not guard.is_replay(status, T0 + 1)
    assert not guard.is_replay(hello, T0 + 1)
    assert len(guard) == 2


def test_replay_protection_holds_at_any_rate_and_hive_size():
    """The old signature cache (8192 entries) forgot a message after ~27 messages/s for 300 s;
    a 200-node hive exceeds that.  Here 200 senders send 60,000 messages: every one of them,
    replayed at the end, is still refused, with one entry per sender."""
    guard = ReplayGuard()
    last = {}
    for i in range(60_000):
        node = f"node-{i % 200:03d}"
        msg = Message("STATUS", node, "h", "10.0.0.1", T0 + i * 0.005, {}, f"{i:064x}")
        assert not guard.is_replay(msg, T0 + i * 0.005)
        last[node] = msg
    for msg in last.values():
        assert guard.is_replay(msg, T0 + 300)
    early = Message("STATUS", "node-007", "h", "10.0.0.1", T0 + 1.0, {}, "e" * 64)
    assert guard.is_replay(early, T0 + 300)
    assert len(guard) == 200


def test_a_replayed_goodbye_is_refused():
    guard = ReplayGuard()
    goodbye = decode(datagram(base("STATUS", now=T0, role="builder", state="leaving")))
    back = decode(datagram(base("STATUS", now=T0 + 30, role="builder", state="active")))
    assert not guard.is_replay(goodbye, T0)
    assert not guard.is_replay(back, T0 + 30)
    assert guard.is_replay(goodbye, T0 + 31)


def test_the_guard_is_bounded_and_forgets_the_least_recent_sender():
    guard = ReplayGuard(size=3)
    messages = [Message("STATUS", f"n{i}", "h", "10.0.0.1", T0 + i, {}, "") for i in range(5)]
    for message in messages:
        assert not guard.is_replay(message, T0 + 5)
    assert len(guard) == 3
    assert guard.is_replay(messages[4], T0 + 5)   # newest still remembered
    assert not guard.is_replay(messages[0], T0 + 5)  # least recent forgotten
    assert len(guard) == 3
    assert ReplayGuard().size == timing.REPLAY_GUARD_SENDERS > 0


def test_guard_entries_expire_after_the_window():
    guard = ReplayGuard(window=300.0)
    message = decode(datagram(base()))
    assert not guard.is_replay(message, T0)
    # Remembered for as long as decode() would still call the message fresh (ts + window) ...
    assert guard.is_replay(message, message.ts + 299.0)
    # ... and forgotten after that (decode refuses it as stale by then anyway).
    other = Message("HELLO", "other", "h", "10.0.0.1", T0 + 700, {}, "")
    assert not guard.is_replay(other, T0 + 700)
    assert len(guard) == 1  # the old entry expired


def test_stamps_increase_strictly_even_when_the_clock_steps_back():
    clock = [T0]
    stamp = protocol.Stamper(lambda: clock[0])
    first = stamp()
    assert first == pytest.approx(T0, abs=1e-6)
    assert stamp() > first  # same clock reading: still later
    clock[0] = T0 - 30  # NTP steps the clock back 30 s
    stamps = [stamp() for _ in range(3)]
    assert stamps == sorted(stamps) and stamps[0] > first
    # Every stamp survives the trip through the wire format, still in order.
    assert [protocol.parse_ts(protocol.format_ts(x)) for x in stamps] == stamps
    clock[0] = T0 + 10
    assert stamp() == pytest.approx(T0 + 10, abs=1e-6)


# --- fields: required, types, lengths -------------------------------------------------------

ADVICE_FIELDS = dict(to=NODE, suggested_role="builder", packages=["git"], config={}, reason="r")


@pytest.mark.parametrize("name", ["kind", "node_id", "hostname", "primary_ip"])
def test_common_fields_are_required(name):
    payload = base()
    del payload[name]
    assert reason(datagram(payload)) == f"missing field: {name}"


@pytest.mark.parametrize("kind, fields, missing", [
    ("ADVICE", ADVICE_FIELDS, "suggested_role"),
    ("ADVICE", ADVICE_FIELDS, "packages"),
    ("ADVICE", ADVICE_FIELDS, "config"),
    ("ADVICE", ADVICE_FIELDS, "reason"),
    ("TASK", {"id": "t1", "command": "make"}, "id"),
    ("RESULT", {"task_id": "t1", "rc": 0}, "task_id"),
])
def test_kind_specific_required_fields(kind, fields, missing):
    complete = base(kind, **fields)
    assert decode(datagram(complete)).kind == kind
    payload = {k: v for k, v in complete.items() if k != missing}
    assert reason(datagram(payload)) == f"missing field: {missing}"


TASK_KINDS_REQUIRED = {
    "ACK": {"to": NODE, "of": "TASK", "task_id": "t1", "attempt": 1},
    "CANCEL": {"to": NODE, "task_id": "t1", "attempt": 1},
    "LOGS": {"to": NODE, "task_id": "t1", "attempt": 1, "offset": 0, "request": "r1"},
    "LOGDATA": {"to": NODE, "task_id": "t1", "attempt": 1, "offset": 0, "request": "r1"},
    # failure detection (probe.py)
    "PING": {"to": NODE, "seq": 1},
    "PINGREQ": {"to": NODE, "target": NODE, "target_ip": "10.0.0.9", "seq": 1},
    "PONG": {"to": NODE, "seq": 1},
    "SUSPECT": {"to": NODE, "incarnation": "2026-11-27T12:00:00.000000Z"},
    "DEAD": {"target": NODE, "incarnation": "2026-11-27T12:00:00.000000Z"},
}


@pytest.mark.parametrize("kind", protocol.KINDS)
def test_every_kind_with_only_required_fields(kind):
    required = {"ADVICE": ADVICE_FIELDS, "TASK": {"id": "t"}, "RESULT": {"task_id": "t"},
                **TASK_KINDS_REQUIRED}
    message = decode(datagram(base(kind, **required.get(kind, {}))))
    assert message.kind == kind


@pytest.mark.parametrize("kind", ["BYE", "hello", "", "X" * 17, 5, None, ["HELLO"]])
def test_unknown_or_malformed_kind_is_rejected(kind):
    with pytest.raises(ProtocolError):
        decode(datagram(base(kind)))


def test_make_payload_refuses_unknown_kind():
    with pytest.raises(ProtocolError):
        protocol.make_payload("BYE", NODE, "h", "10.0.0.1", T0)


VALID_ROLES = ["a", "0", "builder", "ml-trainer", "a.b_c-d", "9lives", "a" * 63, "founder"]
INVALID_ROLES = ["", "Builder", "-x", ".x", "_x", "a" * 64, "a b", "bü", "role!", "a/b",
                 "builder\n", "\nbuilder", "builder\x00", 5, True, ["builder"], {"r": 1}]


@pytest.mark.parametrize("role", VALID_ROLES)
def test_valid_roles(role):
    assert protocol.is_valid_role(role)
    assert decode(datagram(base("ADVICE", **{**ADVICE_FIELDS, "suggested_role": role}))).get(
        "suggested_role") == role
    assert decode(datagram(base("STATUS", role=role))).get("role") == role


@pytest.mark.parametrize("role", INVALID_ROLES)
def test_invalid_roles(role):
    assert not protocol.is_valid_role(role)
    assert reason(datagram(base("ADVICE", **{**ADVICE_FIELDS, "suggested_role": role}))) \
        == "bad field: suggested_role"
    for kind in ("STATUS", "HELLO", "WELCOME"):
        assert reason(datagram(base(kind, role=role))) == "bad field: role"


def test_role_may_be_null_where_a_node_is_joining_but_not_in_advice():
    for kind in ("STATUS", "HELLO", "WELCOME"):
        assert decode(datagram(base(kind, role=None))).get("role") is None
    assert reason(datagram(base("ADVICE", **{**ADVICE_FIELDS, "suggested_role": None}))) \
        == "bad field: suggested_role"


VALID_PACKAGES = ["git", "libc6-dev", "python3.11", "ab", "openjdk-17-jdk", "0ad",
                  "libstdc++6", "a" * 128]
INVALID_PACKAGES = ["a", "-oops", "rm -rf", "rm -rf /", "Git", "git+", "g++", "git-", "+git", ".git",
                    "git\n", "git;ls", "pkg=1.0", "pkg:amd64", "", "a" * 129, 5, None, ["git"]]


@pytest.mark.parametrize("name", VALID_PACKAGES)
def test_valid_package_names(name):
    assert protocol.is_valid_package(name)
    assert decode(datagram(base("ADVICE", **{**ADVICE_FIELDS, "packages": [name]}))).get(
        "packages") == [name]


@pytest.mark.parametrize("name", INVALID_PACKAGES)
def test_invalid_package_names(name):
    assert not protocol.is_valid_package(name)
    assert reason(datagram(base("ADVICE", **{**ADVICE_FIELDS, "packages": ["git", name]}))) \
        == "bad field: packages"


@pytest.mark.parametrize("packages", ["git", {"git": 1}, None, ["git"] * 65])
def test_packages_must_be_a_short_list(packages):
    assert reason(datagram(base("ADVICE", **{**ADVICE_FIELDS, "packages": packages}))) \
        == "bad field: packages"


def test_empty_and_long_package_lists_within_the_limit():
    names = [f"pkg{i}" for i in range(64)]
    assert decode(datagram(base("ADVICE", **{**ADVICE_FIELDS, "packages": names}))).get(
        "packages") == names
    assert decode(datagram(base("ADVICE", **{**ADVICE_FIELDS, "packages": []}))).get(
        "packages") == []


INVALID_IPS = ["256.1.1.1", "1.2.3", "1.2.3.4.5", "::1", "fe80::1", "10.0.0.1 ", " 10.0.0.1",
               "", "localhost", "10.0.0.01", "1.2.3.4/24", "10.0.0.1\n", 167772161, None, True]


@pytest.mark.parametrize("ip", INVALID_IPS)
def test_invalid_primary_ip(ip):
    assert reason(datagram(base(primary_ip=ip))) == "bad field: primary_ip"


@pytest.mark.parametrize("ip", [ip for ip in INVALID_IPS if ip is not None])
def test_invalid_candidate_ip(ip):
    assert reason(datagram(base("HELLO", candidate_ip=ip))) == "bad field: candidate_ip"
    assert reason(datagram(base("IDENTIFY", candidate_ip=ip))) == "bad field: candidate_ip"


@pytest.mark.parametrize("ip", ["0.0.0.0", "10.0.0.1", "192.168.1.23", "255.255.255.255"])
def test_valid_ips(ip):
    assert decode(datagram(base(primary_ip=ip, candidate_ip=ip))).primary_ip == ip


@pytest.mark.parametrize("kind, name, value", [
    ("WELCOME", "members", True),
    ("WELCOME", "members", 1.5),
    ("WELCOME", "members", -1),
    ("WELCOME", "members", "3"),
    ("IDENTIFY", "attempt", False),
    ("IDENTIFY", "attempt", 1001),
    ("RESULT", "rc", True),
    ("RESULT", "rc", 2000),
    ("STATUS", "interval", True),
    ("STATUS", "interval", 0),
    ("STATUS", "interval", "10"),
    ("STATUS", "load", True),
    ("STATUS", "load", [0.1, 0.2, 0.3, 0.4]),
    ("STATUS", "load", [0.1, False]),
    ("STATUS", "load", -1),
    ("STATUS", "load", "high"),
    ("STATUS", "capacity", []),
    ("STATUS", "health", 1),
    ("STATUS", "health", "x" * 65),
    ("STATUS", "state", "x" * 17),
    ("STATUS", "capabilities", {"cpu_cores": True}),
    ("STATUS", "capabilities", {"cpu_cores": 2.5}),
    ("HELLO", "capabilities", {"has_gpu": 1}),
    ("IDENTIFY", "capabilities", {"docker_installed": "yes"}),
    ("IDENTIFY", "capabilities", {"ram_gb": "8"}),
    ("IDENTIFY", "capabilities", {"arch": "x" * 33}),
    ("IDENTIFY", "capabilities", {"os": 5}),
    ("IDENTIFY", "capabilities", []),
    ("IDENTIFY", "capabilities", {"blob": "x" * 3000}),
    ("IDENTIFY", "request", "x" * 33),
    ("HELLO", "joining_since", "yesterday"),
    ("WELCOME", "to", "bad id!"),
    ("ADVICE", "config", []),
    ("ADVICE", "config", {"k": "x" * 5000}),
    ("ADVICE", "reason", "x" * 301),
    ("ADVICE", "reason", None),
    ("ADVICE", "to", 5),
    ("HEARTBEAT", "identity", "builder"),
    ("HEARTBEAT", "identity", {"role": "Bad Role"}),
    ("HEARTBEAT", "interval", False),
    ("TASK", "id", "x" * 65),
    ("TASK", "command", 5),
    ("RESULT", "output", "x" * 4097),
])
def test_bad_field_values_are_rejected(kind, name, value):
    fields = {"ADVICE": dict(ADVICE_FIELDS), "TASK": {"id": "t"}, "RESULT": {"task_id": "t"}}.get(
        kind, {})
    fields[name] = value
    assert reason(datagram(base(kind, **fields))) == f"bad field: {name}"


@pytest.mark.parametrize("kind, name, value", [
    ("WELCOME", "members", 0),
    ("WELCOME", "members", 1_000_000),
    ("IDENTIFY", "attempt", 2),
    ("RESULT", "rc", -1),
    ("STATUS", "interval", 0.05),
    ("STATUS", "interval", 10),
    ("STATUS", "load", 0.5),
    ("STATUS", "load", [0.1, 0.2, 0.3]),
    ("STATUS", "capabilities", {"cpu_cores": 4, "ram_gb": 7.5, "has_gpu": False,
                                "arch": "x86_64", "os": "Ubuntu 24.04 LTS",
                                "docker_installed": True, "future_key": [1, 2]}),
    ("HELLO", "joining_since", "2026-11-26T11:59:59.5Z"),
    ("HELLO", "joining_since", None),
    ("ADVICE", "config", {"jobs": 4, "labels": ["a"]}),
    ("ADVICE", "reason", ""),
    ("HEARTBEAT", "identity", {"role": "builder", "packages": ["git"], "anything": 1}),
    ("HEARTBEAT", "identity", {"role": None}),
    ("HEARTBEAT", "identity", {}),
])
def test_good_field_values_are_accepted(kind, name, value):
    fields = {"ADVICE": dict(ADVICE_FIELDS), "TASK": {"id": "t"}, "RESULT": {"task_id": "t"}}.get(
        kind, {})
    fields[name] = value
    assert decode(datagram(base(kind, **fields))).get(name) == value


@pytest.mark.parametrize("name, value", [
    ("node_id", ""), ("node_id", "x" * 65), ("node_id", "has space"), ("node_id", "-lead"),
    ("node_id", 5), ("hostname", ""), ("hostname", "x" * 254), ("hostname", "bad host"),
    ("hostname", "-lead"), ("hostname", "build1\n"), ("hostname", None),
])
def test_bad_identity_fields_are_rejected(name, value):
    with pytest.raises(ProtocolError):
        decode(datagram({**base(), name: value}))


def test_unknown_extra_keys_are_accepted_and_kept():
    payload = protocol.make_payload("HELLO", NODE, "build1", "10.0.0.1", T0, nonce="abc",
                                    seq=7, fancy={"x": [1, 2]}, role="builder")
    keys = list(payload)
    assert keys[:4] == ["kind", "node_id", "hostname", "primary_ip"] and keys[-1] == "ts"
    assert keys.index("role") < keys.index("nonce")  # schema fields first, then extras
    message = decode(protocol.encode(payload, SECRET))
    assert message.get("nonce") == "abc" and message.get("seq") == 7
    assert message.get("fancy") == {"x": [1, 2]}
    # A foreign node's keys in its own order, mixed in anywhere, verify too.
    foreign = {"ts": protocol.format_ts(T0), "zzz": None, "kind": "STATUS", "node_id": NODE,
               "aaa": [1.5, "x"], "hostname": "build1", "primary_ip": "10.0.0.1"}
    message = decode(datagram(foreign))
    assert message.get("zzz") is None and message.get("aaa") == [1.5, "x"]
    assert list(message.payload) == list(foreign)


def test_reference_heartbeat_with_identity_object():
    payload = {"kind": "HEARTBEAT", "node_id": NODE, "hostname": "build7",
               "primary_ip": "192.168.1.27",
               "identity": {"role": "runner", "packages": ["python3-pytest", "nodejs", "npm"],
                            "config": {}, "assigned_by": ["build1", "build2"],
                            "assigned_at": "2026-11-26T11:00:00Z"},
               "ts": "2026-11-26T12:00:00.000000Z"}
    message = decode(datagram(payload, secret=VECTOR_SECRET), secrets=[VECTOR_SECRET])
    assert message.kind == "HEARTBEAT"
    assert message.get("identity")["role"] == "runner"
    assert message.get("identity")["assigned_by"] == ["build1", "build2"]


def test_reference_identify_who_am_i():
    payload = {"kind": "IDENTIFY", "node_id": NODE, "hostname": "build9",
               "primary_ip": "192.168.1.29", "candidate_ip": None, "request": "who_am_i",
               "ts": "2026-11-26T12:00:00.000000Z"}
    message = decode(datagram(payload))
    assert message.get("request") == "who_am_i"


def test_make_payload_emits_schema_order_then_extras_then_ts():
    payload = protocol.make_payload("ADVICE", NODE, "build1", "10.0.0.1", T0, reason="r",
                                    extra=1, config={}, packages=["git"], suggested_role="b",
                                    to=NODE)
    assert list(payload) == ["kind", "node_id", "hostname", "primary_ip", "to", "suggested_role",
                             "packages", "config", "reason", "extra", "ts"]
    assert payload["ts"] == "2026-11-26T12:00:00.000000Z"


# --- reject counter -------------------------------------------------------------------------------

def test_reject_counter_counts_every_drop_and_rate_limits_logging():
    counter = protocol.RejectCounter()
    assert counter.add("bad signature", T0) is True
    assert counter.add("bad signature", T0 + 1) is False
    assert counter.add("bad field: role", T0 + 2) is False
    assert counter.add("stale", T0 + timing.REJECT_LOG_PERIOD) is True
    assert counter.total == 4
    assert counter.counts["bad field"] == 1 and counter.counts["bad signature"] == 2
