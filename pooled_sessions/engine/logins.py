"""What a login does to a user's other sessions: the pure decision behind `SessionManager`.

`decide_login` is a function of the user's live sessions and the new login's address, so
the blocking manager, the asyncio manager, or a store running the check atomically (a
Redis script) all apply the same rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pooled_sessions.client_ip import parse_address
from pooled_sessions.errors import ConfigError


class LocationPolicy(StrEnum):
    """What a login from another place does while the user has live sessions."""

    END_OLDER = "end_older"  # the new login wins: sessions from elsewhere end
    ALLOW = "allow"  # both stay; the event reports it
    REFUSE = "refuse"  # the new login is refused


LimitPolicy = Literal["end_oldest", "refuse"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginPolicy:
    """The rules of `decide_login`.

    Two addresses are the same place when they share their first ``ipv4_prefix`` /
    ``ipv6_prefix`` bits (32 / 128: the exact address; 24 / 64: the same network). A
    session without a known address is never "elsewhere". ``max_sessions_per_user``
    bounds one user's live sessions; past it the oldest end, or (``on_limit="refuse"``)
    the login is refused.
    """

    on_new_location: LocationPolicy = LocationPolicy.END_OLDER
    ipv4_prefix: int = 32
    ipv6_prefix: int = 128
    max_sessions_per_user: int | None = None
    on_limit: LimitPolicy = "end_oldest"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "on_new_location", LocationPolicy(self.on_new_location))
        except ValueError:
            choices = ", ".join(repr(p.value) for p in LocationPolicy)
            raise ConfigError(
                f"on_new_location must be one of {choices}, got {self.on_new_location!r}"
            ) from None
        for name, top in (("ipv4_prefix", 32), ("ipv6_prefix", 128)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ConfigError(f"{name} must be an int in 0..{top}, got {value!r}")
        limit = self.max_sessions_per_user
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ConfigError(f"max_sessions_per_user must be None or an int >= 1, got {limit!r}")
        if self.on_limit not in ("end_oldest", "refuse"):
            raise ConfigError(f"on_limit must be 'end_oldest' or 'refuse', got {self.on_limit!r}")

    def same_place(self, first: str | None, second: str | None) -> bool:
        """True unless both addresses are known and lie in different networks."""
        if first is None or second is None:
            return True
        a, b = parse_address(first), parse_address(second)
        if a is None or b is None:
            return first == second
        if a.version != b.version:
            return False
        prefix = self.ipv4_prefix if a.version == 4 else self.ipv6_prefix
        return ipaddress.ip_network((a, prefix), strict=False) == ipaddress.ip_network(
            (b, prefix), strict=False
        )


@dataclass(frozen=True, slots=True)
class LiveLogin:
    """One of the user's live sessions, as the decision sees it."""

    session_id: str
    ip: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class LoginDecision:
    """Whether the login goes ahead, which sessions end first, and which were elsewhere."""

    allowed: bool
    end: tuple[str, ...]
    elsewhere: tuple[LiveLogin, ...]
    reason: str  # "ok", "other_location" or "too_many_sessions"


def decide_login(live: Sequence[LiveLogin], ip: str | None, policy: LoginPolicy) -> LoginDecision:
    """Apply ``policy`` to a login from ``ip`` by a user whose other live sessions are ``live``."""
    ordered = sorted(live, key=lambda s: (s.created_at, s.session_id))
    elsewhere = tuple(s for s in ordered if not policy.same_place(s.ip, ip))
    if elsewhere and policy.on_new_location is LocationPolicy.REFUSE:
        return LoginDecision(False, (), elsewhere, "other_location")
    end = (
        [s.session_id for s in elsewhere]
        if policy.on_new_location is LocationPolicy.END_OLDER
        else []
    )
    remaining = [s for s in ordered if s.session_id not in end]
    limit = policy.max_sessions_per_user
    if limit is not None and len(remaining) + 1 > limit:
        if policy.on_limit == "refuse":
            return LoginDecision(False, (), elsewhere, "too_many_sessions")
        end += [s.session_id for s in remaining[: len(remaining) + 1 - limit]]
    return LoginDecision(True, tuple(end), elsewhere, "ok")


@dataclass(frozen=True, slots=True, kw_only=True)
class LocationEvent:
    """A login from another place while the user had live sessions, and what was done.

    ``action`` is ``"ended"`` (the older sessions were ended), ``"allowed"`` or ``"refused"``.
    """

    username: str
    new_ip: str | None
    old_ips: tuple[str, ...]
    session_ids: tuple[str, ...]
    action: Literal["ended", "allowed", "refused"]


def location_event(
    username: str, ip: str | None, decision: LoginDecision, policy: LoginPolicy
) -> LocationEvent | None:
    """The event a decision reports, or None when no session was elsewhere."""
    if not decision.elsewhere:
        return None
    old_ips = tuple(dict.fromkeys(s.ip for s in decision.elsewhere if s.ip is not None))
    if not decision.allowed:
        action: Literal["ended", "allowed", "refused"] = "refused"
    elif policy.on_new_location is LocationPolicy.END_OLDER:
        action = "ended"
    else:
        action = "allowed"
    ids = tuple(s.session_id for s in decision.elsewhere)
    return LocationEvent(
        username=username, new_ip=ip, old_ips=old_ips, session_ids=ids, action=action
    )
