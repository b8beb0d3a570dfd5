"""When each background loop of this process last went round: /healthz's "loop alive".

A loop calls :func:`mark` once per pass (the scanner per lease round, the mailer per outbox
round); a loop stuck in a call or dead stops marking, and its age grows.
"""

from __future__ import annotations

import time

_passes: dict[str, float] = {}


def mark(loop: str) -> None:
    _passes[loop] = time.monotonic()


def ages() -> dict[str, float]:
    """Seconds since each loop's last pass."""
    now = time.monotonic()
    return {loop: now - at for loop, at in _passes.items()}


def oldest() -> float | None:
    """Seconds since the least recent pass of any loop; None before the first."""
    found = ages()
    return max(found.values()) if found else None
