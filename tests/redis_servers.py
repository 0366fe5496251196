"""Real redis-server processes for the tests: a single server and a 3-master cluster.

A pytest plugin (listed in tests/conftest.py). Servers run on free ports in temporary
directories, with no persistence unless a test asks for it, and never touch a Redis
the machine already runs. Without redis-server on PATH the tests skip, except under CI
(``CI=true``), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

START_SECONDS = 10.0


def binary(name: str) -> str:
    """The path of a Redis program, or skip (locally) / fail (under CI) without it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port(bus: bool = False) -> int:
    """A TCP port free now (and, for a cluster node, its bus port at +10000)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not bus:
            return port
        if port < 55000 and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # up, with a password
    except OSError:
        return False


class RedisServer:
    """One redis-server process; it can be stopped and started again on the same port."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port(bus="--cluster-enabled" in extra)
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            binary("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--protected-mode",
            "no",
            *self.extra,
        ]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server on {self.port} did not start: "
                    f"{(self.directory / 'redis.log').read_text()[-2000:]}"
                )
            time.sleep(0.02)
        return self

    def stop(self, kill: bool = True) -> None:
        """Stop the server: SIGKILL (a crash) or SIGTERM (a clean shutdown)."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        """Run a redis-cli command against this server; its output."""
        extra = list(self.extra)
        auth: list[str] = []
        if "--requirepass" in extra:  # a server of a test that needs a password
            auth = ["--no-auth-warning", "-a", extra[extra.index("--requirepass") + 1]]
        done = subprocess.run(
            [binary("redis-cli"), "-p", str(self.port), *auth, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout


def commands_called(server: RedisServer) -> dict[str, int]:
    """Calls per command from INFO commandstats (scripts' inner calls included)."""
    calls: dict[str, int] = {}
    for line in server.cli("info", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            calls[name] = int(rest.split(",")[0].split("=")[1])
    return calls


class RedisCluster:
    """Three cluster-enabled masters joined with ``redis-cli --cluster create``."""

    def __init__(self, directory: Path) -> None:
        self.nodes = [
            RedisServer(
                directory / f"node{n}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "3000",
                "--appendonly",
                "no",
            )
            for n in range(3)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in node.cli("cluster", "info") for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def unique_prefix() -> str:
    """A key prefix of one test, so tests sharing a server never meet."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run (tests isolate themselves by key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster for the whole run."""
    binary("redis-cli")
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL with a key prefix of this test."""
    return f"{redis_server.url}?prefix={unique_prefix()}"


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """The cluster's URL with a key prefix of this test."""
    return f"{redis_cluster.url}?prefix={unique_prefix()}"


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
    ]
)
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """This test's URL on the shared redis-server, then on the shared cluster."""
    value: str = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    return value


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test alone, with an fsync'd append-only file, to crash and restart."""
    server = RedisServer(tmp_path / "durable", "--appendonly", "yes", "--appendfsync", "always")
    yield server.start()
    server.stop()


def _factory(url: str) -> Callable[..., Any]:
    from pooled_sessions import SessionService

    def build(**settings: Any) -> Any:
        return SessionService(url, **settings)

    return build


@pytest.fixture
def backend_redis(redis_url: str) -> Callable[..., Any]:
    """Services on the shared redis-server, under this test's key prefix."""
    return _factory(redis_url)


@pytest.fixture
def backend_cluster(cluster_url: str) -> Callable[..., Any]:
    """Services on the shared Redis Cluster, under this test's key prefix."""
    return _factory(cluster_url)
