"""One claim from flat fields (``claims add``, the demo's claim): a typed input, then the model.

``ClaimInput`` holds what a person types for one claim, one source and at most one quantity,
hardware line and serving block; ``build_claim`` arranges it into the nested ``Claim`` and
validates it, raising ``ClaimsError`` naming every bad field.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferaudit.errors import ClaimsError
from inferaudit.intent.claims.files import pydantic_problem
from inferaudit.intent.claims.model import (
    Basis,
    Certainty,
    Claim,
    ClaimStatus,
    ClaimType,
    Metric,
    Precision,
    Role,
    SourceClass,
)
from inferaudit.intent.roofline import Technique


class ClaimInput(BaseModel):
    """The flat fields of one claim. Enumerated fields take the model's vocabulary."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # what is claimed, by whom, how sure
    claim_id: str
    statement: str
    status: ClaimStatus
    certainty: Certainty
    claim_type: ClaimType = "capacity_figure"
    statement_original: str | None = None
    entities: tuple[tuple[str, Role], ...] = ()
    # the one source
    source_url: str
    source_class: SourceClass
    quote: str | None = None
    accessed: str | None = None
    # where
    site: str | None = None
    city: str | None = None
    country: str | None = None
    project: str | None = None
    deployment: str | None = None
    # hardware
    accelerator: str | None = None
    count: Annotated[int, Field(strict=True)] | None = None
    # the one quantity
    metric: Metric | None = None
    value: Annotated[float, Field(strict=True)] | None = None
    unit: str | None = None
    basis: Basis | None = None
    precision: Precision = "unspecified"
    sparsity: str = "unspecified"
    as_of: str | None = None
    # serving (throughput claims)
    model: str | None = None
    concurrency: Annotated[int, Field(strict=True)] | None = None
    context_tokens: Annotated[int, Field(strict=True)] | None = None
    slo: str | None = None
    techniques: tuple[Technique, ...] = ()
    # relations and record
    supersedes: str | None = None
    part_of: str | None = None
    related: tuple[str, ...] = ()
    author: str | None = None
    created: str | None = None  # default: today (UTC)


def _present(pairs: Sequence[tuple[str, object]]) -> dict[str, object]:
    return {k: v for k, v in pairs if v not in (None, "", [], ())}


def build_claim(inp: ClaimInput) -> Claim:
    """The claim ``inp`` describes; raises ``ClaimsError`` naming the bad fields."""
    subject: dict[str, object] = {
        "entities": [{"name": n, "role": r} for n, r in inp.entities]
        or [{"name": "unspecified", "role": "other"}],
        **_present([("project", inp.project), ("deployment", inp.deployment)]),
    }
    site = _present([("name", inp.site), ("city", inp.city), ("country", inp.country)])
    if site:
        subject["site"] = site
    record = _present(
        [("created", inp.created or datetime.now(UTC).date().isoformat()), ("author", inp.author)]
    )
    source = _present(
        [
            ("url", inp.source_url),
            ("source_class", inp.source_class),
            ("quote", inp.quote),
            ("accessed", inp.accessed),
        ]
    )
    data: dict[str, object] = {
        "claim_id": inp.claim_id,
        "claim_type": inp.claim_type,
        "statement": inp.statement,
        "status": inp.status,
        "certainty": inp.certainty,
        "subject": subject,
        "sources": [source],
        "record": record,
        **_present(
            [
                ("statement_original", inp.statement_original),
                ("supersedes", inp.supersedes),
                ("part_of", inp.part_of),
                ("related_claims", list(inp.related)),
            ]
        ),
    }
    if inp.accelerator:
        data["hardware"] = [
            {"accelerator": inp.accelerator, "count": inp.count, "count_unit": "cards"}
        ]
    if inp.metric is not None:
        quantity: dict[str, object] = {
            "metric": inp.metric,
            "value": inp.value,
            "unit": inp.unit,
            "basis": inp.basis,
            "precision": inp.precision,
            "sparsity": inp.sparsity,
        }
        if inp.as_of:
            quantity["as_of"] = inp.as_of
        data["quantities"] = [quantity]
    if inp.model:
        weights = None if inp.precision in ("unspecified", "mixed") else inp.precision
        data["serving"] = _present(
            [
                ("model", inp.model),
                ("precision", weights),
                ("concurrency", inp.concurrency),
                ("context_tokens", inp.context_tokens),
                ("slo", inp.slo),
                ("techniques", [t.value for t in inp.techniques]),
            ]
        )
    try:
        return Claim.model_validate(data)
    except ValidationError as exc:
        raise ClaimsError(f"claim {inp.claim_id!r}: {pydantic_problem(exc)}") from None


def claim_input(**fields: object) -> ClaimInput:
    """``ClaimInput(**fields)`` with a ``ClaimsError`` naming the bad fields (for flags)."""
    try:
        return ClaimInput.model_validate(fields)
    except ValidationError as exc:
        raise ClaimsError(f"claim {fields.get('claim_id')!r}: {pydantic_problem(exc)}") from None
