"""A reader that polls every lab host's identity.json and peers.json many times a second.

It plays the part of every program that reads the hive's state files (the hive CLI, a
monitoring agent): each read is one open() + read() of the whole file, as they would do it, and
anything that is not a JSON object counts as an invalid read (the daemons write these files
atomically, so there must be none).  A file that does not exist is not an invalid read (a host
before its identity).  Along the way it records every change of a host's role in its
identity.json, with the previous_role and changed_at the new identity carries.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

FILES = ("identity.json", "peers.json")


@dataclass
class Snapshot:
    role: str | None = None
    identity: dict | None = None
    peers: dict | None = None


class StateWatch(threading.Thread):
    def __init__(self, state_dirs: dict[int, Path], interval: float = 0.05,
                 max_seconds: float = 7200.0, keep_bad: int = 20) -> None:
        super().__init__(name="statewatch", daemon=True)
        self.state_dirs = dict(state_dirs)
        self.interval = interval
        self.max_seconds = max_seconds  # a bound even if nobody calls stop()
        self.keep_bad = keep_bad
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.reads = 0
        self.missing = 0
        self.invalid = 0
        self.bad_samples: list[dict] = []     # the first keep_bad invalid reads
        self.rounds = 0
        self.transitions: list[dict] = []      # role changes seen in identity.json
        self.snapshots: dict[int, Snapshot] = {h: Snapshot() for h in self.state_dirs}
        self.started = 0.0
        self.finished = 0.0

    # --- the thread ----------------------------------------------------------------------------
    def run(self) -> None:
        self.started = time.monotonic()
        deadline = self.started + self.max_seconds
        while not self._halt.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            for host, folder in self.state_dirs.items():
                for name in FILES:
                    self._read(host, folder / name, name)
            self.rounds += 1
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - t0)))
        self.finished = time.monotonic()

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def _read(self, host: int, path: Path, name: str) -> None:
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            with self._lock:
                self.missing += 1
            return
        except OSError as exc:
            self._bad(host, name, f"cannot read: {exc}")
            return
        try:
            data = json.loads(raw)
        except ValueError as exc:
            self._bad(host, name, f"{exc}; {len(raw)} bytes: {raw[:80]!r}")
            return
        if not isinstance(data, dict):
            self._bad(host, name, f"a JSON {type(data).__name__}, not an object")
            return
        with self._lock:
            self.reads += 1
            snap = self.snapshots[host]
            if name == "peers.json":
                snap.peers = data
                return
            role = data.get("role")
            if snap.role is not None and role != snap.role:
                self.transitions.append({
                    "t": time.time(), "host": host, "from": snap.role, "to": role,
                    "previous_role": data.get("previous_role"),
                    "changed_at": data.get("changed_at")})
            snap.role, snap.identity = role, data

    def _bad(self, host: int, name: str, what: str) -> None:
        with self._lock:
            self.reads += 1
            self.invalid += 1
            if len(self.bad_samples) < self.keep_bad:
                self.bad_samples.append({"t": time.time(), "host": host, "file": name,
                                         "error": what[:200]})

    # --- for the driver ----------------------------------------------------------------------
    def role(self, host: int) -> str | None:
        with self._lock:
            return self.snapshots[host].role

    def peers_roles(self, host: int) -> dict[str, str] | None:
        """hostname -> role of every alive peer in host's last peers.json (None: none read)."""
        with self._lock:
            data = self.snapshots[host].peers
        if data is None:
            return None
        peers = data.get("peers")
        if not isinstance(peers, list):
            return None
        return {p.get("hostname"): p.get("role") for p in peers
                if isinstance(p, dict) and p.get("status", "alive") == "alive"}

    def summary(self) -> dict:
        with self._lock:
            seconds = (self.finished or time.monotonic()) - self.started if self.started else 0
            return {"reads": self.reads, "invalid": self.invalid, "missing": self.missing,
                    "rounds": self.rounds, "seconds": round(seconds, 1),
                    "reads_per_s": round(self.reads / seconds, 1) if seconds > 0 else 0,
                    "files": len(self.state_dirs) * len(FILES),
                    "interval_s": self.interval, "bad_samples": list(self.bad_samples)}
