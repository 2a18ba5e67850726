"""The one message a twin child process sends its parent, on a pipe of its own (never stdout).

``python -m inferaudit.twin --ready-fd N`` reads ``TwinOptions`` as JSON on stdin and writes one
``Readiness`` JSON object to file descriptor N, then closes it: ``url`` once it is listening, or
``error`` (one line) if it could not start.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Readiness(BaseModel):
    """``url`` (``http://HOST:PORT``) and the engine's description, or ``error``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = None
    description: dict[str, object] | None = None
    error: str | None = None
