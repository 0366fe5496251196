"""Equal strings held once: many sessions hold the same short texts (a browser's user
agent, a theme, a locale, a role, ``true``), and each one's own copy would cost more than
the pointer to a shared one."""

from __future__ import annotations


class TextPool:
    """A bounded pool of strings: `share` hands out the equal string already held. Emptied
    when full, so it stays small whatever the traffic; sharing is only ever a saving."""

    __slots__ = ("_held", "limit")

    def __init__(self, limit: int) -> None:
        self._held: dict[str, str] = {}
        self.limit = limit

    def share(self, text: str) -> str:
        """``text``, or an equal string this pool already holds."""
        held = self._held.get(text)
        if held is not None:
            return held
        if len(self._held) >= self.limit:
            self._held.clear()
        self._held[text] = text
        return text
