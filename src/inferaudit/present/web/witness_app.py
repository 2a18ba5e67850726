"""The HTTP face of ``inferaudit witness serve`` (C2SP tlog-witness v1).

``POST /add-checkpoint``: the body (read with a size limit: 413 beyond
``witness.MAX_BODY_BYTES``) goes to ``Witness.add_checkpoint``; 200 answers the cosignature
line as ``text/plain; charset=utf-8``, a refusal answers its status with one line of text, a
409 the size the witness holds as ``text/x.tlog.size``. ``GET /``: the witness key and the logs
it watches.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from inferaudit.errors import LedgerError
from inferaudit.seal.ledger.witness import (
    MAX_BODY_BYTES,
    SIZE_CONTENT_TYPE,
    Witness,
    WitnessRefusal,
)

TEXT = "text/plain; charset=utf-8"


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


def witness_app(witness: Witness) -> FastAPI:
    app = FastAPI(title="inferaudit witness", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        try:
            body = await _read_body(request, MAX_BODY_BYTES)
        except _TooLarge:
            return Response(f"request body is over {MAX_BODY_BYTES} bytes\n", 413, media_type=TEXT)
        try:
            line = await run_in_threadpool(witness.add_checkpoint, body)
        except WitnessRefusal as refusal:
            if refusal.status == 409 and refusal.latest_size is not None:
                return Response(
                    f"{refusal.latest_size}\n", 409, headers={"Content-Type": SIZE_CONTENT_TYPE}
                )
            return Response(f"{refusal}\n", refusal.status, media_type=TEXT)
        except LedgerError as exc:  # the witness's own database failed: not the caller's fault
            return Response(f"{exc}\n", 503, media_type=TEXT)
        return Response(line, 200, media_type=TEXT, headers={"Cache-Control": "no-store"})

    @app.get("/")
    async def index() -> Response:
        text = await run_in_threadpool(witness.describe)
        return Response(text, 200, media_type=TEXT, headers={"Cache-Control": "no-store"})

    return app
