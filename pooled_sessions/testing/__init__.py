"""The store contract, for a store's own test suite: pytest mixins, one per capability.

A third-party store (registered under the ``pooled_sessions.stores`` or
``pooled_sessions.async_stores`` entry points) shows it keeps the contract the services
rely on with a test class that inherits the mixins of what it supports and provides a
``store_factory`` fixture (see docs/stores.md). Importing this package needs pytest;
``import pooled_sessions`` never imports it.
"""

from __future__ import annotations

from pooled_sessions.testing.capabilities import SlotContract, TombstoneContract, WatchContract
from pooled_sessions.testing.harness import Heard, StoreContractBase, StoreFactory
from pooled_sessions.testing.store_contract import BasicStoreContract, PollContract
from pooled_sessions.testing.twins import assert_twins

__all__ = [
    "BasicStoreContract",
    "Heard",
    "PollContract",
    "SlotContract",
    "StoreContractBase",
    "StoreFactory",
    "TombstoneContract",
    "WatchContract",
    "assert_twins",
]
