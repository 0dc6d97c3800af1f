"""Running a user's policy function without ever waiting for it in an event loop.

The function runs in a daemon thread (one that never returns cannot keep the daemon from
exiting); the loop polls.  One call at a time: a call that is still running holds the slot, and
``late`` says when it has run past its deadline, so the caller can say so once and carry on
with what it had.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class OffLoop:
    def __init__(self, function: Callable[..., Any], timeout: float) -> None:
        self.function = function
        self.timeout = timeout
        self._thread: threading.Thread | None = None
        self._outcome: list[tuple[bool, Any]] = []
        self._started = 0.0
        self.context: Any = None  # what the caller wants back with the answer (e.g. the view)

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(self, now: float, *args: Any, context: Any = None) -> bool:
        """Begin a call (False if one is still running)."""
        if self._thread is not None:
            return False
        self._outcome = []
        self._started, self.context = now, context

        def work() -> None:
            try:
                self._outcome.append((True, self.function(*args)))
            except BaseException as exc:  # handed to the caller, never raised in the thread
                self._outcome.append((False, exc))
        self._thread = threading.Thread(target=work, name="policy", daemon=True)
        self._thread.start()
        return True

    def late(self, now: float) -> bool:
        return self._thread is not None and now - self._started >= self.timeout

    def result(self) -> tuple[bool, Any] | None:
        """(True, value) or (False, exception) once the call has ended, else None."""
        if self._thread is None or self._thread.is_alive():
            return None
        self._thread = None
        return self._outcome[0] if self._outcome else (False, RuntimeError("no result"))
