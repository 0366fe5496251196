"""A small shop on Flask with pooled_sessions: a cart before login, login, logout.

    pip install "pooled-sessions[flask]"
    SESSIONS_BACKEND=redis://127.0.0.1:6379/0 flask --app examples/flask_app.py run
    # or: gunicorn -w 4 examples.flask_app:app

The store is $SESSIONS_BACKEND (a JSON file, sessions.json, by default).
"""

from __future__ import annotations

import os
from typing import Any

import flask

from pooled_sessions.integrations.flask import PooledSessions, login, logout

app = flask.Flask(__name__)
PooledSessions(app, backend=os.environ.get("SESSIONS_BACKEND", "sessions.json"))


@app.get("/")
def cart() -> dict[str, Any]:
    """The visitor's cart (a visitor who never adds anything gets no cookie)."""
    return {"cart": flask.session.get("cart", []), "pid": os.getpid()}


@app.post("/cart/<int:item>")
def add(item: int) -> dict[str, Any]:
    """Add an item; a change made in place is saved when the response is built."""
    flask.session.setdefault("cart", []).append(item)
    return cart()


@app.post("/login/<name>")
def sign_in(name: str) -> dict[str, Any]:
    """Log in: the session keeps its cart under a new id (a real app checks a password)."""
    login(name)
    return cart()


@app.post("/logout")
def sign_out() -> dict[str, Any]:
    """End the session on every worker and app server."""
    logout()
    return cart()


if __name__ == "__main__":
    app.run()
