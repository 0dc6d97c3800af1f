"""Installing a role's packages with apt-get: argument lists only, names validated, no shell."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Callable, Sequence

from . import timing
from .protocol import is_valid_package

LOG = logging.getLogger(__name__)

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_SUSPEND": "1"}
APT_LOCK = ["-o", "DPkg::Lock::Timeout=600"]

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, **APT_ENV)
    return subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=3600, check=False)


def install_command(packages: Sequence[str]) -> list[str]:
    bad = [p for p in packages if not is_valid_package(p)]
    if bad:
        raise ValueError(f"invalid package name(s): {', '.join(map(repr, bad))}")
    return ["apt-get", "install", "-y", "--no-install-recommends", *APT_LOCK, "--", *packages]


def _tail(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def install(packages: Sequence[str], run: Runner = _run, sleep: Callable[[float], None] = time.sleep
            ) -> str | None:
    """Install the packages; return None on success or one line saying what failed."""
    try:
        command = install_command(packages)
    except ValueError as exc:
        return str(exc)
    if not packages:
        return None
    error = "apt-get update failed"
    for attempt in range(1, timing.APT_UPDATE_ATTEMPTS + 1):
        try:
            result = run(["apt-get", *APT_LOCK, "update"])
        except (OSError, subprocess.SubprocessError) as exc:
            return f"cannot run apt-get: {exc}"
        if result.returncode == 0:
            break
        error = f"apt-get update failed: {_tail(result.stderr)}"
        LOG.warning("%s (attempt %d of %d)", error, attempt, timing.APT_UPDATE_ATTEMPTS)
        if attempt < timing.APT_UPDATE_ATTEMPTS:
            sleep(timing.APT_UPDATE_PAUSE)
    else:
        return error
    try:
        result = run(command)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run apt-get: {exc}"
    if result.returncode != 0:
        return f"apt-get install failed (exit {result.returncode}): {_tail(result.stderr)}"
    return None
