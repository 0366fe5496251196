"""Sessions for web frameworks: Flask, Starlette (and FastAPI) and Django.

Each module adapts one framework; what a request does with its session is decided once,
in `request_state`. Import the framework's module directly: nothing here imports a
framework, so the core needs none installed.
"""

from __future__ import annotations

from pooled_sessions.errors import MissingDependencyError


def missing(framework: str, extra: str, package: str | None = None) -> MissingDependencyError:
    """The error a module here raises when the package it adapts (``package``, by default
    ``framework``) is not installed."""
    needed = package or framework
    return MissingDependencyError(
        f'the {framework} integration needs {needed}: pip install "pooled-sessions[{extra}]"'
    )
