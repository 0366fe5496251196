"""The engine: every session decision, and nothing else.

The rule of this package: everything that decides (what is dirty, when to flush, what
expired, what the pool allows, what a login does to a user's other sessions) lives here,
and nothing here does I/O, starts a thread, touches asyncio or imports a store client.
An operation is a flow: a generator that yields a request (`requests`) when it needs the
store or the driver's patience, and says itself what must follow it (a wake-up of the
flusher, or a write-through flush); `SessionService` and `AsyncSessionService` answer it.
`tests/test_layout.py` walks the imports of every module here and enforces the rule.
"""

from __future__ import annotations

from pooled_sessions.engine.engine import Engine

__all__ = ["Engine"]
