"""State files: atomic JSON writes, identity.json checks, the stable node id."""

from __future__ import annotations

import json
import logging
import os
import stat
import uuid

import pytest

from build_agent import state

IDENTITY = {"role": "builder", "packages": ["git"], "config": {}, "assigned_by": ["build1"],
            "assigned_at": "2026-11-26T12:00:00Z"}


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_077():
    old = os.umask(0o077)
    yield
    os.umask(old)


# --- write_json_atomic -----------------------------------------------------------------------

def test_write_sorted_indented_with_trailing_newline(tmp_path):
    path = tmp_path / "peers.json"
    state.write_json_atomic(path, {"b": 1, "a": {"d": [1, 2], "c": None}})
    text = path.read_text()
    assert text == '{\n  "a": {\n    "c": null,\n    "d": [\n      1,\n      2\n    ]\n  },\n  "b": 1\n}\n'
    assert json.loads(text) == {"a": {"c": None, "d": [1, 2]}, "b": 1}


def test_write_mode_is_0644_whatever_the_umask(tmp_path, umask_077):
    path = tmp_path / "identity.json"
    state.write_json_atomic(path, IDENTITY)
    assert mode_of(path) == 0o644
    state.write_json_atomic(tmp_path / "private.json", {}, mode=0o600)
    assert mode_of(tmp_path / "private.json") == 0o600


def test_write_leaves_no_temporary_file(tmp_path):
    for i in range(3):
        state.write_json_atomic(tmp_path / "identity.json", {"n": i})
    assert os.listdir(tmp_path) == ["identity.json"]
    assert json.loads((tmp_path / "identity.json").read_text()) == {"n": 2}


def test_write_replaces_the_file_not_its_content(tmp_path):
    path = tmp_path / "identity.json"
    state.write_json_atomic(path, {"n": 1})
    before = os.stat(path).st_ino
    with open(path) as reader:  # a reader holding the old file sees the old file entirely
        state.write_json_atomic(path, {"n": 2})
        assert json.loads(reader.read()) == {"n": 1}
    assert os.stat(path).st_ino != before
    assert json.loads(path.read_text()) == {"n": 2}


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": {1, 2}}, {"x": b"bytes"},
                                 {("tuple", "key"): 1}])
def test_failed_serialisation_keeps_the_original(tmp_path, bad):
    path = tmp_path / "identity.json"
    state.write_json_atomic(path, IDENTITY)
    original = path.read_bytes()
    with pytest.raises(TypeError):
        state.write_json_atomic(path, bad)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["identity.json"]


def test_failed_replace_removes_the_temporary_file(tmp_path):
    target = tmp_path / "identity.json"
    target.mkdir()  # os.replace of a file onto a directory fails
    with pytest.raises(OSError):
        state.write_json_atomic(target, IDENTITY)
    assert os.listdir(tmp_path) == ["identity.json"]
    assert target.is_dir() and not os.listdir(target)


