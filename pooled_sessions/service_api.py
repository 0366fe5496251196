"""How both services present what is written once: the public operations and ``exclusive``.

A public operation is written once, in `ServiceBase`, as a flow; `Published` makes it a
method of each service, presented the service's way (`SessionService`: a method that
drives the flow in the caller's thread; `AsyncSessionService`: a coroutine method that
drives it on the loop), with the flow's name, docstring and parameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from types import MethodType, TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from pooled_sessions.engine.requests import Flow

if TYPE_CHECKING:
    from pooled_sessions.service import SessionService
    from pooled_sessions.service_async import AsyncSessionService

P = ParamSpec("P")
T = TypeVar("T")
Build = Callable[Concatenate[Any, P], Flow[T]]
Cached = Callable[Concatenate[Any, bool, P], T | None]
"""A fast path: the service, whether the store was just asked for other processes' writes
(`Engine.polled`), then the call's arguments; None when the flow is needed."""


class Published(Generic[P, T]):
    """A public operation of both services, written once as a flow (a decorator).

    ``reads``: a read of the cache, before which a blocking service applies the Redis
    events it has already received. ``cached``, if given, answers first without a flow
    (None: the flow is needed): the fast path of the most common call. Each service class
    builds its method once (``_publish``); an instance keeps it bound, so a call costs what
    a method call does.
    """

    def __init__(
        self, build: Build[P, T], cached: Cached[P, T] | None = None, *, reads: bool = False
    ) -> None:
        self._build, self._cached, self.reads = build, cached, reads
        self._name = build.__name__
        self._methods: dict[type[Any], Callable[..., Any]] = {}

    @classmethod
    def read(cls, build: Build[P, T]) -> Published[P, T]:
        """`Published` for a read of the cache (a decorator)."""
        return cls(build, reads=True)

    @classmethod
    def with_fast_path(cls, cached: Cached[P, T]) -> Callable[[Build[P, T]], Published[P, T]]:
        """`Published` for a read of the cache with ``cached`` as its fast path (a
        decorator)."""
        return lambda build: cls(build, cached, reads=True)

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Callable[..., Any]: ...

    @overload
    def __get__(self, obj: SessionService, owner: type[Any]) -> Callable[P, T]: ...

    @overload
    def __get__(
        self, obj: AsyncSessionService, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, obj: Any, owner: type[Any]) -> Any:
        method = self._methods.get(owner)
        if method is None:
            method = self._methods[owner] = presented(
                owner._publish(self._build, self._cached, self.reads), self._build
            )
        if obj is None:
            return method
        bound = MethodType(method, obj)
        obj.__dict__[self._name] = bound  # later calls find it at once
        return bound


def presented(method: Callable[..., Any], build: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a service's method driving ``build``'s flow) with ``build``'s name,
    docstring and parameters, and the result of the flow as what it returns."""
    functools.update_wrapper(method, build)
    result = str(build.__annotations__["return"]).removeprefix("Flow[").removesuffix("]")
    method.__annotations__ = {**build.__annotations__, "return": result}
    signature = inspect.signature(build).replace(return_annotation=result)
    method.__signature__ = signature  # type: ignore[attr-defined]
    return method


class UserHold:
    """What `exclusive` holds: the store's lock on one user across app servers, and the
    write of the changes made inside before the lock goes, so the next holder sees them.

    Entered with ``with`` on a blocking store's lock, ``async with`` on an asyncio one's.
    """

    def __init__(self, lock: Any, save: Callable[[], Any]) -> None:
        self._lock, self._save = lock, save

    def __enter__(self) -> None:
        self._lock.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self._save()
        finally:
            self._lock.__exit__(kind, exc, tb)

    async def __aenter__(self) -> None:
        await self._lock.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                await self._save()
        finally:
            await self._lock.__aexit__(kind, exc, tb)
