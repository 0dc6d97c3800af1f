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

import importlib.util
import logging
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


def load_policy(path: str) -> Policy:
    """The suggest_role of a policy file, or the default for an empty path."""
    if not path:
        return default_suggest_role
    spec = importlib.util.spec_from_file_location("hive_policy", path)
    if spec is None or spec.loader is None:
        raise PolicyError(f"policy {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} not found") from None
    except (Exception, SystemExit) as exc:  # any error in a user's file is reported, not raised
        raise PolicyError(f"policy {path} failed to load: {type(exc).__name__}: {exc}") from None
    function = getattr(module, "suggest_role", None)
    if not callable(function):
        raise PolicyError(f"policy {path} does not define suggest_role(view, newcomer)")
    return function


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
