"""The one error type every front door maps: HTTP-like codes, as docs/protocol.md and REST use them."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the rules refuse. ``status`` is a stable word for scripts (REST JSON)."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.status = status
        self.text = text


def bad_request(text: str) -> ServiceError:
    return ServiceError(400, "bad_request", text)


def unknown_key() -> ServiceError:
    # The same answer for a malformed and an unknown key: nothing to learn by probing.
    return ServiceError(401, "unauthorized", "unknown API key")


def forbidden(text: str) -> ServiceError:
    return ServiceError(403, "forbidden", text)


def not_found(text: str) -> ServiceError:
    return ServiceError(404, "not_found", text)


def invalid(text: str) -> ServiceError:
    return ServiceError(422, "invalid", text)


def rate_limited(text: str) -> ServiceError:
    return ServiceError(429, "rate_limited", text)


class StorageUnavailable(ServiceError):
    """The database cannot take a write that would survive: nothing was changed.

    ``retry`` is true when the cause is usually brief (a PostgreSQL restart, a locked SQLite
    file), so repeating the same work in a moment is worth it; false when waiting cannot help
    (the SQLite file was deleted or replaced under the running server).
    """

    def __init__(self, text: str, *, retry: bool) -> None:
        super().__init__(503, "unavailable", text)
        self.retry = retry
