"""The tree keeps its shape: the engine decides and does no I/O; stores sit under adapters/."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pooled_sessions
import pooled_sessions.engine

PACKAGE = Path(pooled_sessions.__file__).parent
# What the engine, and everything it imports from this package, may never import.
IO_MODULES = {
    "aiofiles",
    "asyncio",
    "concurrent",
    "fcntl",
    "io",
    "mmap",
    "multiprocessing",
    "pathlib",
    "redis",
    "selectors",
    "shutil",
    "socket",
    "ssl",
    "subprocess",
    "tempfile",
    "threading",
}
# The engine's own modules may not reach the OS at all (config may read the environment).
ENGINE_ONLY = IO_MODULES | {"os", "sys", "glob", "logging"}


def _scan(source: str, where: str) -> tuple[set[str], bool]:
    """Modules a source imports (absolute names, submodules included) and whether it calls
    ``open()``."""
    found: set[str] = set()
    opens = False
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None, f"{where}: relative import"
            found.add(node.module)
            if node.module.startswith("pooled_sessions"):
                subs = (f"{node.module}.{alias.name}" for alias in node.names)
                found.update(name for name in subs if _is_module(name))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            opens = opens or node.func.id == "open"
    return found, opens


def _imports(module: str) -> tuple[set[str], bool]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return _scan(Path(spec.origin).read_text(), spec.origin)


def _violations(module: str, imported: set[str]) -> set[str]:
    forbidden = ENGINE_ONLY if module.startswith("pooled_sessions.engine") else IO_MODULES
    return {name for name in imported if name.split(".")[0] in forbidden}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _engine_modules() -> list[str]:
    prefix = pooled_sessions.engine.__name__ + "."
    found = [pooled_sessions.engine.__name__]
    found += [m.name for m in pkgutil.iter_modules(pooled_sessions.engine.__path__, prefix)]
    return found


def test_the_engine_imports_no_io_threads_or_asyncio() -> None:
    seen: set[str] = set()
    todo = _engine_modules()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        imported, opens = _imports(module)
        bad = _violations(module, imported)
        assert not bad, f"{module} (reached from the engine) imports {sorted(bad)}"
        assert not opens, f"{module} (reached from the engine) calls open()"
        todo += [name for name in imported if name.startswith("pooled_sessions.")]
    assert len([m for m in seen if m.startswith("pooled_sessions.engine.")]) >= 6


def test_the_walk_catches_io_threads_and_open() -> None:
    source = "import threading\nfrom os import path\nfrom pooled_sessions import config\n"
    source += "open('x')\n"
    imported, opens = _scan(source, "leaky.py")
    assert opens
    assert "pooled_sessions.config" in imported
    assert _violations("pooled_sessions.engine.leaky", imported) == {"threading", "os"}
    assert _violations("pooled_sessions.config", imported) == {"threading"}


def test_every_store_lives_under_adapters() -> None:
    top = {m.name for m in pkgutil.iter_modules([str(PACKAGE)])}
    assert not {name for name in top if "redis" in name or "file" in name or "store" in name}
    assert {"engine", "adapters", "tools", "service", "service_async"} <= top


def test_the_redis_stores_import_redis_only_when_opened() -> None:
    modules = ", ".join(
        f"pooled_sessions.adapters.redis{name}" for name in ("", ".store", ".store_async")
    )
    code = f"import sys, {modules}\nprint([m for m in sys.modules if m.split('.')[0] == 'redis'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


def test_records_of_many_fields_are_built_by_keyword() -> None:
    """A long positional list swaps two floats or two ids silently; these take keywords only."""
    from pooled_sessions import (
        LocationEvent,
        LoginPolicy,
        LoginResult,
        PoolLimits,
        PoolStats,
        Session,
        SessionPoolConfig,
        Settings,
    )
    from pooled_sessions.adapters.redis.options import RedisOptions
    from pooled_sessions.adapters.url import StoreURL
    from pooled_sessions.codec import Upsert
    from pooled_sessions.engine.entry import Entry
    from pooled_sessions.engine.pending import Dirty, FlushStats
    from pooled_sessions.tools.inspect import Inventory
    from pooled_sessions.tools.verify import Verification

    records: list[type] = [
        Dirty,
        Entry,
        FlushStats,
        Inventory,
        LocationEvent,
        LoginPolicy,
        LoginResult,
        PoolLimits,
        PoolStats,
        RedisOptions,
        Session,
        SessionPoolConfig,
        Settings,
        StoreURL,
        Upsert,
        Verification,
    ]
    for record in records:
        kinds = {p.kind for p in inspect.signature(record).parameters.values()}
        assert kinds == {inspect.Parameter.KEYWORD_ONLY}, record.__name__
