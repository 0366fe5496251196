"""Sessions for web frameworks: Flask, Starlette (and FastAPI) and Django.

Each module adapts one framework; what a request does with its session is decided once,
in `request_state`. Import the framework's module directly: nothing here imports a
framework, so the core needs none installed.
"""

from __future__ import annotations

from pooled_sessions.errors import MissingDependencyError


def missing(framework: str, extra: str) -> MissingDependencyError:
    """The error a framework's module raises when the framework is not installed."""
    return MissingDependencyError(
        f'the {framework} integration needs {framework}: pip install "pooled-sessions[{extra}]"'
    )
