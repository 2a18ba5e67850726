"""The truth file: what the twin really did, one flushed JSON line per finished request.

``Outcome`` is filled in while a request is served and becomes its truth line (the keys are
listed in ``server.py``'s docstring); all instants are ``time.perf_counter_ns()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from inferaudit.errors import ConfigError


class TruthLog:
    """Append-only JSONL of what the twin really did; one flushed line per finished request."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[bytes] | None = None
        if path is not None:
            try:
                self._file = path.open("ab")
            except OSError as exc:
                raise ConfigError(f"--truth {path}: cannot open ({exc.strerror})") from None

    def write(self, line: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(orjson.dumps(line) + b"\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Outcome:
    """What one request turned into, filled in as it is served; becomes the truth line."""

    seq: int
    rid: str
    api: str
    arrival_ns: int
    status: int = 200
    stream: bool = False
    identity: str = ""
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    max_tokens: int = 0
    token_ns: list[int] = field(default_factory=list)
    sent_ns: list[int] = field(default_factory=list)
    done_ns: int = 0
    tokens_reported: int | None = None
    finish_reason: str | None = None
    true_finish: str | None = None
    cache_hit: bool = False
    replica: int | None = None
    behaviours: list[str] = field(default_factory=list)
    error: str | None = None
    client_request_id: str | None = None
    output_sha256: str | None = None
    engine_late_steps: int | None = None
    messages: int = 0
    roles: list[str] = field(default_factory=list)
    prompt_sha256: str | None = None
    last_user_sha256: str | None = None
    prefix_hit_tokens: int = 0

    def line(self, model: str) -> dict[str, Any]:
        return {
            "id": self.rid,
            "seq": self.seq,
            "api": self.api,
            "model": model,
            "identity": self.identity,
            "status": self.status,
            "stream": self.stream,
            "arrival_ns": self.arrival_ns,
            "first_token_ns": self.token_ns[0] if self.token_ns else None,
            "token_ns": self.token_ns,
            "first_sent_ns": self.sent_ns[0] if self.sent_ns else None,
            "sent_ns": self.sent_ns,
            "done_ns": self.done_ns,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "max_tokens": self.max_tokens,
            "tokens_generated": len(self.sent_ns),
            "tokens_reported": self.tokens_reported,
            "finish_reason": self.finish_reason,
            "true_finish": self.true_finish,
            "cache_hit": self.cache_hit,
            "replica": self.replica,
            "behaviours": self.behaviours,
            "error": self.error,
            "client_request_id": self.client_request_id,
            "output_sha256": self.output_sha256,
            "engine_late_steps": self.engine_late_steps,
            "messages": self.messages,
            "roles": self.roles,
            "prompt_sha256": self.prompt_sha256,
            "last_user_sha256": self.last_user_sha256,
            "prefix_hit_tokens": self.prefix_hit_tokens,
        }
