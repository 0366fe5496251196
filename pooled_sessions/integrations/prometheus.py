"""A Prometheus collector over a service's `stats()`:
``REGISTRY.register(SessionCollector(service))``.

Each scrape reads the counters once; the metrics carry the store's URL (without its
password) as the ``store`` label, so one collector can show several services. An
`AsyncSessionService` is read on its own event loop, which the scrape never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pooled_sessions.integrations import missing
from pooled_sessions.service import SessionService
from pooled_sessions.service_async import AsyncSessionService

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise missing("Prometheus", "prometheus", "prometheus-client") from exc

__all__ = ["SessionCollector"]

AnyService = SessionService | AsyncSessionService

PREFIX = "pooled_sessions_"
READ_TIMEOUT_SECONDS = 5.0
"""How long a scrape from another thread waits for the event loop of an asyncio service."""

GAUGES = {  # stats() key (``pool.`` for the pool's): metric name, help
    "live_sessions": ("live_sessions", "Sessions held in this process's memory."),
    "pending_sessions": ("pending_writes", "Sessions with changes waiting to be written."),
    "pending_changes": ("pending_changes", "Changes waiting to be written to the store."),
    "inflight_sessions": ("inflight_writes", "Sessions in the store write under way."),
    "unwritten_ends": ("unwritten_ends", "Ended sessions the store has not recorded yet."),
    "store_ok": ("store_up", "1 while the store takes writes; 0 from a failed write to the next."),
    "flush_mean_seconds": ("flush_mean_seconds", "Mean duration of a store write, in seconds."),
    "flush_max_seconds": ("flush_max_seconds", "Longest store write so far, in seconds."),
    "last_cleanup_at": ("last_cleanup_timestamp_seconds", "When expired sessions were last swept."),
    "pool.max_total": ("pool_max_sessions", "Most sessions the pool lends at once."),
    "pool.active": ("pool_active_sessions", "Sessions the pool lends now."),
    "pool.idle": ("pool_idle_sessions", "Idle sessions the pool keeps."),
    "pool.waiting": ("pool_waiting_requests", "Requests waiting for a pool slot."),
    "pool.max_wait_seconds": ("pool_wait_max_seconds", "Longest wait for a pool slot, in seconds."),
}
COUNTERS = {
    "changes": ("changes", "Changes made to sessions (creates, updates, rotations, ends)."),
    "flushes": ("flushes", "Store writes that succeeded."),
    "flush_failures": ("store_errors", "Store writes that failed."),
    "flush_retries": ("flush_retries", "Store writes retried after a failure."),
    "sessions_written": ("sessions_written", "Sessions written to the store."),
    "writes_saved": ("writes_saved", "Changes written together with another of the session."),
    "expired_evicted": ("expired_evicted", "Expired sessions dropped from memory."),
    "store_purged": ("store_purged", "Expired sessions purged from the store."),
    "pool.timeouts": ("pool_timeouts", "Requests that found no pool slot in time."),
}


class SessionCollector(Collector):
    """The counters of one or more services (`SessionService`, `AsyncSessionService`), as
    Prometheus metrics; each service's samples carry its store as the ``store`` label."""

    def __init__(self, service: AnyService, *more: AnyService) -> None:
        self._services = (service, *more)

    def describe(self) -> Iterable[Metric]:
        """The metrics without samples (so registering does not read the services)."""
        return list(_families([]))

    def collect(self) -> Iterable[Metric]:
        """One reading of each service's counters."""
        return list(_families([_read(service) for service in self._services]))


def _read(service: AnyService) -> dict[str, Any]:
    """``service.stats()``; an asyncio service's on its loop (never blocking that loop)."""
    if isinstance(service, SessionService):
        return service.stats()
    loop = service._loop
    if loop is None or not loop.is_running() or _running_loop() is loop:
        return service._stats()  # the loop's own thread, or no loop: nothing runs meanwhile
    return asyncio.run_coroutine_threadsafe(service.stats(), loop).result(READ_TIMEOUT_SECONDS)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _families(readings: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each metric of the tables, with a sample for each reading that has a value for it."""
    for table, kind in ((GAUGES, GaugeMetricFamily), (COUNTERS, CounterMetricFamily)):
        for key, (name, text) in table.items():
            family = kind(PREFIX + name, text, labels=["store"])
            for stats in readings:
                value = _value(stats, key)
                if value is not None:
                    family.add_metric([str(stats["store"])], value)
            yield family


def _value(stats: Mapping[str, Any], key: str) -> float | None:
    """The number at ``key`` (``pool.name`` inside ``stats["pool"]``), None if absent."""
    if key.startswith("pool."):
        stats = stats.get("pool") or {}
        key = key[len("pool.") :]
    value = stats.get(key)
    return None if value is None else float(value)
