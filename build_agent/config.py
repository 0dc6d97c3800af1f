"""hive.toml (one file for both daemons) and the shared secret."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import timing
from .metrics import DEFAULT_FILE as DEFAULT_METRICS_FILE
from .protocol import DEFAULT_PORT, is_valid_role

LOG = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/build/hive.toml"
MIN_SECRET_LEN = 16
# build-advisor's unit names here the copy of the secret that build_agent.secret_copy hands it
# (the advisor's throw-away user may not read secret_file itself).
SECRET_COPY_ENV = "HIVE_SECRET_COPY"


class ConfigError(Exception):
    """A user error in configuration: the message is one line saying what to do."""


# How a node finds the hive (hive.toml's ``discovery``), any combination of:
DISCOVERY_METHODS = ("broadcast", "multicast", "seeds", "etcd")
DEFAULT_MULTICAST_GROUP = "239.255.0.1"
DEFAULT_ETCD_PREFIX = "/build-hive/"
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


@dataclass(frozen=True)
class EtcdSettings:
    """hive.toml's [etcd] table."""
    endpoints: tuple[str, ...] = ()
    prefix: str = DEFAULT_ETCD_PREFIX


@dataclass(frozen=True)
class TasksConfig:
    """hive.toml's [tasks] table: build work handed out by the controller (build_agent/tasks.py)."""
    enabled: bool = False  # off: this node neither runs tasks nor hands them out
    roles: tuple[str, ...] = ()  # the roles of this node that run tasks; empty: any role
    slots: int | None = None  # tasks run at once here; unset: the CPU count
    timeout: float = timing.TASK_DEFAULT_TIMEOUT  # a task's time limit unless it sets its own
    retries: int = 1  # how often a task whose worker vanished is re-queued, unless it says
    memory_max_mb: int | None = None  # per task; unset: the RAM divided by the slots
    work_dir: str = "/var/tmp/build-hive-tasks"  # where tasks run when systemd is not PID 1


def parse_seed(text: str) -> tuple[str, int | None]:
    """'10.20.1.11', '10.20.1.11:50555', 'build1.example.net' or 'build1.example.net:50555'
    -> (host, port or None).  ValueError for anything else."""
    if not isinstance(text, str) or not text or len(text) > 260 or text.strip() != text:
        raise ValueError(text)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port = text, None
    else:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(text)
        port = int(port_text)
    try:
        ipaddress.IPv4Address(host)
        return host, port
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels) \
            or labels[-1].isdigit():
        raise ValueError(text)
    return host, port


def _check_url(url: object) -> str:
    """An etcd client URL: http(s)://host[:port] (no path, query or credentials)."""
    from urllib.parse import urlsplit  # light: no sockets, no ssl
    if not isinstance(url, str):
        raise ValueError
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError
    parts.port  # noqa: B018 (raises ValueError for a bad port)
    return url.rstrip("/")


@dataclass(frozen=True)
class Config:
    port: int = DEFAULT_PORT
    interface: str = ""  # empty: the interface of the default route
    secret_file: str = "/etc/build/shared_secret"
    state_dir: str = "/var/lib/build"
    heartbeat_interval: float = 10.0
    # Seconds between this node's probes of its ring successor (failure detection, probe.py);
    # 0: this node neither probes nor is probed (the heartbeat rule alone judges it).
    probe_interval: float = timing.PROBE_INTERVAL_DEFAULT
    install_packages: bool = True
    policy: str = ""  # empty: the built-in default policy
    log_level: str = "info"
    # Healing: may this node change role when the hive needs it (it always counts)?
    rebalance: bool = True
    # Seconds a need must persist before a node moves, and after a move before that node may
    # move again; unset: REBALANCE_GRACE_INTERVALS / _COOLDOWN_INTERVALS heartbeat intervals.
    rebalance_grace: float | None = None
    rebalance_cooldown: float | None = None
    # Executables run (run-parts order) when this node's role changes; a missing folder: none.
    role_hooks_dir: str = "/etc/build/role.d"
    # Discovery beyond one broadcast domain (see docs/subnets.md).
    discovery: tuple[str, ...] = ("broadcast",)
    multicast_group: str = DEFAULT_MULTICAST_GROUP
    multicast_ttl: int = 1
    seeds: tuple[str, ...] = ()
    etcd: EtcdSettings = field(default_factory=EtcdSettings)
    # The agent's local control socket (root only; `hive task` talks to the running agent
    # through it); empty: control.sock in state_dir.
    control_socket: str = ""
    tasks: TasksConfig = field(default_factory=TasksConfig)
    # The hive's state as Prometheus metrics (node_exporter's textfile collector), written only
    # while this file's folder exists; empty: no metrics file.
    metrics_file: str = DEFAULT_METRICS_FILE

    @property
    def grace(self) -> float:
        if self.rebalance_grace is not None:
            return self.rebalance_grace
        return timing.REBALANCE_GRACE_INTERVALS * self.heartbeat_interval

    @property
    def cooldown(self) -> float:
        if self.rebalance_cooldown is not None:
            return self.rebalance_cooldown
        return timing.REBALANCE_COOLDOWN_INTERVALS * self.heartbeat_interval

    @property
    def identity_path(self) -> Path:
        return Path(self.state_dir) / "identity.json"

    @property
    def peers_path(self) -> Path:
        return Path(self.state_dir) / "peers.json"

    @property
    def node_id_path(self) -> Path:
        return Path(self.state_dir) / "node_id"

    @property
    def agent_state_path(self) -> Path:  # the agent's state for machines (build_agent.readiness)
        return Path(self.state_dir) / "agent-state.json"

    @property
    def control_path(self) -> Path:
        return Path(self.control_socket or Path(self.state_dir) / "control.sock")


