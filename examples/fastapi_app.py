"""A small shop on FastAPI with pooled_sessions: a cart before login, login, logout.

    pip install "pooled-sessions[starlette]" fastapi uvicorn
    SESSIONS_BACKEND=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_app:app --workers 2

The store is $SESSIONS_BACKEND (``aiofile://``-backed sessions.json by default).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Request

from pooled_sessions.integrations.starlette import SessionMiddleware, login, logout

app = FastAPI()
app.add_middleware(
    SessionMiddleware, backend=os.environ.get("SESSIONS_BACKEND", "sessions.json"), max_age=1800
)


@app.get("/")
async def cart(request: Request) -> dict[str, Any]:
    """The visitor's cart (a visitor who never adds anything gets no cookie)."""
    return {"cart": request.session.get("cart", []), "pid": os.getpid()}


@app.post("/cart/{item}")
async def add(item: int, request: Request) -> dict[str, Any]:
    """Add an item; a change made in place is saved when the response starts."""
    request.session.setdefault("cart", []).append(item)
    return await cart(request)


@app.post("/login/{name}")
async def sign_in(name: str, request: Request) -> dict[str, Any]:
    """Log in: the session keeps its cart under a new id (a real app checks a password)."""
    await login(request, name)
    return await cart(request)


@app.post("/logout")
async def sign_out(request: Request) -> dict[str, Any]:
    """End the session on every worker and app server."""
    await logout(request)
    return await cart(request)
