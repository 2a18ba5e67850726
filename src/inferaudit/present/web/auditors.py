"""Registered auditor keys: the signer keys whose envelopes the log service accepts.

Table ``service_auditors``: keyid (``name+hexid``) -> the verifier key text, when it was added.
Only Ed25519 signer keys (sigtype 0x01) can be registered; a witness cosignature key (0x04)
signs checkpoints, never evidence. Registering a key again is a no-op.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, Engine, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from inferaudit.errors import ConfigError
from inferaudit.present.web.tokens import db_error
from inferaudit.seal.keys import ALG_ED25519, KeyFormatError, Verifier, parse_verifier

metadata = MetaData()
auditors_t = Table(
    "service_auditors",
    metadata,
    Column("keyid", String(200), primary_key=True),
    Column("key", String(400), nullable=False),
    Column("added", String(40), nullable=False),
)


def parse_auditor_key(text: str) -> Verifier:
    """A verifier key text that may sign evidence (Ed25519, sigtype 0x01)."""
    if len(text) > 400:
        raise KeyFormatError("auditor key: too long for a verifier key")
    key = parse_verifier(text)
    if key.alg != ALG_ED25519:
        raise KeyFormatError(f"auditor key {key.keyid}: a cosignature key cannot sign evidence")
    return key


class AuditorKeys:
    """The ``service_auditors`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            with engine.begin() as conn:
                metadata.create_all(conn)
        except SQLAlchemyError as exc:
            raise db_error("auditor", exc) from None

    def add(self, key: Verifier) -> bool:
        """Register ``key``; False when it was registered already."""
        if key.alg != ALG_ED25519:
            raise ConfigError(f"auditor key {key.keyid}: a cosignature key cannot sign evidence")
        try:
            with self.engine.begin() as conn:
                found = conn.execute(
                    select(auditors_t.c.key).where(auditors_t.c.keyid == key.keyid)
                ).scalar_one_or_none()
                if found is not None:
                    if found != key.text():
                        raise ConfigError(f"auditor {key.keyid} is registered with another key")
                    return False
                conn.execute(
                    insert(auditors_t).values(
                        keyid=key.keyid,
                        key=key.text(),
                        added=datetime.now(UTC).isoformat(timespec="seconds"),
                    )
                )
        except IntegrityError:
            return False  # registered concurrently
        except SQLAlchemyError as exc:
            raise db_error("auditor", exc) from None
        return True

    def list(self) -> list[Verifier]:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(auditors_t.c.key).order_by(auditors_t.c.keyid)).all()
        except SQLAlchemyError as exc:
            raise db_error("auditor", exc) from None
        return [parse_verifier(r.key) for r in rows]
