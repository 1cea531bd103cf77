"""Every API failure is an :class:`ApiError` rendered as ``{"error": {"code", "message"[, "field"]}}``.

Codes are stable strings for programs; messages are for people. Validation problems name the offending field.
(No FastAPI import here: the CLI uses these without loading the web stack; handlers live in ``handlers``.)
"""

from __future__ import annotations

from typing import Any

from schemas.errors import GuardqError, PermanentError

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


class ApiError(PermanentError):
    """A request the API refuses, with its HTTP status, stable ``api_code`` and optional headers."""

    def __init__(
        self,
        status: int,
        api_code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.api_code = api_code
        self.field = field
        self.headers = headers or {}

    @classmethod
    def of(cls, exc: GuardqError, status: int = 422, *, code: str | None = None, field: str | None = None) -> ApiError:
        """``exc`` as a refusal with ``status`` and its stable code; a transient failure is a 503 to retry."""
        if exc.retryable:
            return cls(
                503, "unavailable", f"{exc.message}; nothing was stored, retry later", headers={"Retry-After": "5"}
            )
        return cls(status, code or exc.code.value, exc.message, field=field)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return {"error": body}
