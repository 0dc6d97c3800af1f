"""Start a daemon that stops once it is started: python3 frozen.py MODULE [ARGS...]

Runs the daemon as ``python3 -m MODULE ARGS`` does (``daemon.main`` with MODULE's ``build``),
except that once ``build`` returns (interpreter up, config and secret read, sockets bound: the
daemon is about to run its loop, whose first tick says HELLO) it stops itself with SIGSTOP, and
goes on when sent SIGCONT.

For the mass-join phase of hive-bench: 100 machines started at the same moment each start their
daemon on their own CPU; on one 2-core machine 100 daemons starting back to back take seconds of
CPU before any hive work.  Freezing each once it is started, then thawing all at one moment,
starts the hive's part of 100 nodes together; the bench adds one daemon's start measured alone
(spawn to frozen) to the figure, and reports a back-to-back start as well.  Lab use only (the lab
puts the repository on PYTHONPATH).
"""

import importlib
import os
import signal
import sys


def main() -> int:
    name = sys.argv[1]
    module = importlib.import_module(f"{name}.__main__")
    from build_agent import daemon

    def build(*args):
        built = module.build(*args)
        os.kill(os.getpid(), signal.SIGSTOP)  # the bench sees state "T", then sends SIGCONT
        return built

    return daemon.main(name.replace("_", "-"), module.__doc__, sys.argv[2:], build)


if __name__ == "__main__":
    sys.exit(main())
