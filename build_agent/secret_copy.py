"""python3 -m build_agent.secret_copy --config FILE --to PATH [--reload]: hand build-advisor the
shared secret.

build-advisor runs as a throw-away user (DynamicUser=yes) that may not read the root-only secret
file.  systemd runs this as root (`ExecStartPre=+`, `ExecReload=+` in build-advisor.service)
before the advisor starts and before each reload signal: it reads hive.toml's `secret_file`,
checks it with the daemons' own rules (load_secrets) and writes the secrets atomically to PATH,
mode 0400, owned by the owner of PATH's directory (the advisor's RuntimeDirectory=, which
systemd gives to the dynamic user).  The advisor reads PATH ($HIVE_SECRET_COPY) at start and on
SIGHUP.

An unusable secret is one error line and exit status 1, and PATH is left as it was: the start
fails visibly, or the reload fails (systemd then sends no SIGHUP) and the advisor keeps the
secret it has.  The secret itself is never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .config import DEFAULT_CONFIG, ConfigError, load_config, load_secrets
from .daemon import setup_logging
from .state import write_text_atomic

LOG = logging.getLogger(__name__)

PROG = "build-advisor"  # whose secret this is, in the error lines (as the daemon words them)
COPY_MODE = 0o400


def copy_secret(config_path: str | None, target: Path) -> int:
    """Validate the configured secret file and write its secrets to ``target``; return how many.
    Raises ConfigError (a user error, one line) and leaves ``target`` alone on any failure."""
    config = load_config(config_path)
    secrets = load_secrets(config.secret_file)
    text = "".join(secret.decode("utf-8") + "\n" for secret in secrets)
    try:
        directory = os.stat(target.parent)
        write_text_atomic(target, text, mode=COPY_MODE,
                          owner=(directory.st_uid, directory.st_gid))
    except OSError as exc:
        raise ConfigError(f"cannot write the secret's copy {target}: "
                          f"{exc.strerror or exc}") from None
    return len(secrets)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m build_agent.secret_copy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None,
                        help=f"hive.toml (default {DEFAULT_CONFIG}; missing means defaults)")
    parser.add_argument("--to", required=True, type=Path,
                        help="where the advisor finds the copy (its $HIVE_SECRET_COPY)")
    parser.add_argument("--reload", action="store_true",
                        help="word an error as a failed reload (the advisor keeps its secret)")
    args = parser.parse_args(argv)
    setup_logging("info")
    try:
        count = copy_secret(args.config, args.to)
    except ConfigError as exc:
        if args.reload:
            LOG.error("Reload failed, keeping the old secret: %s", exc)
        else:
            LOG.error("%s: %s", PROG, exc)
        return 1
    LOG.debug("Copied %d secret(s) to %s", count, args.to)
    return 0


if __name__ == "__main__":
    sys.exit(main())
