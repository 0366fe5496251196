"""Every code snippet of README.md and docs/*.md runs, as a reader would run it.

- ```python blocks run in a fresh process, in a temporary folder of their own (so
  ``sessions.json`` is a new file there); top-level ``await`` runs in an event loop.
- ```sh blocks made only of ``pooled-sessions`` commands run line by line and must exit 0;
  other sh blocks (``make test``) are not run.
- ```console blocks: each ``$ pooled-sessions ...`` command runs and must exit 0, and
  every output line it shows must come out, in order, as far as its label (the text
  before its colon, else its first word): the figures are examples, the lines are not.

A snippet names the addresses a reader would use. `_swaps` replaces them for this test's
own servers and folders, and a snippet that would still reach any other Redis fails
before it runs. A fragment that uses names from its surroundings (a request's ``peer``,
an app's ``session_id``) says so in an HTML comment on the line before its fence,
``<!-- prelude: web, service -->``, naming entries of `PRELUDES`, which run first.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import storekit
from tests.redis_servers import RedisCluster, RedisServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
PRELUDE = re.compile(r"<!--\s*prelude:\s*([\w\-, ]+?)\s*-->\s*$")
REDIS_URL = re.compile(r"\b(?:rediss?|redis\+cluster|unix)://[^\s\"')]*")
COMMAND = [str(Path(sys.executable).with_name("pooled-sessions"))]
TIMEOUT = 120
CLUSTER = "redis+cluster://10.0.0.5:7000"
PRELUDES = {
    "imports": "from pooled_sessions import SessionService\n",
    "service": "from pooled_sessions import SessionService\n"
    'svc = SessionService("sessions.json")\n',
    "web": (  # what a web framework hands the application for one request
        "import secrets\n"
        'peer, headers = "10.0.0.7", {"X-Forwarded-For": "198.51.100.4, 10.0.0.9"}\n'
        'environ = {"REMOTE_ADDR": "10.0.0.7", "HTTP_X_FORWARDED_FOR": "198.51.100.4"}\n'
        'scope = {"client": ("10.0.0.7", 52100), "headers": [(b"x-real-ip", b"198.51.100.4")]}\n'
        'session_id, ip, ua = secrets.token_urlsafe(32), "198.51.100.4", "Firefox/128.0"\n'
        "def alert(event):\n"
        '    print("location changed:", event)\n'
    ),
    "redis-client": 'import redis\nmy_redis = redis.Redis.from_url("redis://127.0.0.1:6379/0")\n',
    "my-store": (  # a third-party store package, for docs/stores.md
        "import pathlib\n"
        'pathlib.Path("my_package").mkdir(exist_ok=True)\n'
        'pathlib.Path("my_package/__init__.py").write_text("")\n'
        'pathlib.Path("my_package/store.py").write_text(\n'
        '    "from pooled_sessions.adapters.memory import MemoryStore\\n"\n'
        '    "class MyStore(MemoryStore):\\n    pass\\n"\n'
        ")\n"
    ),
    "django": (  # a configured Django project and a signed-in user
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(\n"
        '    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],\n'
        '    SESSION_ENGINE="pooled_sessions.integrations.django",\n'
        '    POOLED_SESSIONS={"backend": "sessions.json"},\n'
        ")\n"
        "django.setup()\n"
        "from types import SimpleNamespace\n"
        "user = SimpleNamespace(pk=42)\n"
        "from pooled_sessions.integrations.django import get_service as _service\n"
        '_service().create_session("42", {})\n'
    ),
    "sessions-file": "",  # for commands: a sessions.json with a few sessions is made first
}
RUNNER = """\
import ast, asyncio, sys
path = sys.argv[1]
code = compile(open(path).read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@dataclass(frozen=True)
class Snippet:
    """One fenced block of a document, with the preludes its comment names."""

    path: Path
    line: int
    language: str
    code: str
    preludes: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets() -> Iterator[Snippet]:
    """Every block that this test runs, in document order."""
    for path in DOCS:
        text = path.read_text()
        for fence in FENCE.finditer(text):
            language, code = fence.group(1), fence.group(2)
            if language not in ("python", "sh", "console"):
                continue
            if language == "sh" and not _commands(code):
                continue
            before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
            named = PRELUDE.search(before)
            preludes = tuple(n.strip() for n in named.group(1).split(",")) if named else ()
            yield Snippet(path, text.count("\n", 0, fence.start()) + 1, language, code, preludes)


def _commands(code: str) -> list[list[str]]:
    """The pooled-sessions commands of an sh block (none when it holds any other)."""
    lines = [shlex.split(line, comments=True) for line in code.splitlines()]
    lines = [words for words in lines if words]
    return lines if all(words[0] == "pooled-sessions" for words in lines) else []


SNIPPETS = list(snippets())


@pytest.fixture(scope="module")
def docs_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of these tests alone, on a port and a unix socket."""
    directory = tmp_path_factory.mktemp("docs-redis")
    server = RedisServer(directory, "--unixsocket", str(directory / "redis.sock"))
    yield server.start()
    server.stop()


def _swaps(
    server: RedisServer | None, cluster: RedisCluster | None, folder: Path
) -> dict[str, str]:
    """Addresses the documents use, and what this test runs instead."""
    swaps = {"/var/lib/app/": f"{folder}/"}
    if server is not None:
        base = f"redis://127.0.0.1:{server.port}"
        swaps["redis://127.0.0.1:6379"] = base
        swaps["redis://cache:6379"] = base
        swaps["rediss://:secret@redis.example:6380"] = base  # no TLS here; the options still run
        swaps["unix:///run/redis.sock"] = f"unix://{server.directory / 'redis.sock'}"
    if cluster is not None:
        swaps["redis+cluster://10.0.0.5:7000"] = cluster.url
    return swaps


def _prepared(snippet: Snippet, swaps: dict[str, str]) -> str:
    """The snippet's preludes and code, its addresses swapped; refuses any other Redis."""
    text = "".join(PRELUDES[name] for name in snippet.preludes) + snippet.code
    for old, new in swaps.items():
        text = text.replace(old, new)
    ours = tuple(new for new in swaps.values() if "://" in new)
    urls = [url for url in REDIS_URL.findall(text) if not url.endswith("://...")]  # placeholders
    strays = [url for url in urls if not url.startswith(ours)]
    assert not strays, f"{snippet.name}: add {strays} to _swaps, or it reaches another Redis"
    return text


def _param(snippet: Snippet) -> object:
    """The snippet as a test case, marked with the servers it needs."""
    text = snippet.code + "".join(PRELUDES.get(name, "") for name in snippet.preludes)
    marks = [pytest.mark.redis] if REDIS_URL.search(text) else []
    marks += [pytest.mark.cluster] if CLUSTER in text else []
    return pytest.param(snippet, id=snippet.name, marks=marks)


def test_every_python_block_is_found() -> None:
    fences = sum(path.read_text().count("\n```python\n") for path in DOCS)
    assert fences >= 10 and fences == sum(s.language == "python" for s in SNIPPETS)


@pytest.mark.parametrize("snippet", [_param(snippet) for snippet in SNIPPETS])
def test_snippet_runs(snippet: Snippet, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    assert all(name in PRELUDES for name in snippet.preludes), snippet.preludes
    marks = {mark.name for mark in request.node.iter_markers()}
    server = request.getfixturevalue("docs_redis") if "redis" in marks else None
    cluster = request.getfixturevalue("redis_cluster") if "cluster" in marks else None
    text = _prepared(snippet, _swaps(server, cluster, tmp_path))
    if "sessions-file" in snippet.preludes:
        storekit.seed(str(tmp_path / "sessions.json"), storekit.sample(12))
    if snippet.language == "python":
        _run_python(snippet, text, tmp_path)
    elif snippet.language == "sh":
        for words in _commands(text):
            _run_command(snippet, words, tmp_path)
    else:
        _run_console(snippet, text, tmp_path)


def _run_python(snippet: Snippet, text: str, folder: Path) -> None:
    script = folder / f"snippet_{snippet.path.stem}_{snippet.line}.py"
    script.write_text(text)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(script)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{snippet.name} failed:\n{text}\n{done.stderr[-3000:]}"


def _run_command(snippet: Snippet, words: list[str], folder: Path) -> str:
    done = subprocess.run(
        [*COMMAND, *words[1:]],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    shown = shlex.join(words)
    assert done.returncode == 0, f"{snippet.name}: {shown} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def _run_console(snippet: Snippet, text: str, folder: Path) -> None:
    """Each ``$`` command runs; the labels of the lines shown come out in that order."""
    for block in re.split(r"^\$ ", text, flags=re.M)[1:]:
        command, *shown = block.rstrip("\n").split("\n")
        out = _run_command(snippet, shlex.split(command, comments=True), folder)
        labels = iter(_label(line) for line in out.splitlines())
        for line in filter(str.strip, shown):
            assert _label(line) in labels, f"{snippet.name}: no {line!r} in:\n{out}"


def _label(line: str) -> str:
    """What a line is about: the text before its colon, else its first word."""
    return line.split(":", 1)[0].strip() if ":" in line else line.split(maxsplit=1)[0]


def test_the_test_table_names_every_test_module() -> None:
    """docs/testing.md is the map of the suite: a module missing from it is a test nobody finds."""
    table = (ROOT / "docs" / "testing.md").read_text()
    named = set(re.findall(r"`(?:tests/)?(\w+\.py)`", table))
    modules = {path.name for path in (ROOT / "tests").glob("*.py")} - {"__init__.py"}
    assert modules - named == set(), "add these to the table in docs/testing.md"
