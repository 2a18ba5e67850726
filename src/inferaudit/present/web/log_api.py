"""The log service's HTTP API: C2SP tlog-tiles reads, JSON proofs, authenticated submissions.

Reads (no token):
  ``GET /checkpoint``                  the latest checkpoint note with its witness cosignatures
  ``GET /tile/<L>/<N>[.p/<W>]``        hashes of level 8·L, nodes 256·N .. 256·N+W-1
  ``GET /tile/entries/<N>[.p/<W>]``    entries 256·N .. 256·N+W-1 (uint16-BE length || bytes)
  ``GET /api/v1/entries/<i>``          ``{"index", "leaf_hash", "envelope"}``
  ``GET /api/v1/proof/inclusion?index=I&size=N``, ``/proof/consistency?old=M&size=N``
  ``GET /api/v1/tlog-proof/<i>``       C2SP tlog-proof against the latest checkpoint
Tiles are computed from the ledger for the latest checkpoint's tree: the same bytes
``seal.ledger.tiles.export_tiles`` writes (a partial tile narrower than the current one is the
prefix an earlier export wrote). N is parsed strictly (``x001/x234/067``: 3-digit groups, ``x``
before all but the last, no leading zero group), as are every index and size (canonical
decimals); a tile or entry beyond the checkpoint is 404. Full tiles are immutable
(``max-age=31536000, immutable``), partial ones ``max-age=60``, the checkpoint ``no-store``.

Writes (``Authorization: Bearer <token>``; 401 without a valid token, 429 over the token's
rate, 403 without the scope; the body is read only after that):
  ``POST /api/v1/evidence``            (submit-evidence) a run's DSSE envelope
  ``PUT /api/v1/runs/<i>/bundle``      (submit-evidence) gzip tar of the run directory
  ``POST /api/v1/claims``              (submit-claims) a capacity claim's DSSE envelope
  ``POST /api/v1/auditors``            (admin) ``{"key": "<verifier key>"}``
  ``POST /api/v1/tokens``              (admin) ``{"name", "scopes"}`` -> ``{"token"}``, shown once
The work of a write runs in the threadpool (a database lock wait never blocks the event loop).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from inferaudit.errors import validation_message
from inferaudit.present.web.service import NotFoundError, Service, ServiceError
from inferaudit.present.web.tokens import SCOPES, Scope, TokenInfo
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import NoteError, parse_decimal
from inferaudit.seal.ledger.tiles import TILE_HEIGHT, TILE_WIDTH, bundle, tile_path

IMMUTABLE = "public, max-age=31536000, immutable"
PARTIAL = "public, max-age=60"
NO_STORE = "no-store"
MAX_TILE_LEVEL = 5  # 8·5 = 40 levels: 2^48 leaves (the ledger's bound) never reach level 6
_GROUP = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")
GZIP_TYPES = ("application/gzip", "application/x-gzip")


class BadRequestError(ServiceError):
    status = 400


class UnauthorizedError(ServiceError):
    status = 401


class ForbiddenError(ServiceError):
    status = 403


class RateLimitedError(ServiceError):
    status = 429


class UnsupportedMediaError(ServiceError):
    status = 415


def _decimal(text: str, what: str) -> int:
    try:
        return parse_decimal(text, what)
    except NoteError as exc:
        raise BadRequestError(str(exc)) from None


# -- tiles ---------------------------------------------------------------------------------------


def parse_tile(path: str) -> tuple[int | None, int, int]:
    """``<L>/<N>[.p/<W>]`` or ``entries/<N>[.p/<W>]`` -> (level or None for entries, N, W)."""
    parts = path.split("/")
    if len(parts) < 2 or len(parts) > 12:
        raise NotFoundError("no such tile")
    head, rest = parts[0], parts[1:]
    level: int | None = None
    if head != "entries":
        try:
            level = parse_decimal(head, "tile level")
        except NoteError:
            raise NotFoundError("no such tile") from None
        if level > MAX_TILE_LEVEL:
            raise NotFoundError("no such tile")
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        try:
            width = parse_decimal(rest[-1], "tile width")
        except NoteError:
            raise NotFoundError("no such tile") from None
        if not 0 < width < TILE_WIDTH:
            raise NotFoundError("no such tile")
        rest = [*rest[:-2], rest[-2][: -len(".p")]]
    if not _LAST.fullmatch(rest[-1]) or not all(_GROUP.fullmatch(g) for g in rest[:-1]):
        raise NotFoundError("no such tile")
    n = int("".join(g.removeprefix("x") for g in rest))
    canonical = tile_path("entries" if level is None else level, n, width)
    if canonical != f"tile/{path}":  # a leading zero group, e.g. x000/001
        raise NotFoundError("no such tile")
    return level, n, width


def tile_bytes(service: Service, level: int | None, n: int, width: int) -> bytes:
    """The tile's bytes for the latest checkpoint's tree; NotFoundError beyond it."""
    size = service.checkpoint_size()
    count = size if level is None else size >> (TILE_HEIGHT * level)
    start = n * TILE_WIDTH
    if start + width > count:
        raise NotFoundError(f"that tile is beyond the checkpoint's tree of size {size}")
    if level is None:
        return bundle(service.ledger.entries(start, start + width))
    return b"".join(service.ledger.hashes(TILE_HEIGHT * level, start, start + width))


# -- authentication ------------------------------------------------------------------------------


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token.strip():
        return None
    return token.strip()


def authorizer(getter: Callable[[], Service], scope: Scope) -> Callable[[Request], TokenInfo]:
    """A dependency: the request's token, which must be valid, within its rate, and hold
    ``scope`` (checked in that order: 401, 429, 403)."""

    def check(request: Request) -> TokenInfo:
        service = getter()
        token = _bearer(request)
        info = None if token is None else service.tokens.authenticate(token)
        if info is None or info.revoked is not None:
            raise UnauthorizedError("a valid bearer token is required")
        if not service.rate.allow(info.name):
            raise RateLimitedError("too many requests for this token; slow down")
        if not info.allows(scope):
            raise ForbiddenError(f"this token lacks the {scope} scope")
        return info

    return check


# -- request bodies ------------------------------------------------------------------------------


class AuditorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    scopes: list[str]


M = TypeVar("M", bound=BaseModel)


def _model(cls: type[M], body: bytes) -> M:
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        raise ServiceError(f"request body: {validation_message(exc)}") from None


def _text(body: str, cache: str) -> Response:
    return Response(
        body.encode(), media_type="text/plain; charset=utf-8", headers={"Cache-Control": cache}
    )


def _json(data: dict[str, object], status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": NO_STORE})


# -- the router ----------------------------------------------------------------------------------


def log_router(getter: Callable[[], Service]) -> APIRouter:
    """The read and write endpoints of the module docstring, over ``getter()``'s service."""
    router = APIRouter()
    evidence_scope = Depends(authorizer(getter, "submit-evidence"))
    claims_scope = Depends(authorizer(getter, "submit-claims"))
    admin_scope = Depends(authorizer(getter, "admin"))

    @router.get("/checkpoint")
    def checkpoint() -> Response:
        note = getter().ledger.latest_checkpoint()
        if note is None:
            raise NotFoundError("the log has no checkpoint yet")
        return _text(note, NO_STORE)

    @router.get("/tile/{path:path}")
    def tile(path: str) -> Response:
        level, n, width = parse_tile(path)
        data = tile_bytes(getter(), level, n, width)
        cache = IMMUTABLE if width == TILE_WIDTH else PARTIAL
        return Response(
            data, media_type="application/octet-stream", headers={"Cache-Control": cache}
        )

    @router.get("/api/v1/entries/{index}")
    def entry(index: str) -> JSONResponse:
        i = _decimal(index, "entry index")
        leaf = getter().published_entry(i)
        return JSONResponse(
            {"index": i, "leaf_hash": merkle.hash_leaf(leaf).hex(), "envelope": orjson.loads(leaf)},
            headers={"Cache-Control": IMMUTABLE},
        )

    @router.get("/api/v1/proof/inclusion")
    def inclusion(index: str, size: str) -> JSONResponse:
        i, n = _decimal(index, "index"), _decimal(size, "size")
        service = getter()
        if not i < n:
            raise BadRequestError(f"index {i} is not below size {n}")
        if n > service.checkpoint_size():
            raise NotFoundError(f"size {n} is beyond the latest checkpoint")
        hashes = service.ledger.inclusion_proof(i, n)
        return JSONResponse(
            {"index": i, "size": n, "hashes": [base64.b64encode(h).decode() for h in hashes]},
            headers={"Cache-Control": IMMUTABLE},
        )

    @router.get("/api/v1/proof/consistency")
    def consistency(old: str, size: str) -> JSONResponse:
        m, n = _decimal(old, "old"), _decimal(size, "size")
        service = getter()
        if not m <= n:
            raise BadRequestError(f"old {m} is above size {n}")
        if n > service.checkpoint_size():
            raise NotFoundError(f"size {n} is beyond the latest checkpoint")
        hashes = service.ledger.consistency_proof(m, n)
        return JSONResponse(
            {"old": m, "size": n, "hashes": [base64.b64encode(h).decode() for h in hashes]},
            headers={"Cache-Control": IMMUTABLE},
        )

    @router.get("/api/v1/tlog-proof/{index}")
    def tlog_proof(index: str) -> Response:
        i = _decimal(index, "entry index")
        service = getter()
        service.published_entry(i)
        return _text(service.ledger.tlog_proof(i).text(), NO_STORE)

    @router.post("/api/v1/evidence")
    async def evidence(request: Request, _: TokenInfo = evidence_scope) -> JSONResponse:
        body = await request.body()
        r = await run_in_threadpool(getter().submit_evidence, body)
        return _json(
            {
                "index": r.index,
                "origin": r.origin,
                "log_key": r.log_key,
                "checkpoint": r.checkpoint,
                "proof": r.proof,
            }
        )

    @router.put("/api/v1/runs/{index}/bundle")
    async def run_bundle(
        index: str, request: Request, _: TokenInfo = evidence_scope
    ) -> JSONResponse:
        i = _decimal(index, "entry index")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in GZIP_TYPES:
            raise UnsupportedMediaError("a run bundle is sent as application/gzip")
        body = await request.body()
        out = await run_in_threadpool(getter().upload_bundle, i, body)
        return _json({"index": out.index, "status": out.status, "reason": out.reason})

    @router.post("/api/v1/claims")
    async def claims(request: Request, _: TokenInfo = claims_scope) -> JSONResponse:
        body = await request.body()
        r = await run_in_threadpool(getter().submit_claim, body)
        return _json({"index": r.index, "claim_id": r.claim_id, "proof": r.proof})

    @router.post("/api/v1/auditors")
    async def auditors(request: Request, _: TokenInfo = admin_scope) -> JSONResponse:
        body = _model(AuditorBody, await request.body())
        key, added = await run_in_threadpool(getter().register_auditor, body.key)
        return _json({"keyid": key.keyid, "key": key.text(), "added": added})

    @router.post("/api/v1/tokens")
    async def tokens(request: Request, _: TokenInfo = admin_scope) -> JSONResponse:
        body = _model(TokenBody, await request.body())
        token = await run_in_threadpool(getter().tokens.add, body.name, body.scopes)
        return _json(
            {"name": body.name, "scopes": [s for s in SCOPES if s in body.scopes], "token": token}
        )

    return router
