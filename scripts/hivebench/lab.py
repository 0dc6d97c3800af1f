"""Drive a scripts/hive-lab lab from Python, with a Serf agent beside our daemons on every host.

hive-lab makes and removes the hosts (network namespaces on a bridge, per-host hive.toml,
secret and state folder: ``add`` and ``down``).  The bench starts the daemons itself, with the
same command hive-lab uses (``ip netns exec NS unshare --uts ...``), so it knows each daemon's
PID and the instant it was started; it writes the PID files hive-lab reads, so ``hive-lab down``
stops them too.  Serf runs in the same namespaces with its LAN defaults.

Every wait here is bounded; ``teardown`` kills every process left in the lab's namespaces (by
PID) and removes the lab, and is safe to call twice.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .serfrpc import SerfRPC

REPO = Path(__file__).resolve().parents[2]
HIVE_LAB = REPO / "scripts" / "hive-lab"
FROZEN = REPO / "scripts" / "hivebench" / "frozen.py"  # (mass joins: see frozen.py)
SERF_BIN = shutil.which("serf") or "/usr/bin/serf"
SERF_PORT = 7946
SERF_RPC_PORT = 7373
HIVE_PORT = 50555


class LabError(Exception):
    pass


def read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError, OSError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def rss_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of a process in MiB (None if it is gone)."""
    try:
        values = {}
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    values[name] = int(value.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]
    except (OSError, KeyError, ValueError):
        return None


@dataclass
class Host:
    index: int
    ns: str
    ip: str
    dir: Path
    procs: dict = field(default_factory=dict)  # "agent" / "advisor" / "serf" -> Popen
    started: dict = field(default_factory=dict)  # same keys -> time.time() just before start
    rpc: SerfRPC | None = None
    serf_name: str = ""  # the Serf node name of the current agent (a fresh one per new node)
    # peers.json cache: (mtime_ns, size) -> set of alive peer hostnames
    _peers_key: tuple | None = None
    _peers: set = field(default_factory=set)

    @property
    def name(self) -> str:
        return f"build{self.index}"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def running(self, what: str) -> bool:
        proc = self.procs.get(what)
        return proc is not None and proc.poll() is None

    def pid(self, what: str) -> int | None:
        proc = self.procs.get(what)
        return proc.pid if proc is not None and proc.poll() is None else None

    def identity(self) -> dict | None:
        data = read_json(self.state / "identity.json")
        return data if isinstance(data, dict) and data.get("role") else None

    def identity_mtime(self) -> float | None:
        try:
            return os.stat(self.state / "identity.json").st_mtime
        except OSError:
            return None

    def alive_peers(self) -> set[str]:
        """Hostnames this host's agent lists as alive in peers.json (cached by mtime)."""
        path = self.state / "peers.json"
        try:
            st = os.stat(path)
        except OSError:
            self._peers_key, self._peers = None, set()
            return self._peers
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._peers_key:
            data = read_json(path)
            peers = data.get("peers") if isinstance(data, dict) else None
            if isinstance(peers, list):
                self._peers = {p.get("hostname") for p in peers if isinstance(p, dict)
                               and p.get("status", "alive") == "alive"}
                self._peers_key = key
            # else: half-visible or unreadable; keep the old answer and re-read next time
        return self._peers


