"""Drive scripts/hive-lab from tests: a real hive of network namespaces on one machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAB_SCRIPT = REPO / "scripts" / "hive-lab"

# The default policy's roles for the n-th node to join one after another (1-based).
def sequential_role(n: int) -> str:
    return "founder" if n == 1 else "controller" if n == 2 else "builder" if n <= 4 else "runner"


def sequential_counts(total: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in range(1, total + 1):
        counts[sequential_role(n)] = counts.get(sequential_role(n), 0) + 1
    return counts


class Lab:
    def __init__(self, name: str, subnet: str, heartbeat: float = 10, policy: str = "",
                 workdir: Path | None = None, subnets: int = 1, toml: str = "") -> None:
        self.name = name
        self.dir = Path(f"/run/hive-lab/{name}")
        # Several subnets: 10.77.K, 10.78.K, ... (each lab has its own bridges: no clash).
        first, rest = subnet.split(".", 1)[1].split(".", 1)
        self.subnets = [subnet] + [f"10.{int(first) + s}.{rest}" for s in range(1, subnets)]
        self.env = dict(os.environ, HIVE_LAB_NAME=name, HIVE_LAB_SUBNET=subnet,
                        HIVE_LAB_SUBNETS=" ".join(self.subnets),
                        HIVE_LAB_DIR=str(self.dir), HIVE_LAB_HEARTBEAT=str(heartbeat),
                        HIVE_LAB_POLICY=policy, HIVE_LAB_PYTHON=sys.executable,
                        HIVE_LAB_TOML=toml)
        self.subnet = subnet

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([str(LAB_SCRIPT), *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"hive-lab {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}\n{self.diagnostics()}")
        return result

    # --- hosts --------------------------------------------------------------------------------
    def up(self, n: int, together: bool = False, subnet: int = 1) -> None:
        self.run("up", str(n), *(["--together"] if together else []), "--subnet", str(subnet),
                 timeout=180)

    def add(self, k: int, subnet: int = 1) -> list[int]:
        return [int(x) for x in self.run("add", str(k), "--subnet", str(subnet)).stdout.split()]

    def configure(self, i: int, text: str) -> None:
        """Append lines to host i's hive.toml (before it starts)."""
        path = self.host_dir(i) / "hive.toml"
        path.write_text(path.read_text() + text.rstrip("\n") + "\n")

    def subnet_of(self, i: int) -> int:
        try:
            return int((self.host_dir(i) / "subnet").read_text())
        except FileNotFoundError:
            return 1

    def nobcast(self, subnet: int) -> None:
        self.run("nobcast", str(subnet))

    def etcd(self, action: str, subnet: int = 1) -> str:
        return self.run("etcd", action, str(subnet), timeout=60).stdout.strip()

    def start(self, *hosts: int) -> None:
        self.run("start", *map(str, hosts))

    def wait(self, *hosts: int, timeout: int = 30) -> None:
        self.run("wait", *map(str, hosts), f"{timeout}s", timeout=timeout + 30)

    def join(self, secret_file: str | None = None, hostname: str | None = None,
             subnet: int = 1) -> int:
        args = ["join"] + (["--secret-file", secret_file] if secret_file else []) \
            + (["--hostname", hostname] if hostname else []) + ["--subnet", str(subnet)]
        return int(self.run(*args).stdout.split()[-1])

    def kill(self, i: int) -> None:
        self.run("kill", str(i))

    def stop(self, i: int) -> None:
        self.run("stop", str(i))

    def restart(self, i: int) -> None:
        self.run("restart", str(i))

    def hive(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("hive", str(i), *args, check=check)

    def exec(self, i: int, *args: str, check: bool = True, timeout: float = 60
             ) -> subprocess.CompletedProcess:
        return self.run("exec", str(i), *args, check=check, timeout=timeout)

    def down(self, check: bool = True) -> None:
        self.run("down", check=check)

    # --- files --------------------------------------------------------------------------------
    def host_dir(self, i: int) -> Path:
        return self.dir / f"h{i}"

    def ip(self, i: int) -> str:
        return f"{self.subnets[self.subnet_of(i) - 1]}.{20 + i}"

    def hosts(self) -> list[int]:
        return sorted(int(p.name[1:]) for p in self.dir.glob("h*") if p.name[1:].isdigit())

    def _json(self, path: Path):
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def identity(self, i: int) -> dict | None:
        return self._json(self.host_dir(i) / "state" / "identity.json")

    def role(self, i: int) -> str | None:
        identity = self.identity(i)
        return identity["role"] if identity else None

    def peers(self, i: int) -> dict | None:
        return self._json(self.host_dir(i) / "state" / "peers.json")

    def peer_names(self, i: int) -> set[str]:
        data = self.peers(i) or {}
        return {p["hostname"] for p in data.get("peers", [])}

    def log(self, i: int, daemon: str = "agent") -> str:
        try:
            return (self.host_dir(i) / f"{daemon}.log").read_text()
        except FileNotFoundError:
            return ""

    def pid(self, i: int, daemon: str = "agent") -> int | None:
        try:
            return int((self.host_dir(i) / f"{daemon}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def alive(self, i: int, daemon: str = "agent") -> bool:
        pid = self.pid(i, daemon)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie is not alive; its state letter is the third field of /proc/PID/stat.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def roles(self, hosts=None) -> dict[int, str | None]:
        return {i: self.role(i) for i in (hosts or self.hosts())}

    def wait_for(self, predicate, timeout: float, what: str, step: float = 0.05) -> float:
        """Poll until predicate() is true; return seconds taken, or fail saying what we waited for."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(step)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        parts = []
        for i in self.hosts():
            tail = "\n".join(self.log(i).splitlines()[-12:])
            parts.append(f"--- build{i} role={self.role(i)} agent.log tail:\n{tail}")
        return "\n".join(parts)


def log_lines(text: str) -> list[str]:
    """Agent log lines without the timestamp/level prefix."""
    return [re.sub(r"^\S+ \S+ [A-Z]+ ", "", line) for line in text.splitlines()]
