"""State files under the state directory: identity.json, peers.json and node_id.

Every write is atomic: a temporary file in the same directory, fsync, then os.replace, so a
reader (jq, the advisor, the CLI) sees the old file or the new one, never half of one.
peers.json alone is not fsynced (``durable=False``): it is a live copy of what the agent knows,
rewritten after every change of the hive and rebuilt from the hive after a crash, and at 200
members 200 agents flushing it to one disk several times per join was most of a join's cost.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .protocol import hmac_sha256

LOG = logging.getLogger(__name__)

IDENTITY_KEYS = ("role", "packages", "config", "assigned_by", "assigned_at")


def write_text_atomic(path: Path | str, text: str, mode: int = 0o644,
                      owner: tuple[int, int] | None = None, durable: bool = True) -> None:
    """Replace a file's content atomically: a temporary file beside it, fsync, os.replace.

    ``durable=False`` skips the fsync (still atomic for readers; after a power loss the file
    may be the old one).  ``owner`` (uid, gid) hands the new file to another user.  Mode and owner are set through the
    open file, never by name, so this is safe in a directory that user can write to.
    """
    path = Path(path)
    # A private temporary name (O_EXCL), made here rather than with tempfile, which would cost
    # the daemons memory for modules they need nowhere else.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: Path | str, data: Any, mode: int = 0o644) -> None:
    """Write JSON (sorted keys, two-space indent, trailing newline) atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


class JsonListWriter:
    """Writes a dict exactly as write_json_atomic does, remembering the text of the items of
    some lists in it between writes: peers.json lists every member and every joining node, and
    is rewritten after each change of the hive while most entries stay the same (Python's
    indented json encoder is slow: most of a large peers.json's cost).  Only the last write's
    items are remembered."""

    def __init__(self, *keys: str) -> None:
        self.keys = keys
        self._texts: dict[str, str] = {}  # an item's compact JSON -> its indented text

    def text(self, data: dict) -> str:
        """json.dumps(data, indent=2, sort_keys=True) + "\n", byte for byte."""
        texts: dict[str, str] = {}
        parts = []
        for name in sorted(data):
            value = data[name]
            if name in self.keys and isinstance(value, list) and value:
                items = []
                for item in value:
                    compact = json.dumps(item, sort_keys=True)
                    known = self._texts.get(compact)
                    if known is None:
                        known = _nested(item, 2)
                    texts[compact] = known
                    items.append("    " + known)
                body = "[\n" + ",\n".join(items) + "\n  ]"
            else:
                body = _nested(value, 1)
            parts.append(f"  {json.dumps(name)}: {body}")
        self._texts = texts
        return "{\n" + ",\n".join(parts) + "\n}\n" if parts else "{}\n"

    def write(self, path: Path | str, data: dict, mode: int = 0o644) -> None:
        """Atomically, without fsync: the file is a live copy, rewritten often (see above)."""
        write_text_atomic(path, self.text(data), mode, durable=False)


def _nested(value: Any, level: int) -> str:
    """json.dumps(value, indent=2, sort_keys=True) as it reads ``level`` levels deep (no
    string in JSON holds a raw line break, so indenting each line after the first is exact)."""
    return json.dumps(value, indent=2, sort_keys=True).replace("\n", "\n" + "  " * level)


def read_json(path: Path | str) -> Any:
    """The parsed file, or None if it does not exist; ValueError if it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def read_identity(path: Path | str) -> dict | None:
    """identity.json if it exists and holds a valid identity; None otherwise (logged)."""
    try:
        data = read_json(path)
    except (ValueError, OSError) as exc:
        LOG.error("Ignoring unreadable identity %s: %s", path, exc)
        return None
    if data is None:
        return None
    if not isinstance(data, dict) or not all(key in data for key in IDENTITY_KEYS) \
            or not isinstance(data.get("role"), str):
        LOG.error("Ignoring identity %s: it lacks one of %s", path, ", ".join(IDENTITY_KEYS))
        return None
    return data


MACHINE_ID = "/etc/machine-id"


def machine_tag(machine_id_path: Path | str = MACHINE_ID) -> str | None:
    """An app-specific fingerprint of /etc/machine-id (never the id itself), or None."""
    try:
        raw = Path(machine_id_path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return hmac_sha256(raw.encode(), b"build-hive node id")[:32] if raw else None


def write_node_id(path: Path | str, node_id: str,
                  machine_id_path: Path | str = MACHINE_ID) -> None:
    """node_id: the id on its first line, then the machine it was made on (``machine TAG``)."""
    tag = machine_tag(machine_id_path)
    write_text_atomic(path, node_id + "\n" + (f"machine {tag}\n" if tag else ""))


def load_or_create_node_id(path: Path | str, machine_id_path: Path | str = MACHINE_ID) -> str:
    """This node's stable id: created once (uuid4), kept across restarts and identity resets.

    It is tied to /etc/machine-id: an image cloned from a template whose machine id was
    regenerated (as cloud images and `systemd-firstboot` do) gets a fresh node id here.  A clone
    that kept the machine id too is caught on the wire (see Agent.own_id_heard)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    value = lines[0].strip() if lines else ""
    stored = lines[1].split()[-1] if len(lines) > 1 and lines[1].startswith("machine ") else None
    current = machine_tag(machine_id_path)
    if value and (stored is None or current is None or stored == current):
        if stored is None and current is not None:
            write_node_id(path, value, machine_id_path)  # tie an older file to this machine
        return value
    if value:
        LOG.warning("This machine's /etc/machine-id changed since %s was written (a cloned "
                    "machine?): taking a fresh node id", path)
    value = new_uuid4()
    write_node_id(path, value, machine_id_path)
    return value


def new_uuid4() -> str:
    """A random (version 4) UUID string, as uuid.uuid4() makes, without importing uuid."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def read_node_id(path: Path | str) -> str | None:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return lines[0].strip() or None if lines else None
