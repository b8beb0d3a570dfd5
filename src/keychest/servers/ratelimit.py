"""An in-memory sliding-window counter per source address: cheap refusal of floods.

The durable quotas live in the service layer; this only keeps one noisy client from
reaching the database at all. Pure: the caller passes the time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SlidingWindow:
    limit: int
    window_s: float
    _hits: dict[str, deque[float]] = field(default_factory=dict)

    def allow(self, who: str, now: float) -> bool:
        if self.limit <= 0:
            return True
        hits = self._hits.setdefault(who, deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        if len(self._hits) > 100_000:
            self._forget_idle(now)
        return True

    def _forget_idle(self, now: float) -> None:
        for who in [w for w, h in self._hits.items() if not h or h[-1] <= now - self.window_s]:
            del self._hits[who]
