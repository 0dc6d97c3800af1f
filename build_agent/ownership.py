"""Files the daemons run as code (a policy, role hooks) must be root's alone.

Owned by root (or by the user running us), and neither the file nor any directory above it (as
named and as resolved) writable by group or others: whoever can write one of them can run code
with our rights.  A sticky directory (/tmp) does not count as writable: others cannot replace
what they do not own there.
"""

from __future__ import annotations

import os
import stat


def owner_problem(what: str, path: str, info: os.stat_result, why: str) -> str | None:
    """Why the file or directory at path (its stat ``info``) lets someone other than root change
    it, as one line saying how to fix it (``why``: what depends on it), or None."""
    if info.st_uid not in (0, os.geteuid()):
        return f"{what} is owned by uid {info.st_uid}, not root: run 'chown root:root {path}' ({why})"
    sticky_dir = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
    if info.st_mode & 0o022 and not sticky_dir:
        return (f"{what} has mode 0{stat.S_IMODE(info.st_mode):o} (writable by group or others): "
                f"run 'chmod go-w {path}' ({why})")
    return None


def directories_problem(path: str, what: str, why: str) -> str | None:
    """The first directory above ``path`` (as named and as resolved) that is not root's alone,
    as one line ("{what}: directory D ..."), or None.  Directories that do not exist end the
    walk (whoever opens the path reports a missing one)."""
    seen = set()
    for start in (os.path.abspath(path), os.path.realpath(path)):
        directory = os.path.dirname(start)
        while directory not in seen:
            seen.add(directory)
            try:
                info = os.stat(directory)
            except OSError:
                break
            problem = owner_problem(f"{what}: directory {directory}", directory, info, why)
            if problem:
                return problem
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent
    return None
