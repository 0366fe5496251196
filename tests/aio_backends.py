"""Backends of the conformance suite served by `AsyncSessionService` (a pytest plugin).

`SyncFacade` presents the asyncio service through the synchronous API the suite calls:
each call runs the coroutine on an event loop in a background thread (one loop per test,
shared by every service the test builds, as the services of one asyncio app would be).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest

from pooled_sessions import AsyncSessionService, Session, ShutdownReport, ValidationResult
from tests.backends import ClientLike, ServiceAPI, ServiceFactory

T = TypeVar("T")
CALL_SECONDS = 60.0


class LoopThread:
    """An event loop running in a daemon thread until `close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aio-facade",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (or its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_SECONDS)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CALL_SECONDS)
        self.loop.close()


async def _build(url: str, settings: dict[str, Any]) -> AsyncSessionService:
    return AsyncSessionService(url, **settings)


class SyncFacade:
    """The blocking `ServiceAPI` over an `AsyncSessionService` run on a `LoopThread`."""

    def __init__(self, runner: LoopThread, url: str, settings: dict[str, Any]) -> None:
        self._run = runner.run
        self.service = runner.run(_build(url, settings))

    def create_session(
        self,
        username: str,
        attributes: Mapping[str, Any] | None = None,
        client_info: ClientLike = None,
        *,
        session_id: str | None = None,
    ) -> str:
        coro = self.service.create_session(username, attributes, client_info,
                                           session_id=session_id)
        return self._run(coro)

    def validate_session(self, session_id: str, client_info: ClientLike = None
                         ) -> ValidationResult:
        return self._run(self.service.validate_session(session_id, client_info))

    def update_session(
        self, session_id: str, attributes: Mapping[str, Any], *, remove: Collection[str] = ()
    ) -> bool:
        return self._run(self.service.update_session(session_id, attributes, remove=remove))

    def get_session(self, session_id: str) -> Session | None:
        return self._run(self.service.get_session(session_id))

    def rotate_session(self, session_id: str) -> str | None:
        return self._run(self.service.rotate_session(session_id))

    def sessions_of(self, username: str) -> list[str]:
        return self._run(self.service.sessions_of(username))

    def end_session(self, session_id: str) -> bool:
        return self._run(self.service.end_session(session_id))

    def force_save(self) -> int:
        return self._run(self.service.force_save())

    def stats(self) -> dict[str, Any]:
        return self._run(self.service.stats())

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        return self._run(self.service.shutdown(timeout))

    def __enter__(self) -> SyncFacade:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


def _factory(runner: LoopThread, url: Callable[[], str]) -> ServiceFactory:
    def build(**settings: Any) -> ServiceAPI:
        return SyncFacade(runner, url(), settings)

    return build


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """An event loop in a thread of its own, closed after the test's services."""
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture
def backend_aiofile(tmp_path: Path, loop_thread: LoopThread) -> ServiceFactory:
    """Asyncio services on one aiofile:// JSON file in this test's temporary directory."""
    url = f"aiofile://{tmp_path / 'sessions.json'}"
    return _factory(loop_thread, lambda: url)


@pytest.fixture(name="backend_async-memory")
def backend_async_memory(loop_thread: LoopThread) -> ServiceFactory:
    """Asyncio services on one ``memory://NAME`` table, private to this test."""
    url = f"memory://t{uuid.uuid4().hex}"
    return _factory(loop_thread, lambda: url)


@pytest.fixture(name="backend_async-redis")
def backend_async_redis(redis_url: str, loop_thread: LoopThread) -> ServiceFactory:
    """Asyncio services on the shared redis-server, under this test's key prefix."""
    return _factory(loop_thread, lambda: redis_url)
