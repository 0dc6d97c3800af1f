"""Fuzzing the decoder: whatever arrives, decode() returns a Message or raises ProtocolError."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from build_agent import protocol
from build_agent.daemon import Service
from build_agent.protocol import MAGIC, Message, ProtocolError
from hive_fakes import SECRET, T0

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

VECTOR = (b'{"magic":"BUILD/HELLO/v1","payload":{"kind":"HELLO",'
          b'"node_id":"0b5c1a9e-3f1e-4c59-9a3c-2f7d0f6b1e01","hostname":"build3",'
          b'"primary_ip":"192.168.1.23","candidate_ip":null,"ts":"2026-11-26T12:00:00.000000Z"},'
          b'"sig":"aae36f187692f0c9219a5e9e3fb4ab878371f658dd64e9420d9132f7d2a9c7e3"}')

FIELD_NAMES = sorted({"kind", "node_id", "hostname", "primary_ip", "ts"}
                     | {name for fields in protocol.KIND_FIELDS.values() for name, _, _ in fields})

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats() | st.text(max_size=40))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.sampled_from(FIELD_NAMES), children, max_size=5),
    max_leaves=12)

# Values that are sometimes right for a field, so the fuzzer gets past the first checks.
plausible = (json_values
             | st.sampled_from(protocol.KINDS)
             | st.sampled_from(["10.0.0.1", "256.0.0.1", "build1", "builder", "Bad Role",
                                "git", "-oops", "11111111-2222", "who_am_i", "leaving",
                                protocol.format_ts(T0), "2026-11-26T12:00:00Z\n"])
             | st.lists(st.sampled_from(["git", "g++", "rm -rf", "maven"]), max_size=4)
             | st.floats(min_value=T0 - 400, max_value=T0 + 400).map(protocol.format_ts))

payloads = st.one_of(
    st.dictionaries(st.text(max_size=12), json_values, max_size=8),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(protocol.KINDS) | json_values,
         "node_id": st.just("11111111-2222-3333-4444-555555555555") | json_values,
         "hostname": st.just("build1") | json_values,
         "primary_ip": st.just("10.0.0.1") | json_values},
        optional={name: plausible for name in FIELD_NAMES
                  if name not in ("kind", "node_id", "hostname", "primary_ip")}),
)

sigs = (st.text(min_size=64, max_size=64) | st.text(alphabet="0123456789abcdef", min_size=64,
                                                   max_size=64) | json_values)
magics = st.just(MAGIC) | json_values


ACCEPTED: list[Message] = []


def check(data: bytes, now: float = T0) -> None:
    try:
        result = protocol.decode(data, [SECRET, b"second-secret-0123456789"], now)
    except ProtocolError:
        return
    assert isinstance(result, Message)
    ACCEPTED.append(result)
    assert result.kind in protocol.KINDS
    assert abs(result.ts - now) <= 300


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@FUZZ
@given(st.binary(max_size=9000))
def test_random_bytes(data):
    check(data)


@FUZZ
@given(json_values)
def test_random_json(value):
    check(dumps(value))


@FUZZ
@given(magics, payloads, sigs)
def test_random_envelopes(magic, payload, sig):
    check(dumps({"magic": magic, "payload": payload, "sig": sig}))


REQUIRED = {"ADVICE": {"suggested_role": "builder", "packages": ["git"], "config": {},
                       "reason": "r"},
            "TASK": {"id": "t1"}, "RESULT": {"task_id": "t1"},
            "ACK": {"to": "n1", "of": "TASK", "task_id": "t1", "attempt": 1},
            "CANCEL": {"to": "n1", "task_id": "t1", "attempt": 1},
            "LOGS": {"to": "n1", "task_id": "t1", "attempt": 1, "offset": 0, "request": "r1"},
            "LOGDATA": {"to": "n1", "task_id": "t1", "attempt": 1, "offset": 0, "request": "r1"}}


@st.composite
def near_valid_payloads(draw):
    """A valid payload of a random kind, then a few fields replaced, added or removed."""
    kind = draw(st.sampled_from(protocol.KINDS))
    payload = {"kind": kind, "node_id": "11111111-2222-3333-4444-555555555555",
               "hostname": "build1", "primary_ip": "10.0.0.1", **REQUIRED.get(kind, {})}
    for name, value in draw(st.lists(st.tuples(st.sampled_from(FIELD_NAMES) | st.text(max_size=8),
                                               plausible), max_size=3)):
        payload[name] = value
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=1)):
        payload.pop(name, None)
    payload.setdefault("ts", draw(st.floats(min_value=T0 - 400, max_value=T0 + 400).map(
        protocol.format_ts)))
    return payload


@FUZZ
@given(payloads | near_valid_payloads())
def _fuzz_correctly_signed_payloads(payload):
    sig = protocol.sign(payload, SECRET)  # NaN/Infinity floats end up as rejected constants
    check(dumps({"magic": MAGIC, "payload": payload, "sig": sig}))


def test_correctly_signed_random_payloads():
    ACCEPTED.clear()
    _fuzz_correctly_signed_payloads()
    assert len(ACCEPTED) >= 5  # the signed fuzzing also reaches valid messages


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VECTOR) - 1), st.integers(0, 255)), min_size=1,
                max_size=6))
def test_mutated_test_vector(edits):
    data = bytearray(VECTOR)
    for position, byte in edits:
        data[position] = byte
    check(bytes(data), now=1_795_694_400.0)


class _Sink(Service):
    def handle(self, message, source_ip, now):  # pragma: no cover - not called here
        raise AssertionError


@settings(FUZZ, max_examples=100)
@given(st.binary(max_size=300) | payloads.map(
    lambda p: dumps({"magic": MAGIC, "payload": p, "sig": "é" * 64})))
def test_service_receive_never_raises(data):
    service = _Sink(None, [SECRET], "me")
    assert service.receive(data, ("10.0.0.9", 50555), T0) is None
    assert service.rejects.total == 1



# --- the hand-built HMAC-SHA256 equals the standard library's ---------------------------------

@pytest.mark.parametrize("key_len", [0, 1, 16, 63, 64, 65, 128, 1000])
def test_hmac_sha256_matches_hmac_module_for_every_key_length(key_len):
    key = bytes(range(256))[:key_len] if key_len <= 256 else b"k" * key_len
    for message in (b"", b"x", b'{"kind":"HELLO"}', bytes(range(256)) * 40):
        assert protocol.hmac_sha256(key, message) == \
            hmac.new(key, message, hashlib.sha256).hexdigest()


@FUZZ
@given(st.binary(max_size=200), st.binary(max_size=2000))
def test_hmac_sha256_matches_hmac_module(key, message):
    assert protocol.hmac_sha256(key, message) == hmac.new(key, message, hashlib.sha256).hexdigest()
