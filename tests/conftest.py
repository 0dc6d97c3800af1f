"""Fixtures shared by the lab (integration) tests."""

from __future__ import annotations

import itertools
import os

import pytest

from lab import Lab

_counter = itertools.count(1)


@pytest.fixture
def make_lab():
    """Create labs with unique names and subnets (10.77.100+); all are torn down afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network namespaces): run them as root, as CI does")
    labs: list[Lab] = []

    def factory(**kwargs) -> Lab:
        n = next(_counter) + (os.getpid() % 50) * 3
        lab = Lab(f"t{os.getpid() % 10000}x{n % 100}", f"10.77.{100 + n % 150}", **kwargs)
        lab.down(check=False)  # a leftover from an interrupted run
        labs.append(lab)
        return lab

    yield factory
    for lab in labs:
        lab.down()
