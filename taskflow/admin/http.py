"""Request ids and the one error envelope every failure is answered with.

Every response carries ``X-Request-ID`` (the caller's, when it sent a sensible one, or a new
one). Every error is ``{"error": {"code", "message", "request_id"}}`` with the matching
status: 401, 403, 404, 409, 422 or 500. A 500 never shows the exception; the log line names
the request id, the method and the path (never a query string, a body or a payload).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import AuditNotWritten, BrokerError

__all__ = [
    "REQUEST_ID",
    "ApiError",
    "RequestIdMiddleware",
    "backend_error",
    "error_response",
    "request_id",
]

log = logging.getLogger("taskflow.admin")

REQUEST_ID = "X-Request-ID"
_GOOD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]  # fmt: skip
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answered with the envelope: ``status`` and a message for the caller."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or CODES.get(status, "error")


def backend_error(exc: BrokerError) -> ApiError:
    """A backend's error as the caller sees it: 503 ``unavailable`` with its message
    (which masks passwords and holds no payload), or for an action that took effect but
    whose audit entry was refused, 500 ``audit_not_written`` (not 503, which a client
    may retry on its own: the action would be done twice)."""
    if isinstance(exc, AuditNotWritten):
        return ApiError(500, str(exc), "audit_not_written")
    return ApiError(503, str(exc))


def request_id(request: Request) -> str:
    """The id of ``request`` (set by :class:`RequestIdMiddleware`)."""
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_response(
    request: Request, status: int, message: str, code: str | None = None
) -> Response:
    """The error envelope as a JSON response."""
    rid = request_id(request)
    body = {
        "error": {"code": code or CODES.get(status, "error"), "message": message, "request_id": rid}
    }
    headers = {"WWW-Authenticate": 'Bearer realm="taskflow"'} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


class RequestIdMiddleware:
    """Gives each request an id, echoes it, adds ``Server-Timing`` (the handler's time)
    and turns an unhandled exception into a logged 500 envelope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for key, value in scope.get("headers", []):
            if key == b"x-request-id":
                given = value.decode("latin-1")
        rid = given if _GOOD_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        sent = False

        async def send_with_id(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                sent = True
                elapsed = (time.perf_counter() - started) * 1000
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID.lower().encode(), rid.encode()))
                headers.append((b"server-timing", f"app;dur={elapsed:.1f}".encode()))
                headers.extend(SECURITY_HEADERS)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "admin request %s failed: %s %s", rid, scope.get("method"), scope.get("path")
            )
            if sent:
                raise
            response = error_response(Request(scope), 500, f"internal error (request {rid})")
            await response(scope, receive, send_with_id)


def json_body(data: Any) -> dict[str, Any]:
    """A JSON request body that must be an object (422 otherwise)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ApiError(422, "the request body must be a JSON object")
    return data
