"""The wire fields of build work: TASK/RESULT's new optional fields, ACK, CANCEL, LOGS, LOGDATA,
STATUS queue.  A receiver refuses what a sender could not send (encode validates too)."""

from __future__ import annotations

import pytest

from build_agent import protocol
from build_agent.protocol import ProtocolError
from hive_fakes import SECRET, T0

NODE = "11111111-2222-3333-4444-555555555555"


def roundtrip(kind, **fields):
    payload = protocol.make_payload(kind, NODE, "build2", "10.0.0.2", T0, **fields)
    return protocol.decode(protocol.encode(payload, SECRET), [SECRET], T0)


def refused(kind, **fields) -> str:
    payload = protocol.make_payload(kind, NODE, "build2", "10.0.0.2", T0, **fields)
    with pytest.raises(ProtocolError) as err:
        protocol.encode(payload, SECRET)
    return str(err.value)


def test_a_task_and_its_result_as_our_nodes_send_them():
    task = roundtrip("TASK", id="7f3c0a1b2c3d4e5f", to=NODE, attempt=2,
                     argv=["mvn", "-B", "-q", "test"], role="builder", timeout=3600,
                     repo="https://git.example/app.git")
    assert task.get("argv") == ["mvn", "-B", "-q", "test"] and task.get("attempt") == 2
    result = roundtrip("RESULT", task_id="7f3c0a1b2c3d4e5f", to=NODE, attempt=2,
                       outcome="exited", rc=3, duration=41.2, output="FAIL\n")
    assert (result.get("outcome"), result.get("rc")) == ("exited", 3)
    assert roundtrip("TASK", id="t1", command="make check").get("command") == "make check"


@pytest.mark.parametrize("kind, fields, bad", [
    ("TASK", dict(id="t", argv=[]), "argv"),
    ("TASK", dict(id="t", argv=[""]), "argv"),
    ("TASK", dict(id="t", argv="make"), "argv"),
    ("TASK", dict(id="t", argv=["a\0b"]), "argv"),
    ("TASK", dict(id="t", argv=[1]), "argv"),
    ("TASK", dict(id="t", argv=["x"] * 257), "argv"),
    ("TASK", dict(id="t", attempt=0), "attempt"),
    ("TASK", dict(id="t", timeout=0), "timeout"),
    ("TASK", dict(id="t", probe="yes"), "probe"),
    ("TASK", dict(id="t", to="not a node id!"), "to"),
    ("RESULT", dict(task_id="t", outcome="great"), "outcome"),
    ("RESULT", dict(task_id="t", signal=0), "signal"),
    ("RESULT", dict(task_id="t", error="e" * 301), "error"),
    ("ACK", dict(to=NODE, of="HELLO", task_id="t", attempt=1), "of"),
    ("ACK", dict(to=NODE, of="TASK", task_id="../etc", attempt=1), "task_id"),
    ("LOGS", dict(to=NODE, task_id="t", attempt=1, offset=-1, request="r"), "offset"),
    ("LOGDATA", dict(to=NODE, task_id="t", attempt=1, offset=0, request="r", data="not b64!"),
     "data"),
    ("STATUS", dict(queue=-1), "queue"),
    ("STATUS", dict(queue=True), "queue"),
])
def test_bad_task_fields_are_refused_on_both_ends(kind, fields, bad):
    assert refused(kind, **fields) == f"bad field: {bad}"


@pytest.mark.parametrize("kind, missing", [
    ("ACK", "task_id"), ("CANCEL", "attempt"), ("LOGS", "request"), ("LOGDATA", "offset")])
def test_the_new_kinds_need_their_fields(kind, missing):
    full = {"ACK": dict(to=NODE, of="TASK", task_id="t", attempt=1),
            "CANCEL": dict(to=NODE, task_id="t", attempt=1),
            "LOGS": dict(to=NODE, task_id="t", attempt=1, offset=0, request="r"),
            "LOGDATA": dict(to=NODE, task_id="t", attempt=1, offset=0, request="r")}[kind]
    roundtrip(kind, **full)
    del full[missing]
    assert refused(kind, **full) == f"missing field: {missing}"
