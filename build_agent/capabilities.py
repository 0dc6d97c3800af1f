"""What this machine can do, as carried in HELLO/IDENTIFY/STATUS (``capabilities``)."""

from __future__ import annotations

import glob
import os
import platform
import shutil


def _ram_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / (1024 * 1024), 1)
    except (OSError, ValueError):
        pass
    return 0.0


def _os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')[:64]
    except OSError:
        pass
    return platform.system()


def _has_gpu() -> bool:
    # NVIDIA's driver creates /dev/nvidia0; DRM render nodes cover AMD and Intel GPUs.
    return os.path.exists("/dev/nvidia0") or bool(glob.glob("/dev/dri/renderD*"))


def detect() -> dict:
    return {
        "cpu_cores": os.cpu_count() or 1,
        "ram_gb": _ram_gb(),
        "has_gpu": _has_gpu(),
        "arch": platform.machine()[:32],
        "os": _os_name(),
        "docker_installed": shutil.which("docker") is not None,
    }
