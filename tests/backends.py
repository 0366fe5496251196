"""Backends every service-level suite runs on: a pytest plugin (loaded by tests/conftest.py).

A test asks for ``make_service`` (and ``make_peer``) and runs once per entry of
`BACKENDS`. Each entry ``name`` is served by a fixture ``backend_<name>`` that returns a
`ServiceFactory`: a callable building a service on *this test's* store, so every service
one factory builds shares the store (a second process or app server). To add a backend,
append ``pytest.param("<name>", id="<name>", marks=...)`` to `BACKENDS` and define a
fixture ``backend_<name>`` (here or in a plugin module listed in tests/conftest.py).

A test can narrow the list with ``@pytest.mark.backends("file", "redis")``.
Services built through ``make_service`` / ``make_peer`` are shut down at teardown.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import pytest

from pooled_sessions import Session, ShutdownReport, ValidationResult

ClientLike = Any


class ServiceAPI(Protocol):
    """The synchronous public API of a session service (or a facade over an async one)."""

    def create_session(
        self,
        username: str | None,
        attributes: Mapping[str, Any] | None = None,
        client_info: ClientLike = None,
        *,
        session_id: str | None = None,
    ) -> str: ...

    def validate_session(
        self, session_id: str, client_info: ClientLike = None
    ) -> ValidationResult: ...

    def update_session(
        self, session_id: str, attributes: Mapping[str, Any], *, remove: Collection[str] = ()
    ) -> bool: ...

    def get_session(self, session_id: str) -> Session | None: ...

    def rotate_session(
        self,
        session_id: str,
        *,
        username: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        remove: Collection[str] = (),
    ) -> str | None: ...

    def sessions_of(self, username: str) -> list[str]: ...

    def end_session(self, session_id: str) -> bool: ...

    def force_save(self) -> int: ...

    def stats(self) -> dict[str, Any]: ...

    def shutdown(self, timeout: float | None = None) -> ShutdownReport: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any: ...


ServiceFactory = Callable[..., ServiceAPI]
"""Build a service on the test's store; keyword arguments are `Settings` fields."""

BACKENDS: list[Any] = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
    # AsyncSessionService behind a synchronous facade (tests/aio_backends.py)
    pytest.param("aiofile", id="aiofile"),
    pytest.param("async-memory", id="async-memory"),
    pytest.param("async-redis", id="async-redis", marks=pytest.mark.redis),
]
TEARDOWN_SHUTDOWN_SECONDS = 2.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run a make_service test only on these backends"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that (indirectly) uses ``backend_name`` over `BACKENDS`."""
    if "backend_name" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    params = BACKENDS
    if marker is not None:
        wanted = set(marker.args)
        params = [p for p in BACKENDS if p.values[0] in wanted]
        if not params:
            raise pytest.UsageError(f"{metafunc.function.__name__}: no backend in {wanted}")
    metafunc.parametrize("backend_name", params, scope="function")


@pytest.fixture
def backend_memory() -> ServiceFactory:
    """Services on one ``memory://NAME`` table, private to this test."""
    from pooled_sessions import SessionService

    url = f"memory://t{uuid.uuid4().hex}"

    def build(**settings: Any) -> ServiceAPI:
        return SessionService(url, **settings)

    return build


@pytest.fixture
def backend_file(tmp_path: Path) -> ServiceFactory:
    """Services on one JSON file in this test's temporary directory."""
    from pooled_sessions import SessionService

    path = tmp_path / "sessions.json"

    def build(**settings: Any) -> ServiceAPI:
        return SessionService(path, **settings)

    return build


@pytest.fixture
def backend(backend_name: str, request: pytest.FixtureRequest) -> ServiceFactory:
    """The factory of the backend this test instance runs on."""
    factory: ServiceFactory = request.getfixturevalue(f"backend_{backend_name}")
    return factory


@pytest.fixture
def make_service(backend: ServiceFactory) -> Iterator[ServiceFactory]:
    """Build services on this test's store; all are shut down at teardown."""
    built: list[ServiceAPI] = []

    def make(**settings: Any) -> ServiceAPI:
        service = backend(**settings)
        built.append(service)
        return service

    yield make
    for service in reversed(built):
        service.shutdown(timeout=TEARDOWN_SHUTDOWN_SECONDS)


@pytest.fixture
def make_peer(make_service: ServiceFactory) -> ServiceFactory:
    """Another service on the same store as ``make_service``'s (a second app server)."""
    return make_service
