"""Signing claims: each claim is an in-toto statement of its own predicate type, published into
the ledger through ``seal.publish`` (sign -> append -> checkpoint -> proof). Nothing here touches
the ledger itself.

Publishing is idempotent (Ed25519 is deterministic and the statement is a pure function of the
claim), so a claim whose ledger entry was appended but whose index was never saved gets the same
entry, not a second one, when it is published again: that is how the registry repairs itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inferaudit.errors import ClaimsError
from inferaudit.intent.claims.model import Claim
from inferaudit.seal.keys import Signer
from inferaudit.seal.ledger.store import Ledger
from inferaudit.seal.publish import Published, StatementTooLargeError, publish_many

PREDICATE_TYPE = "https://inferaudit.dev/capacity-claim/v1"
SIGNER_NAME = "inferaudit-claims"  # the key claims are signed with, in the data directory


class ClaimTooLargeError(ClaimsError):
    """A claim's signed ledger entry would exceed the ledger's entry size limit."""


@dataclass(frozen=True)
class Signing:
    """Who signs claims and where they are logged (``ledger=None``: signed, not logged)."""

    signer: Signer
    ledger: Ledger | None


def claim_statement(claim: Claim) -> dict[str, object]:
    """In-toto Statement v1 about one claim; the subject is the claim's canonical bytes."""
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": f"claim:{claim.claim_id}", "digest": {"sha256": claim.digest()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"claim": claim.to_json()},
    }


def publish_claims(claims: Sequence[Claim], signing: Signing) -> list[Published]:
    """Sign and log every claim in one batch. Every size is checked before anything is appended:
    a claim too large for a ledger entry raises ``ClaimTooLargeError`` naming it."""
    if not claims:
        return []
    try:
        return publish_many([claim_statement(c) for c in claims], signing.signer, signing.ledger)
    except StatementTooLargeError as exc:
        claim = claims[exc.position]
        raise ClaimTooLargeError(
            f"claim {claim.claim_id}: its signed ledger entry would be {exc.size:,} bytes; a "
            f"ledger entry holds at most {exc.limit:,} (shorten its statement, quotes or notes); "
            "nothing was stored or signed"
        ) from None
