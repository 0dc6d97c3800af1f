"""Shared fakes for the unit tests: realistic signed messages, a recording socket, a clock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Plain `pytest` (not `python3 -m pytest`) does not put the checkout on sys.path.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from build_agent.config import Config  # noqa: E402
from build_agent.netif import Interface  # noqa: E402
from hive_fakes import FakeClock, FakeSocket  # noqa: E402


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_sock() -> FakeSocket:
    return FakeSocket()


@pytest.fixture
def iface() -> Interface:
    return Interface("veth0", "10.9.0.2", "255.255.255.0", "10.9.0.255")


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(state_dir=str(tmp_path), install_packages=False, heartbeat_interval=10.0,
                  secret_file=str(tmp_path / "secret"), role_hooks_dir=str(tmp_path / "role.d"),
                  metrics_file=str(tmp_path / "metrics" / "build_hive.prom"))
