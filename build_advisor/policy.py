"""suggest_role() policies: the built-in default, loading a user's policy file, and checking
what a policy returns.

A policy is a Python file defining ``suggest_role(view, newcomer)`` that returns
``{"role": str, "packages": [str], "config": dict, "reason": str}``:

- ``view["self"]``: the advising member (hostname, ip, role, capabilities, node_id);
- ``view["peers"]``: the other established members (not the advisor, not the newcomer);
- ``view["members"]``: ``[view["self"]] + view["peers"]``;
- ``newcomer``: hostname, ip, node_id and capabilities (cpu_cores, ram_gb, has_gpu, arch, os,
  docker_installed) of the node asking.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import types
from typing import Callable

from build_agent.config import ConfigError
from build_agent.protocol import is_valid_package, is_valid_role

LOG = logging.getLogger(__name__)

Policy = Callable[[dict, dict], dict]

CONTROLLER = {"role": "controller", "packages": ["ansible", "git"], "config": {},
              "reason": "first node becomes controller"}
BUILDER = {"role": "builder", "packages": ["openjdk-17-jdk", "maven", "git", "build-essential"],
           "config": {}, "reason": "cluster needs builders"}
RUNNER = {"role": "runner", "packages": ["python3-pytest", "nodejs", "npm"], "config": {},
          "reason": "have builders, need test runners"}


class PolicyError(ConfigError):
    """A policy file that cannot be used: the message says what is wrong."""


def default_suggest_role(view: dict, newcomer: dict) -> dict:
    """0 peers: controller; 1-2 peers: builder; 3+: runner ("peers" excludes advisor and newcomer)."""
    peers = len(view["peers"])
    choice = CONTROLLER if peers == 0 else BUILDER if peers <= 2 else RUNNER
    return {"role": choice["role"], "packages": list(choice["packages"]),
            "config": dict(choice["config"]), "reason": choice["reason"]}


MODULE_NAME = "hive_policy"  # the name a policy file runs under (in sys.modules, for @dataclass)


def _owner_problem(what: str, path: str, info: os.stat_result) -> str | None:
    """Why the file or directory at path lets someone other than root change the policy."""
    if info.st_uid not in (0, os.geteuid()):
        return (f"{what} is owned by uid {info.st_uid}, not root: run 'chown root:root {path}' "
                f"(the advisor runs the policy with the hive's secret)")
    sticky_dir = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
    if info.st_mode & 0o022 and not sticky_dir:
        return (f"{what} has mode 0{stat.S_IMODE(info.st_mode):o} (writable by group or others): "
                f"run 'chmod go-w {path}' (the advisor runs the policy with the hive's secret)")
    return None


def _check_directories(path: str) -> None:
    """Every directory above the policy (as named and as resolved) must be root's alone: a user
    who can write one of them can put another file in the policy's place."""
    seen = set()
    for start in (os.path.abspath(path), os.path.realpath(path)):
        directory = os.path.dirname(start)
        while directory not in seen:
            seen.add(directory)
            try:
                info = os.stat(directory)
            except OSError:
                break  # the open below reports a missing path
            problem = _owner_problem(f"policy {path}: directory {directory}", directory, info)
            if problem:
                raise PolicyError(problem)
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent


def _read_checked(path: str) -> bytes:
    """The bytes of the policy file, read from the descriptor whose owner and mode we checked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang us
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} not found") from None
    except PermissionError:
        raise PolicyError(f"cannot read policy {path}: run 'chmod 0644 {path}' (build-advisor "
                          f"runs as an unprivileged user)") from None
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PolicyError(f"policy {path} is not a regular file")
        problem = _owner_problem(f"policy {path}", path, info)
        if problem:
            raise PolicyError(problem)
        try:
            return handle.read()
        except OSError as exc:
            raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None


def load_policy(path: str) -> Policy:
    """The suggest_role of a policy file, or the default for an empty path.

    The file runs with the advisor's rights and the hive's secret, so it must be root's alone
    (owned by root, or by the user running us; not writable by group or others, nor its
    directories): anything else is refused before a line of it runs.  It is read from the same
    open file that was checked, and runs as module ``hive_policy`` (registered in sys.modules,
    so @dataclass and friends work).
    """
    if not path:
        return default_suggest_role
    if not path.endswith(".py"):
        raise PolicyError(f"policy {path} is not a Python file (.py)")
    _check_directories(path)
    source = _read_checked(path)
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = path
    previous = sys.modules.get(MODULE_NAME)
    sys.modules[MODULE_NAME] = module
    try:
        exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 (root's own file)
    except (Exception, SystemExit) as exc:  # any error in a user's file is reported, not raised
        _restore_module(previous)
        raise PolicyError(f"policy {path} failed to load: {type(exc).__name__}: {exc}") from None
    function = getattr(module, "suggest_role", None)
    if not callable(function):
        _restore_module(previous)
        raise PolicyError(f"policy {path} does not define suggest_role(view, newcomer)")
    return function


def _restore_module(previous) -> None:
    if previous is None:
        sys.modules.pop(MODULE_NAME, None)
    else:
        sys.modules[MODULE_NAME] = previous


def check_advice(result: object) -> dict:
    """Validate a policy's answer; ValueError says what is wrong with it."""
    if not isinstance(result, dict):
        raise ValueError(f"returned {type(result).__name__}, not a dict")
    role = result.get("role")
    if not is_valid_role(role):
        raise ValueError(f"invalid role {role!r}")
    packages = result.get("packages", [])
    if not isinstance(packages, list) or not all(is_valid_package(p) for p in packages):
        raise ValueError(f"invalid packages {packages!r}")
    config = result.get("config", {})
    if not isinstance(config, dict):
        raise ValueError("config is not a dict")
    reason = result.get("reason", "")
    if not isinstance(reason, str):
        raise ValueError("reason is not a string")
    return {"role": role, "packages": list(packages), "config": dict(config),
            "reason": reason[:300]}


def advise(policy: Policy, view: dict, newcomer: dict) -> dict:
    """Run a policy; on any error log it and fall back to the default (never raise)."""
    try:
        return check_advice(policy(view, newcomer))
    except Exception as exc:
        if policy is default_suggest_role:
            raise
        LOG.error("Policy failed for %s (%s: %s); using the default policy",
                  newcomer.get("hostname"), type(exc).__name__, exc)
        return check_advice(default_suggest_role(view, newcomer))
