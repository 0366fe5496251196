"""The start-up check of a Redis store: one round trip that proves it takes our writes.

One ``EVAL`` of a script that sets a key under the store's prefix for a second: it
connects, authenticates, selects the database, and proves that scripts run and that this
user may write under the prefix on a primary (not a read-only replica), as every flush
must. The key is ``{prefix}:c:{<origin>}``, gone a second later.
"""

from __future__ import annotations

from typing import Any

from pooled_sessions.adapters.redis.keys import KeySchema
from pooled_sessions.adapters.redis.plan import Step

PROBE_TTL_MS = 1000
SCRIPT = "return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])"


def key(keys: KeySchema, origin: str) -> str:
    """The key the check writes: under the prefix, tagged with the store's origin token."""
    return f"{keys.prefix}:c:{{{origin}}}"


def check(keys: KeySchema, origin: str) -> Step[None]:
    """The check, as a plan: one pipeline of one script call; raises the server's error."""
    (reply,) = yield [("EVAL", SCRIPT, 1, key(keys, origin), origin, PROBE_TTL_MS)]
    if isinstance(reply, Exception):
        raise reply


def reason(error: BaseException, text: str, errors: Any) -> str:
    """Why the check failed, in words; ``text`` is the error's text without credentials."""
    upper = text.upper()
    if isinstance(error, errors.AuthenticationError) or any(
        word in upper for word in ("WRONGPASS", "NOAUTH", "AUTH ")
    ):
        return f"authentication failed (the user or password in the URL): {text}"
    if isinstance(error, errors.ReadOnlyError) or upper.startswith("READONLY"):
        return f"it is a read-only replica; point the URL at the primary: {text}"
    if isinstance(error, errors.NoPermissionError) or "NOPERM" in upper:
        return f"this user may not write under the key prefix or run scripts: {text}"
    if "DB INDEX" in upper:
        return f"no such database: {text}"
    if isinstance(error, errors.ConnectionError | errors.TimeoutError | OSError):
        return f"unreachable: {text}"
    return f"{type(error).__name__}: {text}"