LOG_LEVELS = ("debug", "info", "warning", "error")


def _check(name: str, value: object) -> object:
    """Validate one key; return the value in its final type or raise ConfigError."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key '{name}' must be {expected}, got {value!r}")

    if name == "port":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise bad("an integer from 1 to 65535")
    elif name == "heartbeat_interval":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.2 <= value <= 3600:
            raise bad("a number of seconds from 0.2 to 3600")
        value = float(value)
    elif name == "probe_interval":
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not (value == 0 or 0.2 <= value <= 60):
            raise bad("0 (no probing) or a number of seconds from 0.2 to 60")
        value = float(value)
    elif name in ("install_packages", "rebalance"):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif name in ("rebalance_grace", "rebalance_cooldown"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86400:
            raise bad("a number of seconds from 0 to 86400")
        value = float(value)
    elif name == "log_level":
        if value not in LOG_LEVELS:
            raise bad("one of " + ", ".join(LOG_LEVELS))
    elif name == "discovery":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise bad("a list of methods: " + ", ".join(f'"{m}"' for m in DISCOVERY_METHODS))
        unknown = [v for v in value if v not in DISCOVERY_METHODS]
        if unknown:
            raise ConfigError(f"config key 'discovery': unknown method {unknown[0]!r} (use any "
                              f"of {', '.join(DISCOVERY_METHODS)})")
        value = tuple(dict.fromkeys(value))
    elif name == "multicast_group":
        try:
            ok = isinstance(value, str) and ipaddress.IPv4Address(value).is_multicast
        except ValueError:
            ok = False
        if not ok:
            raise bad('an IPv4 multicast address (224.0.0.0 to 239.255.255.255), e.g. '
                      f'"{DEFAULT_MULTICAST_GROUP}"')
    elif name == "multicast_ttl":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
            raise bad("an integer from 1 to 255 (1: the local subnet only)")
    elif name == "seeds":
        if not isinstance(value, list):
            raise bad('a list of addresses, e.g. ["10.20.1.11", "build1.example.net:50555"]')
        for item in value:
            try:
                parse_seed(item)
            except ValueError:
                raise ConfigError(f"config key 'seeds': {item!r} is not an address: use an "
                                  f"IPv4 address or a host name, optionally with ':port'"
                                  ) from None
        value = tuple(value)
    elif name == "etcd":
        value = _check_etcd(value)
    elif name == "tasks":
        value = _check_tasks(value)
    elif name == "interface":
        if not isinstance(value, str) or len(value) > 15 or "/" in value or value.strip() != value:
            raise bad("a network interface name (at most 15 characters)")
    elif not isinstance(value, str):
        raise bad("a string")
    elif name in ("secret_file", "state_dir", "role_hooks_dir") and not value.startswith("/"):
        raise bad("an absolute path")
    elif name == "metrics_file" and value and (not value.startswith("/")
                                               or not value.endswith(".prom")):
        raise bad('an absolute path ending in ".prom" (node_exporter\'s textfile collector '
                  'reads only those), or "" for no metrics file')
    elif name == "control_socket" and value and (not value.startswith("/") or len(value) > 100):
        raise bad("an absolute path of at most 100 characters")
    return value


def _check_tasks(table: object) -> TasksConfig:
    """The [tasks] table: every key checked, an unknown key an error."""
    if not isinstance(table, dict):
        raise ConfigError("config key 'tasks' must be a table: [tasks] on a line of its own, "
                          "then enabled = true")
    known = [f.name for f in fields(TasksConfig)]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [tasks]: {', '.join(unknown)} (known: "
                          f"{', '.join(known)})")
    return TasksConfig(**{name: _check_task_key(name, value) for name, value in table.items()})


def _check_task_key(name: str, value: object) -> object:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key 'tasks.{name}' must be {expected}, got {value!r}")

    def integer(low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad(f"an integer from {low} to {high}")
        return value

    if name == "enabled":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if name == "roles":
        if not isinstance(value, list) or not all(is_valid_role(r) for r in value):
            raise bad('a list of role names, e.g. ["builder", "runner"]')
        return tuple(value)
    if name == "slots":
        return integer(1, 1024)
    if name == "retries":
        return integer(0, 10)
    if name == "memory_max_mb":
        return integer(16, 16 * 1024 * 1024)
    if name == "timeout":
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 1 <= value <= timing.TASK_MAX_TIMEOUT:
            raise bad(f"a number of seconds from 1 to {timing.TASK_MAX_TIMEOUT:.0f}")
        return float(value)
    if not isinstance(value, str) or not value.startswith("/") or value.rstrip("/") == "":
        raise bad("an absolute path (not /)")  # work_dir
    return value


def _check_etcd(table: object) -> EtcdSettings:
    if not isinstance(table, dict):
        raise ConfigError("config key 'etcd' must be a table: [etcd] with endpoints = "
                          "[\"http://10.20.0.5:2379\"]")
    unknown = sorted(set(table) - {"endpoints", "prefix"})
    if unknown:
        raise ConfigError(f"unknown key(s) in [etcd]: {', '.join(unknown)} (known: endpoints, "
                          f"prefix)")
    endpoints = table.get("endpoints", [])
    if not isinstance(endpoints, list):
        raise ConfigError(f"config key 'etcd.endpoints' must be a list of URLs, got "
                          f"{endpoints!r}")
    urls = []
    for url in endpoints:
        try:
            urls.append(_check_url(url))
        except ValueError:
            raise ConfigError(f"config key 'etcd.endpoints': {url!r} is not an etcd client URL: "
                              f"use http://HOST:PORT or https://HOST:PORT") from None
    prefix = table.get("prefix", DEFAULT_ETCD_PREFIX)
    if not isinstance(prefix, str) or not prefix.endswith("/") or len(prefix) > 200 \
            or not prefix.isprintable():
        raise ConfigError(f"config key 'etcd.prefix' must be a key prefix ending in '/', e.g. "
                          f"\"{DEFAULT_ETCD_PREFIX}\", got {prefix!r}")
    return EtcdSettings(tuple(urls), prefix)


def _check_together(config: Config) -> None:
    """Keys that only make sense with each other."""
    methods = config.discovery
    if "seeds" in methods and not config.seeds:
        raise ConfigError("discovery lists \"seeds\" but no seeds are set: add seeds = "
                          "[\"ADDRESS\", ...] (addresses or names of members)")
    if config.seeds and "seeds" not in methods:
        raise ConfigError("seeds are set but discovery does not list \"seeds\": add it, e.g. "
                          "discovery = [\"broadcast\", \"seeds\"]")
    if "etcd" in methods and not config.etcd.endpoints:
        raise ConfigError("discovery lists \"etcd\" but [etcd] has no endpoints: add [etcd] "
                          "endpoints = [\"http://HOST:2379\"]")
    if config.etcd.endpoints and "etcd" not in methods:
        raise ConfigError("[etcd] endpoints are set but discovery does not list \"etcd\": add "
                          "it, e.g. discovery = [\"broadcast\", \"etcd\"]")


def load_config(path: str | None) -> Config:
    """Read hive.toml; a missing default file means all defaults, a missing explicit file is an error."""
    if path is None:
        path = DEFAULT_CONFIG
        if not os.path.exists(path):
            return Config()
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; create it or leave out --config") from None
    except PermissionError:
        raise ConfigError(f"cannot read config file {path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {path}: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    values = {name: _check(name, value) for name, value in raw.items()}
    config = Config(**values)
    _check_together(config)
    return config


def secret_path(config: Config) -> str:
    """The copy of the secret named by $HIVE_SECRET_COPY (build-advisor under systemd), else
    the configured secret file."""
    return os.environ.get(SECRET_COPY_ENV) or config.secret_file


def load_secrets(path: str) -> list[bytes]:
    """All secrets in the file, one per non-blank line (surrounding blanks trimmed, no comment
    syntax: a line starting with '#' is a secret too): the first signs, all verify.

    Refuses (ConfigError) a missing or unreadable file, one that group or others may read or
    write (as install.sh does), and any secret shorter than MIN_SECRET_LEN characters: the hive
    never runs unsigned.
    """
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            text = handle.read(65536)
    except FileNotFoundError:
        raise ConfigError(f"no shared secret at {path}: copy the hive's secret there "
                          f"(mode 0600) or run install.sh to generate one") from None
    except PermissionError:
        raise ConfigError(f"cannot read the shared secret {path}: permission denied "
                          f"(run as root, or fix its owner)") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"shared secret {path} has mode {stat.S_IMODE(info.st_mode):04o} "
                          f"(group or others may read it): run 'chmod 0600 {path}'")
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"shared secret {path} is not UTF-8 text") from None
    secrets = [line.strip().encode() for line in lines if line.strip()]
    if not secrets:
        raise ConfigError(f"shared secret {path} is empty: put the hive's secret in it")
    if any(len(s) < MIN_SECRET_LEN for s in secrets):
        raise ConfigError(f"a secret in {path} is shorter than {MIN_SECRET_LEN} characters: "
                          f"use 'openssl rand -hex 32'")
    return secrets
