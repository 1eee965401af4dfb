"""Hold Ctrl-C while cryptoauthlib is running our kit-bridge callbacks; deliver it after.

Python runs a signal handler at the next bytecode of the main thread. While the library is
inside a command, the next bytecode is usually in one of our ctypes callbacks, so the
default handler raises KeyboardInterrupt *there*, often before the callback's ``try``.
ctypes then prints "Exception ignored on calling ctypes callback function" and returns 0,
which the library reads as success: the interrupt is lost and the command goes on.
Recording the signal during the call and re-raising it afterwards keeps Ctrl-C working and
never lets it tear a command in half.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def deferred_sigint() -> Iterator[None]:
    """Within the block SIGINT is recorded, not acted on; on exit it is re-delivered to the
    handler that was installed before (KeyboardInterrupt by default). Outside the main
    thread (where Python never runs signal handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, signal.SIG_DFL, None):
        yield  # nothing Python-level would run: no KeyboardInterrupt to lose
        return
    pending: list[int] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            signal.raise_signal(signal.SIGINT)
