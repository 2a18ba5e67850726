"""Capacity claims: the model, findings, files, the registry and signing.

Modules, one concept each:
  ``model``     the vocabulary and the frozen ``Claim`` (schema 0.1 field names, strict numbers);
  ``findings``  consistency rules (sum of parts) stated in words;
  ``files``     JSON / JSONL / CSV import and export (line-numbered problems, CSV injection-safe);
  ``build``     one claim from flat fields (``ClaimInput`` -> ``build_claim``);
  ``signing``   a claim as an in-toto statement, published through ``seal.publish``;
  ``registry``  the SQL registry beside the ledger; storing and signing as one unit.

The names below are the package's public surface.
"""

from __future__ import annotations

from inferaudit.intent.claims.build import ClaimInput, build_claim, claim_input
from inferaudit.intent.claims.files import (
    ClaimImportError,
    csv_cell,
    csv_uncell,
    dump_claims,
    parse_claims,
    read_claims,
    seed_claims,
)
from inferaudit.intent.claims.findings import Finding, findings
from inferaudit.intent.claims.model import (
    PROVENANCE,
    SCHEMA_VERSION,
    SELF_DISCLOSURE,
    Certainty,
    Claim,
    ClaimStatus,
    Provenance,
    Quantity,
    vendor_name,
)
from inferaudit.intent.claims.registry import (
    ClaimStore,
    ImportResult,
    StoredClaim,
    StoredClaimError,
)
from inferaudit.intent.claims.signing import (
    PREDICATE_TYPE,
    SIGNER_NAME,
    ClaimTooLargeError,
    Signing,
    claim_statement,
    publish_claims,
)

__all__ = [
    "PREDICATE_TYPE",
    "PROVENANCE",
    "SCHEMA_VERSION",
    "SELF_DISCLOSURE",
    "SIGNER_NAME",
    "Certainty",
    "Claim",
    "ClaimImportError",
    "ClaimInput",
    "ClaimStatus",
    "ClaimStore",
    "ClaimTooLargeError",
    "Finding",
    "ImportResult",
    "Provenance",
    "Quantity",
    "Signing",
    "StoredClaim",
    "StoredClaimError",
    "build_claim",
    "claim_input",
    "claim_statement",
    "csv_cell",
    "csv_uncell",
    "dump_claims",
    "findings",
    "parse_claims",
    "publish_claims",
    "read_claims",
    "seed_claims",
    "vendor_name",
]
