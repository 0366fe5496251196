"""Flows of service calls, and the two drivers that run them.

Logic above the service (the manager's login policy, a web request's session) is written
once as a generator yielding `Call`s; `drive` runs it on a `SessionService`, `adrive` on
an `AsyncSessionService`. A call's exception is thrown back into the flow, so the flow
decides what a failure means.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Call(NamedTuple):
    """One service method call a flow needs: ``service.<method>(*args, **kwargs)``."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = {}


Flow = Generator[Call, Any, T]


def drive(service: Any, flow: Flow[T]) -> T:
    """Run ``flow`` on a blocking service (`adrive` is its twin, with ``await``)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            reply, error = getattr(service, call.method)(*call.args, **call.kwargs), None
        except Exception as exc:
            reply, error = None, exc


async def adrive(service: Any, flow: Flow[T]) -> T:
    """Run ``flow`` on an asyncio service."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            reply, error = await getattr(service, call.method)(*call.args, **call.kwargs), None
        except Exception as exc:
            reply, error = None, exc
