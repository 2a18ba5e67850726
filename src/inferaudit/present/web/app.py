"""The log service's ASGI application: the log API, the dashboard, limits, headers, errors.

``create_app(service)`` mounts ``log_api.log_router`` and ``dashboard.dashboard_router`` (the
pages read the same ``Service``). Around them:

  * a body-size limit that stops reading at the limit: a ``Content-Length`` over it is answered
    413 before a byte of the body is read, and a body sent without one (chunked) is cut off with
    413 as soon as it passes the limit (the bundle upload has its own, larger limit);
  * security headers on every answer: a CSP of ``default-src 'none'; img-src 'self' data:;
    style-src 'unsafe-inline'``, ``nosniff``, no referrer, no framing;
  * no ``/docs``, ``/redoc`` or ``/openapi.json``;
  * every error as one line of JSON, ``{"error": "..."}`` (a bug: ``internal error``, its
    traceback in the server's log only).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferaudit.errors import ClaimsError, InferauditError, LedgerError, StorageError
from inferaudit.present.web.dashboard import dashboard_router
from inferaudit.present.web.evidence import (
    BundleError,
    BundleTooLargeError,
    EvidenceError,
    EvidenceImmutableError,
)
from inferaudit.present.web.log_api import log_router
from inferaudit.present.web.service import Service, ServiceError
from inferaudit.present.web.submissions import EntryTooLargeError, SubmissionError

CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_BUNDLE_PATH = re.compile(r"/api/v1/runs/[^/]+/bundle")
_DIGITS = re.compile(r"[0-9]{1,20}")


class BodyTooLargeError(ServiceError):
    status = 413


def status_of(exc: InferauditError) -> int:
    """The HTTP status of an error a request caused (or met)."""
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, EntryTooLargeError | BundleTooLargeError):
        return 413
    if isinstance(exc, EvidenceImmutableError):
        return 409
    if isinstance(exc, SubmissionError | BundleError | ClaimsError):
        return 422
    if isinstance(exc, StorageError | EvidenceError | LedgerError):
        return 500  # the service's own storage, not the request
    return 422


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    line = " ".join(message.split())[:500] or "error"
    return JSONResponse({"error": line}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: at most ``limit_for(method, path)`` body bytes (see the docstring)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        length = [v for k, v in scope["headers"] if k == b"content-length"]
        if length:
            text = length[0].decode("latin-1")
            if len(length) > 1 or not _DIGITS.fullmatch(text):
                await _error(400, "malformed Content-Length")(scope, receive, send)
                return
            if int(text) > limit:
                await _error(413, f"request body over the limit of {limit:,} bytes")(
                    scope, receive, send
                )
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(f"request body over the limit of {limit:,} bytes")
            return message

        await self.app(scope, limited, send)


class SecurityHeaders:
    """ASGI middleware: ``SECURITY_HEADERS`` on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(service: Service) -> FastAPI:
    """The service's application (module docstring)."""
    app = FastAPI(
        title="inferaudit log", docs_url=None, redoc_url=None, openapi_url=None, debug=False
    )

    def getter() -> Service:
        return service

    def limit_for(method: str, path: str) -> int:
        if method == "PUT" and _BUNDLE_PATH.fullmatch(path):
            return service.limits.bundle_bytes
        return service.limits.envelope_bytes

    @app.exception_handler(InferauditError)
    async def inferaudit_error(_: Request, exc: InferauditError) -> JSONResponse:
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return _error(status, exc.diagnostics(), headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal error")

    app.include_router(log_router(getter))
    app.include_router(dashboard_router(getter))
    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(SecurityHeaders)
    return app
