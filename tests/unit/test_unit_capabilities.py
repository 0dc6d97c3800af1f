"""has_gpu from a fake sysfs: which PCI devices count as a GPU (docs/policies.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from build_agent import capabilities

# (vendor, class) as the kernel writes them in /sys/bus/pci/devices/ADDR/{vendor,class}
ASPEED_BMC_VGA = ("0x1a03", "0x030000")      # AST2500/2600 on most servers' BMC
MATROX_BMC_VGA = ("0x102b", "0x030000")      # G200eR/eW3 on Dell/HPE servers' BMC
NVIDIA_3D = ("0x10de", "0x030200")           # A100/H100/L4: a 3D controller
NVIDIA_VGA = ("0x10de", "0x030000")          # GeForce/RTX workstation card
NVIDIA_HDMI_AUDIO = ("0x10de", "0x040300")   # the audio function of a card
AMD_VGA = ("0x1002", "0x030000")             # Radeon
AMD_DISPLAY_OTHER = ("0x1002", "0x038000")   # Instinct MI100/MI200
AMD_ACCELERATOR = ("0x1002", "0x120000")     # Instinct MI300 (processing accelerator)
AMD_EPYC_BRIDGE = ("0x1022", "0x060000")     # AMD's CPU-side vendor id: a host bridge
INTEL_IGPU = ("0x8086", "0x030000")
VIRTIO_GPU = ("0x1af4", "0x030000")
QEMU_STD_VGA = ("0x1234", "0x030000")


def fake_sysfs(root: Path, devices: dict[str, tuple[str, str]]) -> str:
    """A sysfs tree like the kernel's: devices/ADDR is a symlink into devices/pci0000:00/ADDR."""
    real = root / "devices" / "pci0000:00"
    listing = root / "bus" / "pci" / "devices"
    real.mkdir(parents=True)
    listing.mkdir(parents=True)
    for address, (vendor, klass) in devices.items():
        (real / address).mkdir()
        (real / address / "vendor").write_text(vendor + "\n")
        (real / address / "class").write_text(klass + "\n")
        os.symlink(f"../../../devices/pci0000:00/{address}", listing / address)
    return str(root)


@pytest.mark.parametrize("devices, expected", [
    ({}, []),
    ({"0000:02:00.0": ASPEED_BMC_VGA}, []),
    ({"0000:03:00.0": MATROX_BMC_VGA}, []),
    ({"0000:00:02.0": INTEL_IGPU}, []),
    ({"0000:00:01.0": VIRTIO_GPU, "0000:00:02.0": QEMU_STD_VGA}, []),
    ({"0000:00:00.0": AMD_EPYC_BRIDGE}, []),
    ({"0000:02:00.0": ASPEED_BMC_VGA, "0000:41:00.0": NVIDIA_3D}, ["0000:41:00.0"]),
    ({"0000:01:00.0": NVIDIA_VGA, "0000:01:00.1": NVIDIA_HDMI_AUDIO}, ["0000:01:00.0"]),
    ({"0000:03:00.0": MATROX_BMC_VGA, "0000:c1:00.0": AMD_VGA}, ["0000:c1:00.0"]),
    ({"0000:c1:00.0": AMD_DISPLAY_OTHER}, ["0000:c1:00.0"]),
    ({"0000:0a:00.0": AMD_ACCELERATOR, "0000:00:00.0": AMD_EPYC_BRIDGE}, ["0000:0a:00.0"]),
])
def test_which_pci_devices_count_as_gpus(tmp_path, devices, expected):
    root = fake_sysfs(tmp_path, devices)
    assert capabilities.gpus(root) == expected
    assert capabilities.detect(root)["has_gpu"] is bool(expected)


def test_unreadable_or_odd_entries_are_skipped(tmp_path):
    root = fake_sysfs(tmp_path, {"0000:41:00.0": NVIDIA_3D, "0000:42:00.0": NVIDIA_3D,
                                 "0000:43:00.0": NVIDIA_3D})
    (tmp_path / "devices/pci0000:00/0000:41:00.0/class").write_text("garbage\n")
    (tmp_path / "devices/pci0000:00/0000:42:00.0/vendor").unlink()
    assert capabilities.gpus(root) == ["0000:43:00.0"]


def test_no_pci_bus_means_no_gpu(tmp_path):
    assert capabilities.gpus(str(tmp_path)) == []
    assert capabilities.detect(str(tmp_path / "missing"))["has_gpu"] is False


def test_detect_reads_this_machine():
    caps = capabilities.detect()
    assert isinstance(caps["has_gpu"], bool) and caps["cpu_cores"] >= 1