class Lab:
    """One hive-lab lab (HIVE_LAB_NAME/SUBNET/HEARTBEAT) plus Serf, driven from this process."""

    def __init__(self, name: str, subnet: str, heartbeat: float, python: str,
                 serf_key: str | None, log=print) -> None:
        self.name, self.subnet, self.heartbeat = name, subnet, heartbeat
        self.python = python
        self.serf_key = serf_key
        self.log = log
        self.dir = Path("/run/hive-lab") / name
        self.hosts: dict[int, Host] = {}
        self.env = dict(os.environ, HIVE_LAB_NAME=name, HIVE_LAB_SUBNET=subnet,
                        HIVE_LAB_DIR=str(self.dir), HIVE_LAB_HEARTBEAT=f"{heartbeat:g}",
                        HIVE_LAB_PYTHON=python, HIVE_LAB_LOG_LEVEL="info")
        self.env.pop("HIVE_LAB_POLICY", None)
        self.broadcast = f"{subnet}.255"
        self.serf_starts = 0
        self.compiled = False

    # --- the lab itself ------------------------------------------------------------------------
    def _hive_lab(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([str(HIVE_LAB), *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        if result.returncode != 0:
            raise LabError(f"hive-lab {' '.join(args)} failed (exit {result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip() or 'no message'}")
        return result.stdout

    def add(self, count: int) -> list[Host]:
        out = self._hive_lab("add", str(count), timeout=30 + 2 * count)
        new = []
        for word in out.split():
            if not word.isdigit():
                continue
            i = int(word)
            ns = f"{self.name}-h{i}"
            if not os.path.exists(f"/run/netns/{ns}"):
                raise LabError(f"hive-lab made host {i} but there is no namespace {ns}")
            host = Host(i, ns, self._address_of(ns), self.dir / f"h{i}")
            host.rpc = SerfRPC(ns, SERF_RPC_PORT, timeout=2.0)
            self.hosts[i] = host
            new.append(host)
        if len(new) != count:
            raise LabError(f"hive-lab add {count} made {len(new)} host(s)")
        return new

    def _address_of(self, ns: str) -> str:
        out = subprocess.run(["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", "eth0"],
                             capture_output=True, text=True, timeout=10).stdout
        for link in json.loads(out or "[]"):
            for addr in link.get("addr_info", []):
                if addr.get("family") == "inet":
                    return addr["local"]
        raise LabError(f"no IPv4 address on eth0 in {ns}")

    def set_heartbeat(self, host: Host, interval: float) -> None:
        """Rewrite heartbeat_interval in a host's hive.toml (takes effect at the next start)."""
        path = host.dir / "hive.toml"
        text = re.sub(r"(?m)^heartbeat_interval = .*$", f"heartbeat_interval = {interval:g}",
                      path.read_text())
        path.write_text(text)

    # --- our daemons ---------------------------------------------------------------------------
    def _prefix(self, host: Host) -> list[str]:
        return ["ip", "netns", "exec", host.ns, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', host.name]

    def _spawn(self, host: Host, what: str, argv: list[str], log_name: str) -> None:
        with open(host.dir / log_name, "ab") as log:
            host.started[what] = time.time()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)
        host.procs[what] = proc

    def start_ours(self, host: Host, only: str | None = None, frozen: bool = False
                   ) -> float | None:
        """Start build-advisor then build-agent on host (or only one of them); returns the
        agent's start time.  frozen: the agent stops itself once it is started (see
        frozen.py; thaw() starts it)."""
        if not self.compiled:  # compiled code, as on an installed node (see hive-lab)
            subprocess.run([self.python, "-m", "compileall", "-q", str(REPO / "build_agent"),
                            str(REPO / "build_advisor")], check=True, stdout=subprocess.DEVNULL)
            self.compiled = True
        for what, module in (("advisor", "build_advisor"), ("agent", "build_agent")):
            if host.running(what) or (only is not None and what != only):
                continue
            run = [str(FROZEN), module] if frozen and what == "agent" else ["-m", module]
            argv = self._prefix(host) + ["env", f"PYTHONPATH={REPO}", "PYTHONDONTWRITEBYTECODE=1",
                                         self.python, *run, "--config",
                                         str(host.dir / "hive.toml")]
            self._spawn(host, what, argv, f"{what}.log")
            (host.dir / f"{what}.pid").write_text(f"{host.procs[what].pid}\n")
        return host.started.get("agent")

    @staticmethod
    def frozen(host: Host) -> bool:
        """Whether host's agent (started frozen) has stopped itself: it is started."""
        pid = host.pid("agent")
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, TypeError):
            return False
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    @staticmethod
    def thaw(hosts: list[Host]) -> float:
        """SIGCONT to the frozen agents of hosts, back to back; returns when it began."""
        began = time.time()
        for host in hosts:
            os.kill(host.pid("agent"), signal.SIGCONT)
        return began

    def signal_ours(self, host: Host, sig: int, wait: float = 5.0) -> float:
        """Send sig to both daemons (agent first); unless wait is 0, wait for them to exit
        (SIGKILL after wait seconds).  Returns when the signal was sent."""
        return self._signal(host, ("agent", "advisor"), sig, wait)

    def reap_ours(self, host: Host, wait: float = 5.0) -> None:
        self._reap(host, ("agent", "advisor"), wait)

    def wipe_state(self, host: Host) -> None:
        """Forget identity, peers and node id: the host's next start is a brand-new node."""
        for name in ("identity.json", "peers.json", "node_id"):
            try:
                (host.state / name).unlink()
            except FileNotFoundError:
                pass
        host._peers_key, host._peers = None, set()

    # --- Serf ----------------------------------------------------------------------------------
    def start_serf(self, host: Host, join: Host | None, fresh: bool = False) -> float:
        """Start Serf on host, joining ``join``.  fresh: a brand-new node name (buildI-N), as a
        new server would have; otherwise the host's last name (a restart of the same node)."""
        if host.running("serf"):
            return host.started["serf"]
        if fresh or not host.serf_name:
            self.serf_starts += 1
            host.serf_name = host.name if not fresh else f"{host.name}-{self.serf_starts}"
        argv = ["ip", "netns", "exec", host.ns, SERF_BIN, "agent", f"-node={host.serf_name}",
                f"-bind={host.ip}:{SERF_PORT}", f"-rpc-addr=127.0.0.1:{SERF_RPC_PORT}",
                "-log-level=warn"]
        if self.serf_key:
            argv.append(f"-encrypt={self.serf_key}")
        if join is not None and join is not host:
            argv.append(f"-retry-join={join.ip}:{SERF_PORT}")
        host.rpc.close()
        self._spawn(host, "serf", argv, "serf.log")
        (host.dir / "serf.pid").write_text(f"{host.procs['serf'].pid}\n")
        return host.started["serf"]

    def signal_serf(self, host: Host, sig: int, wait: float = 8.0) -> float:
        """SIGINT: graceful leave (Serf's default); SIGKILL: a crash.  wait 0: don't wait."""
        return self._signal(host, ("serf",), sig, wait)

    def reap_serf(self, host: Host, wait: float = 8.0) -> None:
        self._reap(host, ("serf",), wait)

    def serf_alive(self, host: Host, name_regex: str = "") -> set[str] | None:
        if not host.running("serf"):
            return None
        return host.rpc.try_alive_names(name_regex)

    # --- processes -----------------------------------------------------------------------------
    def _signal(self, host: Host, names, sig: int, wait: float) -> float:
        """Send sig to the named processes of host; unless wait is 0, reap them (SIGKILL after
        wait seconds).  Returns when the signal was sent."""
        sent_at = time.time()
        for what in names:
            if host.running(what):
                try:
                    host.procs[what].send_signal(sig)
                except ProcessLookupError:
                    pass
        if wait > 0:
            self._reap(host, names, wait)
        return sent_at

    def _reap(self, host: Host, names, wait: float) -> None:
        """Wait for the named processes to exit (SIGKILL after wait seconds) and forget them."""
        deadline = time.monotonic() + wait
        for what in names:
            proc = host.procs.get(what)
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        if "serf" in names:
            host.rpc.close()
        for what in names:
            try:
                (host.dir / f"{what}.pid").unlink()
            except FileNotFoundError:
                pass

    def daemons(self, kinds=("agent", "advisor", "serf")) -> list[tuple[Host, str, int]]:
        return [(h, k, h.pid(k)) for h in self.hosts.values() for k in kinds if h.pid(k)]

    def teardown(self) -> None:
        """Stop everything this lab runs and remove it.  Bounded; safe to call twice."""
        for host in self.hosts.values():
            if host.rpc is not None:
                host.rpc.close()
            for proc in host.procs.values():
                if proc.poll() is None:
                    try:
                        proc.kill()
                    except ProcessLookupError:
                        pass
        for host in self.hosts.values():
            for proc in host.procs.values():
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self._remove_lab()
        self.hosts.clear()

    def clean_leftovers(self) -> bool:
        """Remove what a killed earlier run of this lab left behind.  True if there was any."""
        if not leftover_lab(self.name):
            return False
        self._remove_lab()
        return True

    def _remove_lab(self) -> None:
        """Namespaces, links, ARP limits and files of this lab, once its processes are gone."""
        cleanup_namespaces(self.name)
        remove_pid_files(self.dir)  # hive-lab down must not signal PIDs that may be reused
        try:
            self._hive_lab("down", timeout=120)
        except (LabError, subprocess.TimeoutExpired) as exc:
            self.log(f"warning: {exc}")
        remove_links(self.name)
        # If hive-lab down stopped half-way, new hosts would be numbered after the leftovers.
        if self.dir.is_dir() and self.dir.parent == Path("/run/hive-lab"):
            shutil.rmtree(self.dir, ignore_errors=True)


def take_lock(lab_name: str):
    """An exclusive lock per lab name, shared by hive-bench and hive-chaos (a second run on the
    same lab would clean up the first one's lab).  Held while the returned file stays open;
    LabError names the process that holds it."""
    import fcntl
    os.makedirs("/run/lock", exist_ok=True)
    handle = open(f"/run/lock/hive-bench-{lab_name}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise LabError(f"another run (pid {holder}) is using lab '{lab_name}'; wait for it, "
                       f"or pass another --lab and --subnet") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def cleanup_namespaces(lab_name: str) -> int:
    """Kill (by PID) whatever still runs in this lab's namespaces, e.g. after a crashed run."""
    pattern = re.compile(rf"^{re.escape(lab_name)}-h\d+$")
    try:
        names = [n for n in os.listdir("/run/netns") if pattern.match(n)]
    except FileNotFoundError:
        return 0
    killed = 0
    for ns in names:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             timeout=10).stdout
        for word in out.split():
            if word.isdigit() and int(word) != os.getpid():
                try:
                    os.kill(int(word), signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
    return killed


def remove_pid_files(lab_dir: Path) -> None:
    for path in Path(lab_dir).glob("h*/*.pid"):
        try:
            path.unlink()
        except OSError:
            pass


def remove_links(lab_name: str) -> None:
    """Delete this lab's namespaces, veths and bridge if hive-lab down left any (no lab dir)."""
    pattern = re.compile(rf"^{re.escape(lab_name)}-h\d+$")
    try:
        names = [n for n in os.listdir("/run/netns") if pattern.match(n)]
    except FileNotFoundError:
        names = []
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         timeout=10).stdout
    veth = re.compile(rf"^{re.escape(lab_name)}v\d+$")
    for line in out.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            dev = parts[1].strip().split("@")[0]
            if veth.match(dev) or dev == f"{lab_name}br":
                subprocess.run(["ip", "link", "del", dev], capture_output=True, timeout=10)


def leftover_lab(lab_name: str) -> bool:
    pattern = re.compile(rf"^{re.escape(lab_name)}-h\d+$")
    try:
        return any(pattern.match(n) for n in os.listdir("/run/netns")) or \
            os.path.isdir(f"/run/hive-lab/{lab_name}")
    except FileNotFoundError:
        return os.path.isdir(f"/run/hive-lab/{lab_name}")


ARP_KEYS = ("net.ipv4.neigh.default.gc_thresh1", "net.ipv4.neigh.default.gc_thresh2",
            "net.ipv4.neigh.default.gc_thresh3")


def arp_limits() -> list[str]:
    out = []
    for key in ARP_KEYS:
        try:
            out.append(Path("/proc/sys/" + key.replace(".", "/")).read_text().strip())
        except OSError:
            out.append("")
    return out


def other_labs_up() -> bool:
    """Is a lab (its folder under /run/hive-lab, with hosts) up on this machine?"""
    try:
        labs = [d for d in Path("/run/hive-lab").iterdir() if d.is_dir()]
    except OSError:
        return False
    return any(any(h.is_dir() and re.fullmatch(r"h\d+", h.name) for h in d.iterdir())
               for d in labs)


ARP_ORIG = Path("/run/hive-lab/gc_thresh.orig")  # hive-lab keeps the machine's values here


def restore_arp_limits(saved: list[str]) -> bool:
    """The safety net after our labs are down: if hive-lab's own 'down' did not put the
    neighbour-table limits back (it was killed), and no lab is up any more, put back the
    machine's values hive-lab kept (the limits are the machine's: lowering them under another
    engineer's running lab would overflow its table).  ``saved``: what they were when this run
    started (says whether it changed anything)."""
    if not all(saved) or other_labs_up() or not ARP_ORIG.is_file():
        return False
    values = ARP_ORIG.read_text().split()
    if len(values) != 3 or not all(v.isdigit() for v in values):
        return False
    subprocess.run(["sysctl", "-q", "-w"] + [f"{k}={v}" for k, v in zip(ARP_KEYS, values)],
                   capture_output=True, timeout=10)
    ARP_ORIG.unlink(missing_ok=True)
    saved[:] = values
    return True


def serf_key() -> str:
    """A fresh 16-byte gossip key: Serf then authenticates (and encrypts) like our signed hive."""
    return base64.b64encode(os.urandom(16)).decode()


def python_for_daemons() -> str:
    """The interpreter the daemons run on: /usr/bin/python3, as the systemd units do (else this
    one, resolved, so no pyenv-style shim sits between the start and the daemon)."""
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return os.path.realpath(sys.executable)


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def first_log_time(path: Path, offset: int, pattern: str) -> float | None:
    """Epoch time of the first line at/after offset that contains pattern (the daemons log
    'YYYY-MM-DD HH:MM:SS,mmm' in local time when not under journald)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            for raw in handle:
                line = raw.decode("utf-8", "replace")
                if pattern in line:
                    match = LOG_TIME.match(line)
                    if not match:
                        return None
                    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) \
                        + int(match.group(2)) / 1000
    except OSError:
        return None
    return None


def log_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_tail(path: Path, words=("[ERR]", "[WARN]", "ERROR", "WARNING", "Traceback"), lines: int = 4
             ) -> list[str]:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line.strip()[:200] for line in text if any(w in line for w in words)][-lines:]
