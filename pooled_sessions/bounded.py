"""A blocking call held to a time limit: it runs on a thread of its own, and past the limit
its caller stops waiting and leaves it to finish alone.

A thread blocked in a socket read cannot be interrupted, and a store's own timeouts
(connect, read, retries) add up to far more than a caller's limit; waiting on a thread
is the one limit that holds whatever the store does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_within(call: Callable[[], object], seconds: float, name: str) -> bool:
    """Run ``call`` on a daemon thread named ``name`` and wait up to ``seconds`` for it.

    True if it returned (an exception it raised is raised here); False if it still runs.
    """
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller, who waits for it
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError:  # the interpreter is shutting down and starts no thread: wait
        call()
        return True
    thread.join(seconds)
    if not outcome:
        return False
    if outcome[0] is not None:
        raise outcome[0]
    return True
