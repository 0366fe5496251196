"""The web integrations under real servers started here on free ports: Flask under
``gunicorn -w 4`` (also with ``--preload``, the service forked live from the master) and
FastAPI under ``uvicorn --workers 2``, on the JSON file and on Redis, driven over HTTP
with a new connection per request, so the workers share every visitor's requests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.redis_servers import free_port
from tests.webkit import Browser, Send, Store, environment, http_send

ROOT = Path(__file__).resolve().parents[1]
READY_SECONDS = 20.0
CART = 12
REPLAYS = 10
MOST = 200
"""Requests at most until two workers have served a step (the kernel picks each one)."""
SERVERS = {  # kind: (workers, arguments)
    "gunicorn": (4, ["-m", "gunicorn", "-w", "4", "tests.webapps:flask_app()"]),
    "gunicorn-preload": (
        4,
        ["-m", "gunicorn", "-w", "4", "--preload", "tests.webapps:flask_app()"],
    ),
    "uvicorn": (2, ["-m", "uvicorn", "--workers", "2", "--factory", "tests.webapps:fastapi_app"]),
}


@contextmanager
def serving(kind: str, web_store: Store, folder: Path) -> Iterator[Send]:
    """Run the shop under ``kind`` until the block ends; fails on any traceback it logged."""
    port = free_port()
    where = ["--bind", f"127.0.0.1:{port}"] if kind.startswith("gunicorn") else []
    where = where or ["--host", "127.0.0.1", "--port", str(port)]
    env = environment(WEB_BACKEND=web_store.url, WEB_WARM="1" if kind.endswith("preload") else "0")
    log = folder / f"{kind}.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, *SERVERS[kind][1], *where],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        send = http_send(port)
        _wait_ready(send, server, log, SERVERS[kind][0])
        yield send
    finally:
        _stop(server)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Exception" not in text, text[-4000:]


def _wait_ready(send: Send, server: subprocess.Popen[bytes], log: Path, workers: int) -> None:
    """Until every worker has answered (each request a new connection), so all serve."""
    deadline = time.monotonic() + READY_SECONDS
    answered: set[int] = set()
    while True:
        try:
            answered.add(send("GET", "/ping", None).body["pid"])
            if len(answered) == workers:
                return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (master and workers), SIGKILL if it lingers."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(5)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("kind", list(SERVERS))
def test_every_worker_agrees_on_every_visitors_session(
    kind: str, web_store: Store, tmp_path: Path
) -> None:
    with serving(kind, web_store, tmp_path) as send:
        stranger = Browser(send)
        for _ in range(4):
            reply = stranger.get()
            assert reply.set_cookies == [] and reply.body["cart"] is None
        assert web_store.session_count() == 0, "a visitor who stores nothing stores nothing"

        forged = "forged-" + "x" * 40
        intruder = Browser(send, forged)
        assert intruder.get().body["user"] is None and intruder.cookie is None
        intruder.cookie = forged
        intruder.post("/cart/9")
        assert intruder.cookie not in (None, forged), "a forged id is never adopted"

        shopper = Browser(send)
        writers: set[int] = set()
        item = 0
        while item < CART or len(writers) < 2:  # on whichever worker accepts each request
            assert item < MOST, f"every cart change went to one worker: {writers}"
            changed = shopper.post(f"/cart/{item}").body
            assert changed["cart"] == list(range(item + 1)), f"a change was lost at {item}"
            writers.add(changed["pid"])
            assert shopper.get().body["cart"] == list(range(item + 1))
            item += 1
        cart = list(range(item))
        anonymous = shopper.cookie

        shopper.post("/login/alice")
        first = shopper.cookie
        assert first not in (None, anonymous), "a login rotates the id"
        for _ in range(REPLAYS):
            read = shopper.get().body
            assert (read["user"], read["cart"]) == ("alice", cart)
            assert Browser(send, anonymous).get().body["user"] is None

        shopper.post("/login/alice")
        second = shopper.cookie
        assert second not in (None, first), "a second login rotates again"
        shopper.post("/logout")
        assert shopper.cookie is None
        refusing = Browser(send)
        for replay in range(MOST):
            refusing.cookie = (first, second)[replay % 2]
            assert refusing.get().body["user"] is None, "every worker refuses a logged-out id"
            if replay >= REPLAYS and len(refusing.pids) >= 2:
                break
        assert len(refusing.pids) >= 2, f"one worker refused every ended id: {refusing.pids}"
