"""Backends of the conformance suite served by `AsyncSessionService` (a pytest plugin).

`SyncFacade` presents the asyncio service through the synchronous API the suite calls:
each call runs the coroutine on an event loop in a background thread (one loop per test,
shared by every service the test builds, as the services of one asyncio app would be).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from pooled_sessions import AsyncSessionService
from tests.backends import ServiceAPI, ServiceFactory

T = TypeVar("T")
CALL_SECONDS = 60.0


class LoopThread:
    """An event loop running in a daemon thread until `close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="aio-facade", daemon=True
        )
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


async def _awaited(step: Awaitable[T]) -> T:
    return await step


class SyncFacade:
    """The blocking `ServiceAPI` over an `AsyncSessionService` run on a `LoopThread`: every
    method runs the service's coroutine of that name and waits for it."""

    def __init__(self, runner: LoopThread, url: str, settings: dict[str, Any]) -> None:
        self._runner = runner
        self.service = runner.run(_build(url, settings))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.service, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(method(*args, **kwargs))

        return call

    @contextlib.contextmanager
    def exclusive(self, username: str, timeout: float = 5.0) -> Iterator[None]:
        """The service's ``async with exclusive(...)``, entered and left on the loop."""
        held = self.service.exclusive(username, timeout)
        self._runner.run(_awaited(held.__aenter__()))
        try:
            yield
        except BaseException as exc:
            if not self._runner.run(_awaited(held.__aexit__(type(exc), exc, exc.__traceback__))):
                raise
        else:
            self._runner.run(_awaited(held.__aexit__(None, None, None)))

    def __enter__(self) -> SyncFacade:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._runner.run(self.service.shutdown())


def _factory(runner: LoopThread, url: Callable[[], str]) -> ServiceFactory:
    def build(**settings: Any) -> ServiceAPI:
        return cast(ServiceAPI, SyncFacade(runner, url(), settings))

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
