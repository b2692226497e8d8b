"""Errors the client APIs report, one vocabulary for HTTP and gRPC.

`kind` is TGI's `error_type`; HTTP status and gRPC code follow from it (tables in router/api).
"""

from __future__ import annotations

from typing import Literal

from router.engine.types import EngineError

ApiErrorKind = Literal[
    "validation", "overloaded", "generation", "incomplete_generation", "unavailable", "not_found", "conflict"
]

HTTP_STATUS: dict[str, int] = {
    "validation": 422,
    "overloaded": 429,
    "generation": 424,
    "incomplete_generation": 500,
    "unavailable": 503,
    "not_found": 404,
    "conflict": 409,
}


class ApiError(Exception):
    """A request the router refuses or could not finish, with a message a person can act on."""

    def __init__(self, kind: ApiErrorKind, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind: ApiErrorKind = kind
        self.message = message
        self._status = status

    @property
    def http_status(self) -> int:
        return self._status if self._status is not None else HTTP_STATUS[self.kind]

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.kind}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r}, {self.message!r})"


class ValidationError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__("validation", message)


def from_engine(exc: EngineError) -> ApiError:
    return ApiError(exc.kind, exc.message)
