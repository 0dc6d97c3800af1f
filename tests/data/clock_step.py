"""Run build-agent with a wall clock that steps back, as NTP may at boot.

Usage (inside a lab host): python3 clock_step.py AFTER STEP -- --config FILE
After AFTER seconds the wall clock (time.time) jumps by STEP seconds (negative: back in time).
The monotonic clock is untouched, as on a real machine.
"""

import os
import sys
import time

AFTER, STEP = float(sys.argv[1]), float(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1:]
_real_time = time.time
_start = time.monotonic()


def stepped_time() -> float:
    return _real_time() + (STEP if time.monotonic() - _start >= AFTER else 0.0)


time.time = stepped_time  # before the daemon is imported: its default clocks are this one
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from build_agent.__main__ import main  # noqa: E402

sys.exit(main(args))