def test_failed_write_keeps_the_original(tmp_path, monkeypatch):
    path = tmp_path / "identity.json"
    state.write_json_atomic(path, IDENTITY)
    original = path.read_bytes()

    def no_space(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(state.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        state.write_json_atomic(path, {"role": "runner"})
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["identity.json"]


def test_write_into_a_missing_directory_raises(tmp_path):
    with pytest.raises(OSError):
        state.write_json_atomic(tmp_path / "nope" / "x.json", {})


# --- read_json / read_identity ----------------------------------------------------------------

def test_read_json(tmp_path):
    assert state.read_json(tmp_path / "absent.json") is None
    (tmp_path / "a.json").write_text('{"a": 1}')
    assert state.read_json(tmp_path / "a.json") == {"a": 1}
    (tmp_path / "b.json").write_text("{")
    with pytest.raises(ValueError):
        state.read_json(tmp_path / "b.json")


def test_read_identity_round_trip(tmp_path):
    path = tmp_path / "identity.json"
    data = {**IDENTITY, "reason": "cluster needs builders", "votes": {"builder": 2}}
    state.write_json_atomic(path, data)
    assert state.read_identity(path) == data


def test_read_identity_missing_file_is_none_without_error(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert state.read_identity(tmp_path / "identity.json") is None
    assert not caplog.records


@pytest.mark.parametrize("text", ["", "{", "not json", '{"role": "builder",}', "\x00\x01",
                                  "NaN{"])
def test_read_identity_invalid_json_is_none(tmp_path, caplog, text):
    path = tmp_path / "identity.json"
    path.write_text(text)
    with caplog.at_level(logging.ERROR):
        assert state.read_identity(path) is None
    assert "Ignoring unreadable identity" in caplog.text


def test_read_identity_non_utf8_is_none(tmp_path):
    path = tmp_path / "identity.json"
    path.write_bytes(b'{"role": "\xff"}')
    assert state.read_identity(path) is None


@pytest.mark.parametrize("missing", state.IDENTITY_KEYS)
def test_read_identity_missing_a_required_key_is_none(tmp_path, caplog, missing):
    path = tmp_path / "identity.json"
    state.write_json_atomic(path, {k: v for k, v in IDENTITY.items() if k != missing})
    with caplog.at_level(logging.ERROR):
        assert state.read_identity(path) is None
    assert "lacks one of" in caplog.text


@pytest.mark.parametrize("data", [[IDENTITY], "builder", 5, None, {**IDENTITY, "role": None},
                                  {**IDENTITY, "role": ["builder"]}])
def test_read_identity_wrong_shape_is_none(tmp_path, data):
    path = tmp_path / "identity.json"
    path.write_text(json.dumps(data))
    assert state.read_identity(path) is None


def test_identity_keys_are_the_contract():
    assert state.IDENTITY_KEYS == ("role", "packages", "config", "assigned_by", "assigned_at")


# --- node id ------------------------------------------------------------------------------------

def test_node_id_is_created_once_and_stable(tmp_path):
    path = tmp_path / "node_id"
    assert state.read_node_id(path) is None
    first = state.load_or_create_node_id(path)
    assert uuid.UUID(first).version == 4
    assert path.read_text().splitlines()[0] == first
    assert mode_of(path) == 0o644
    assert state.load_or_create_node_id(path) == first
    assert state.read_node_id(path) == first
    assert os.listdir(tmp_path) == ["node_id"]


def test_node_id_follows_the_machine_id(tmp_path):
    """A clone whose machine-id was regenerated gets a fresh node id; the same machine keeps it."""
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    path = tmp_path / "node_id"
    first = state.load_or_create_node_id(path, machine)
    assert "0123456789abcdef" not in path.read_text()  # a fingerprint, never the machine id
    assert state.load_or_create_node_id(path, machine) == first
    machine.write_text("fedcba9876543210fedcba9876543210\n")  # the clone's new machine-id
    second = state.load_or_create_node_id(path, machine)
    assert second != first and uuid.UUID(second).version == 4
    assert state.read_node_id(path) == second
    assert state.load_or_create_node_id(path, machine) == second


def test_a_node_id_file_of_an_older_release_is_kept_and_tied_to_the_machine(tmp_path):
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    path = tmp_path / "node_id"
    path.write_text("df8c84d3-c1ff-4c88-ae22-3a095b4f4a91\n")
    assert state.load_or_create_node_id(path, machine) == "df8c84d3-c1ff-4c88-ae22-3a095b4f4a91"
    assert path.read_text().splitlines()[1].startswith("machine ")
    # without a machine-id (some containers) the id stays as it is
    assert state.load_or_create_node_id(path, tmp_path / "absent") == \
        "df8c84d3-c1ff-4c88-ae22-3a095b4f4a91"


def test_node_id_differs_between_nodes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert state.load_or_create_node_id(tmp_path / "a" / "node_id") != \
        state.load_or_create_node_id(tmp_path / "b" / "node_id")


def test_existing_node_id_is_kept(tmp_path):
    path = tmp_path / "node_id"
    path.write_text("  my-fixed-id \n")
    assert state.load_or_create_node_id(path) == "my-fixed-id"
    assert state.read_node_id(path) == "my-fixed-id"


def test_empty_node_id_file_is_replaced(tmp_path):
    path = tmp_path / "node_id"
    path.write_text("\n")
    assert state.read_node_id(path) is None
    value = state.load_or_create_node_id(path)
    assert value and state.read_node_id(path) == value


def test_node_id_survives_identity_reset(tmp_path):
    node_path, identity_path = tmp_path / "node_id", tmp_path / "identity.json"
    first = state.load_or_create_node_id(node_path)
    state.write_json_atomic(identity_path, IDENTITY)
    identity_path.unlink()  # what `hive reset` does
    assert state.load_or_create_node_id(node_path) == first


def test_new_uuid4_is_a_random_version_4_uuid():
    values = {state.new_uuid4() for _ in range(200)}
    assert len(values) == 200
    for value in values:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_write_text_atomic_leaves_no_temporary_file(tmp_path, umask_077):
    state.write_text_atomic(tmp_path / "x.txt", "hello\n")
    assert (tmp_path / "x.txt").read_text() == "hello\n"
    assert mode_of(tmp_path / "x.txt") == 0o644
    assert os.listdir(tmp_path) == ["x.txt"]
