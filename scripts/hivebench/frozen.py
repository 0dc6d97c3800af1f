"""Start a daemon frozen after its interpreter is up: python3 frozen.py MODULE [ARGS...]

Imports MODULE's ``__main__`` (everything the daemon imports at start), stops itself with SIGSTOP,
and once sent SIGCONT runs the daemon's ``main(ARGS)``.  For the mass-join phase of hive-bench:
100 machines started at the same moment each start their own interpreter on their own CPU; on
one 2-core machine 100 interpreters starting back to back take seconds of CPU before any hive
work.  Freezing each one once it is up, then thawing all at one moment, starts the hive's part
of 100 nodes together; the bench adds one interpreter's own start-up, measured alone, to the
figure, and reports the back-to-back start as well.  Lab use only (the lab puts the repository
on PYTHONPATH).
"""

import importlib
import os
import signal
import sys


def main() -> int:
    module = importlib.import_module(f"{sys.argv[1]}.__main__")
    os.kill(os.getpid(), signal.SIGSTOP)  # the bench sees state "T", then sends SIGCONT
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
