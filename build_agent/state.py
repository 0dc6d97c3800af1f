"""State files under the state directory: identity.json, peers.json and node_id.

Every write is atomic: a temporary file in the same directory, fsync, then os.replace, so a
reader (jq, the advisor, the CLI) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

IDENTITY_KEYS = ("role", "packages", "config", "assigned_by", "assigned_at")


def write_json_atomic(path: Path | str, data: Any, mode: int = 0o644) -> None:
    """Write JSON (sorted keys, two-space indent, trailing newline) atomically."""
    path = Path(path)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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


def load_or_create_node_id(path: Path | str) -> str:
    """This node's stable id: created once (uuid4), kept across restarts and identity resets."""
    path = Path(path)
    try:
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = str(uuid.uuid4())
    fd, tmp = tempfile.mkstemp(prefix=".node_id.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return value


def read_node_id(path: Path | str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
