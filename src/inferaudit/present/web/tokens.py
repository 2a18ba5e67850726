"""Bearer tokens of the log service: scoped, stored hashed, rate-limited per token.

A token is ``iat_`` + ``secrets.token_urlsafe(32)`` (256 random bits). It is shown once, when it
is made, and never stored, logged or echoed: the table ``service_tokens`` keeps its name, the
SHA-256 of the token, its scopes, when it was made and when (if ever) it was revoked. A request's
token is hashed and looked up by that hash; the stored hash is then compared in constant time
(``hmac.compare_digest``).

Scopes: ``submit-evidence`` (``POST /api/v1/evidence``, ``PUT /api/v1/runs/<i>/bundle``),
``submit-claims`` (``POST /api/v1/claims``) and ``admin`` (auditor keys and tokens). A scope grants
only itself: ``admin`` does not submit.

``RateLimiter``: one token bucket per token name (``rate`` requests a second, up to ``burst`` at
once), in this process's memory (one process per log).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from sqlalchemy import Column, Engine, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from inferaudit.errors import ConfigError, StorageError

Scope = Literal["submit-evidence", "submit-claims", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
TOKEN_PREFIX = "iat_"
MAX_TOKEN_CHARS = 200  # a header value longer than this is not one of our tokens
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

metadata = MetaData()
tokens_t = Table(
    "service_tokens",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),  # comma-separated, sorted
    Column("created", String(40), nullable=False),
    Column("revoked", String(40), nullable=True),
)


class TokenError(ConfigError):
    """A token command was refused (bad name or scope, unknown or duplicate name)."""


@dataclass(frozen=True)
class TokenInfo:
    """A token as stored: everything but the token itself."""

    name: str
    scopes: tuple[Scope, ...]
    created: str
    revoked: str | None

    def allows(self, scope: Scope) -> bool:
        return self.revoked is None and scope in self.scopes


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TokenError(f"token name {name[:70]!r}: use 1-64 of A-Z a-z 0-9 . _ - (first A-Z0-9)")
    return name


def parse_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[Scope, ...]:
    if not scopes:
        raise TokenError(f"a token needs at least one scope ({', '.join(SCOPES)})")
    out: list[Scope] = []
    for s in scopes:
        scope = next((k for k in SCOPES if k == s), None)
        if scope is None:
            raise TokenError(f"scope {s[:40]!r}: expected one of {', '.join(SCOPES)}")
        out.append(scope)
    return tuple(sorted(set(out)))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def db_error(what: str, exc: SQLAlchemyError) -> StorageError:
    """One line for a failed service table (``what``: "token", "auditor")."""
    first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return StorageError(f"{what} database: {exc.__class__.__name__}: {first}")


class TokenStore:
    """The ``service_tokens`` table in the service's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            with engine.begin() as conn:
                metadata.create_all(conn)
        except SQLAlchemyError as exc:
            raise db_error("token", exc) from None

    def add(self, name: str, scopes: list[str] | tuple[str, ...]) -> str:
        """Make a token; return it (the only time it is ever available)."""
        check_token_name(name)
        parsed = parse_scopes(scopes)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(tokens_t).values(
                        name=name,
                        sha256=token_digest(token),
                        scopes=",".join(parsed),
                        created=_now(),
                        revoked=None,
                    )
                )
        except IntegrityError:
            raise TokenError(f"a token named {name!r} exists already") from None
        except SQLAlchemyError as exc:
            raise db_error("token", exc) from None
        return token

    def list(self) -> list[TokenInfo]:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(tokens_t).order_by(tokens_t.c.name)).all()
        except SQLAlchemyError as exc:
            raise db_error("token", exc) from None
        return [self._info(r.name, r.scopes, r.created, r.revoked) for r in rows]

    def revoke(self, name: str) -> TokenInfo:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(tokens_t)
                    .where(tokens_t.c.name == name, tokens_t.c.revoked.is_(None))
                    .values(revoked=_now())
                )
                row = conn.execute(select(tokens_t).where(tokens_t.c.name == name)).first()
        except SQLAlchemyError as exc:
            raise db_error("token", exc) from None
        if row is None:
            raise TokenError(f"no token named {name[:70]!r}")
        return self._info(row.name, row.scopes, row.created, row.revoked)

    def authenticate(self, token: str) -> TokenInfo | None:
        """The token's stored record, or None for an unknown or malformed one (revoked tokens
        are returned with ``revoked`` set: they allow nothing)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = token_digest(token)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(tokens_t).where(tokens_t.c.sha256 == digest)).first()
        except SQLAlchemyError as exc:
            raise db_error("token", exc) from None
        if row is None or not hmac.compare_digest(str(row.sha256), digest):
            return None
        return self._info(row.name, row.scopes, row.created, row.revoked)

    @staticmethod
    def _info(name: str, scopes: str, created: str, revoked: str | None) -> TokenInfo:
        known = tuple(s for s in SCOPES if s in scopes.split(","))
        return TokenInfo(name=name, scopes=known, created=created, revoked=revoked)


class RateLimiter:
    """Token buckets by key: ``rate`` refills a second, ``burst`` at most. Thread-safe."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigError(f"rate limit {rate}/s burst {burst}: both must be positive")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Take one request from ``key``'s bucket; False when it is empty."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1.0, now)
            return True
