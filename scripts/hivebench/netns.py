"""Sockets inside a lab host's network namespace, from this (root-namespace) process.

setns(2) moves only the calling thread; a socket keeps the namespace it was created in.  So we
step into the host's namespace, create the socket, and step straight back.  If stepping back ever
failed we stop the whole run rather than go on in the wrong namespace.
"""

from __future__ import annotations

import ctypes
import os
import socket

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket created inside network namespace ``ns`` (a name under /run/netns)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return socket.socket(family, kind)
            finally:
                try:
                    _setns(home)
                except OSError as exc:  # never carry on in a lab namespace
                    os.write(2, f"hive-bench: cannot return to the main network namespace: {exc}\n".encode())
                    os._exit(70)
        finally:
            os.close(target)
    finally:
        os.close(home)


def same_ns_as_init() -> bool:
    """True when this thread is in PID 1's network namespace (a sanity check after setns)."""
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return True
