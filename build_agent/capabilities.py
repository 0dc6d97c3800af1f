"""What this machine can do, as carried in HELLO/IDENTIFY/STATUS (``capabilities``)."""

from __future__ import annotations

import os

# What counts as a GPU (has_gpu): a PCI device of NVIDIA or AMD/ATI whose class is a display
# controller (VGA 0x0300, 3D 0x0302, other 0x0380) or a processing accelerator (0x1200, e.g.
# AMD Instinct).  Read from sysfs, which the agent's sandbox still sees: PrivateDevices=yes
# hides /dev/nvidia* and /dev/dri.  Not counted: the VGA of a server's BMC (ASPEED, Matrox),
# virtual machines' display adapters (QEMU, Cirrus, VMware, virtio, Hyper-V) and Intel
# graphics, integrated or not.
GPU_VENDORS = {0x10DE: "NVIDIA", 0x1002: "AMD"}
GPU_CLASSES = {0x0300, 0x0302, 0x0380, 0x1200}


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
    return os.uname().sysname  # what platform.system() answers on Linux


def _read_hex(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read(32).strip(), 16)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def gpus(sysfs: str = "/sys") -> list[str]:
    """PCI addresses of the GPUs (see GPU_VENDORS and GPU_CLASSES) under the sysfs root."""
    devices = os.path.join(sysfs, "bus", "pci", "devices")
    try:
        names = sorted(os.listdir(devices))
    except OSError:
        return []
    found = []
    for name in names:
        vendor = _read_hex(os.path.join(devices, name, "vendor"))
        klass = _read_hex(os.path.join(devices, name, "class"))  # 0xCCSSPP: class, sub, prog-if
        if vendor in GPU_VENDORS and klass is not None and klass >> 8 in GPU_CLASSES:
            found.append(name)
    return found


def on_path(name: str) -> bool:
    """shutil.which(name) is not None, without importing shutil (and with it bz2, lzma) into a
    daemon at rest: an executable file of that name in a directory of $PATH."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return True
    return False


def detect(sysfs: str = "/sys") -> dict:
    return {
        "cpu_cores": os.cpu_count() or 1,
        "ram_gb": _ram_gb(),
        "has_gpu": bool(gpus(sysfs)),
        "arch": os.uname().machine[:32],
        "os": _os_name(),
        "docker_installed": on_path("docker"),
    }
