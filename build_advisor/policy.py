"""suggest_role() policies: the built-in default, loading a user's policy file, and checking
what a policy returns as every receiver of its ADVICE will.

A policy is a Python file defining ``suggest_role(view, newcomer)`` that returns
``{"role": str, "packages": [str], "config": dict, "reason": str}``:

- ``view["self"]``: the advising member (hostname, ip, role, capabilities, node_id);
- ``view["peers"]``: the other established members (not the advisor, not the newcomer);
- ``view["members"]``: ``[view["self"]] + view["peers"]``;
- ``newcomer``: hostname, ip, node_id and capabilities (cpu_cores, ram_gb, has_gpu, arch, os,
  docker_installed) of the node asking.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
import types
from typing import Callable

from build_agent import plan as plans, protocol
from build_agent.config import ConfigError
from build_agent.ownership import directories_problem, owner_problem
from build_agent.protocol import ProtocolError

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


# What a user who could write the policy (or a directory above it) could do.
OWNER_WHY = "the advisor runs the policy with the hive's secret"


def _owner_problem(what: str, path: str, info: os.stat_result) -> str | None:
    """Why the file or directory at path lets someone other than root change the policy."""
    return owner_problem(what, path, info, OWNER_WHY)


def _check_directories(path: str) -> None:
    """Every directory above the policy (as named and as resolved) must be root's alone: a user
    who can write one of them can put another file in the policy's place."""
    problem = directories_problem(path, f"policy {path}", OWNER_WHY)
    if problem:
        raise PolicyError(problem)


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


# --- a policy's answer, checked as every receiver will check it --------------------------------

# Any key will do for the size check: a signature is 64 hex digits whoever signs.
_CHECK_KEY = b"build-advisor-size-check"
REASON_MAX = 300  # characters of a reason (longer ones are cut, not refused)

# to_payload(answer) -> the ADVICE payload carrying it (the advisor's one builder of ADVICE)
PayloadBuilder = Callable[[dict], dict]


class AnswerError(ValueError):
    """A policy's answer that no receiver would accept: the message says why."""


def answer_fields(result: object) -> dict:
    """role, packages, config, reason of a policy's answer (the last three optional; a longer
    reason is cut), not yet checked."""
    if not isinstance(result, dict):
        raise AnswerError(f"returned {type(result).__name__}, not a dict")
    reason = result.get("reason", "")
    return {"role": result.get("role"), "packages": result.get("packages", []),
            "config": result.get("config", {}),
            "reason": reason[:REASON_MAX] if isinstance(reason, str) else reason}


def as_received(payload: dict) -> dict:
    """The payload exactly as every receiver will decode it (protocol.decode: JSON without NaN or
    Infinity, every field's type and size, the datagram's size); AnswerError if they would drop
    it.  The fields are first checked as built, so a tuple or a set is refused, not converted."""
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise AnswerError(f"not JSON: {exc}") from None
    try:
        protocol.validate(payload)
        data = protocol.encode(payload, _CHECK_KEY)
        received = protocol.decode(data, [_CHECK_KEY], protocol.parse_ts(payload["ts"]))
    except ProtocolError as exc:
        raise AnswerError(f"{exc}: every receiver would drop this ADVICE") from None
    return received.payload


def evaluate(policy: Policy, view: dict, newcomer: dict, to_payload: PayloadBuilder) -> dict:
    """Run a policy: the ADVICE payload of its answer, as receivers will decode it.  Raises what
    the policy raises, or AnswerError."""
    return as_received(to_payload(answer_fields(policy(view, newcomer))))


def describe(exc: BaseException) -> str:
    if isinstance(exc, AnswerError):
        return f"invalid answer: {exc}"
    return f"{type(exc).__name__}: {exc}"


def fallback(view: dict, newcomer: dict, to_payload: PayloadBuilder, why: str,
             default: Policy = default_suggest_role) -> dict:
    """Log why the policy did not answer (one line) and answer with the default policy."""
    LOG.error("Policy failed for %s (%s); using the default policy", newcomer.get("hostname"), why)
    return evaluate(default, view, newcomer, to_payload)


def advise(policy: Policy, view: dict, newcomer: dict, to_payload: PayloadBuilder) -> dict:
    """Run a policy here and now; on any error log it and fall back to the default (never raises
    for a user's policy).  The advisor runs users' policies in a worker thread (see advisor)."""
    try:
        return evaluate(policy, view, newcomer, to_payload)
    except (Exception, SystemExit) as exc:
        if policy is default_suggest_role:
            raise
        return fallback(view, newcomer, to_payload, describe(exc))


# --- what the hive wants (healing) --------------------------------------------------------------

DesiredRoles = Callable[[dict], object]


def desired_roles_of(policy: Policy) -> DesiredRoles:
    """The policy's ``desired_roles(view)`` if its file defines one (returning role counts,
    one of them may be "rest", or None to turn healing off for the hive); otherwise replay its
    ``suggest_role`` for the view's members in join order (plan.replay): the default policy
    gives the seed's table.  A suggest_role that fails for one replayed member counts as the
    default's answer there, as it would for a newcomer."""
    module = sys.modules.get(getattr(policy, "__module__", "") or "")
    own = getattr(module, "desired_roles", None) if policy is not default_suggest_role else None
    if callable(own):
        return own

    def suggest(view: dict, newcomer: dict) -> dict:
        if policy is default_suggest_role:
            return default_suggest_role(view, newcomer)
        try:
            answer = answer_fields(policy(view, newcomer))
            if protocol.is_valid_role(answer["role"]):
                return answer
        except (Exception, SystemExit):
            pass
        return default_suggest_role(view, newcomer)

    return lambda view: plans.replay(view["members"], suggest)

