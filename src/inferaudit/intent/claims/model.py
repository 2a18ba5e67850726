"""Claims vocabulary and model: what one capacity claim says, frozen and validated.

A claim is one statement of promised capacity with its subject, quantities (each with basis,
precision, sparsity, as-of date), status, certainty and sources (each with a provenance class and
a quote). The model refines ``data/capacity_claim.schema.json`` (schema 0.1) and keeps its field
names, so files in that shape import as they are. Refinements:

- ``subject.deployment``: the id a ``RunSpec.deployment`` names, for reconciliation;
- ``serving``: model, precision, concurrency, context, SLO and declared techniques of a
  throughput claim, which the roofline check and reconciliation need;
- ``supersedes`` and ``part_of`` relations besides ``related_claims``;
- ``Source.provenance``: the six provenance classes derived from the finer ``source_class``.

Numbers are strict: ``"value": "5000"`` (a string) is refused, not coerced, and a quantity of any
metric but ``other`` cannot be negative.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inferaudit.errors import ConfigError
from inferaudit.intent import catalog
from inferaudit.intent.roofline import Technique
from inferaudit.measure.protocol import SLO

SCHEMA_VERSION: Literal["0.1"] = "0.1"

ClaimType = Literal[
    "investment_signing",
    "capacity_figure",
    "deployment_report",
    "procurement",
    "production_estimate",
    "policy_target",
    "corporate_event",
    "spec_claim",
    "performance_claim",
    "market_claim",
]
Role = Literal[
    "buyer",
    "government",
    "operator",
    "owner",
    "chip_vendor",
    "system_integrator",
    "investor",
    "user",
    "issuer",
    "other",
]
Metric = Literal[
    "investment",
    "compute",
    "accelerator_count",
    "card_count",
    "server_count",
    "rack_count",
    "power",
    "units_produced",
    "revenue",
    "tokens_per_second",
    "cost_per_million_tokens",
    "memory_bandwidth",
    "memory_capacity",
    "other",
]
Basis = Literal[
    "signed",
    "announced",
    "planned_target",
    "installed",
    "operational",
    "measured",
    "peak_theoretical",
    "estimated",
    "derived",
]
Precision = Literal[
    "fp4",
    "fp8",
    "int8",
    "fp16",
    "bf16",
    "tf32",
    "fp32",
    "fp64",
    "mixed",
    "unspecified",
    "not_applicable",
]
ClaimStatus = Literal[
    "rumored",
    "announced_intent",
    "signed",
    "planned",
    "under_construction",
    "installed_unverified",
    "operational_claimed",
    "operational_verified",
    "decommissioned",
    "cancelled",
    "not_applicable",
    "unknown",
]
Certainty = Literal["confirmed", "likely", "unlikely", "unknown"]
SourceClass = Literal[
    "vendor",
    "buyer_or_operator",
    "government_local",
    "government_foreign",
    "state_media",
    "independent_media",
    "analyst",
    "regulator_filing",
    "aggregator_or_blog",
    "community_dataset",
    "independent_measurement",
    "unknown",
]

_PARTIAL_DATE = re.compile(r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$")


class Provenance(StrEnum):
    """Who the information comes from, in six classes (plus unknown)."""

    vendor_disclosure = "vendor disclosure"
    government_disclosure = "government disclosure"
    media = "media"
    aggregator = "aggregator"
    official_estimate = "official estimate"
    independent_measurement = "independent measurement"
    unknown = "unknown"


# source_class (schema 0.1) -> provenance. A buyer's, operator's or filer's statement about its
# own capacity is a self-disclosure like a vendor's; state media relays the government; a foreign
# government's figure about someone else's capacity (e.g. an export-control estimate) and an
# analyst's are estimates.
PROVENANCE: dict[str, Provenance] = {
    "vendor": Provenance.vendor_disclosure,
    "buyer_or_operator": Provenance.vendor_disclosure,
    "regulator_filing": Provenance.vendor_disclosure,
    "government_local": Provenance.government_disclosure,
    "state_media": Provenance.government_disclosure,
    "government_foreign": Provenance.official_estimate,
    "analyst": Provenance.official_estimate,
    "independent_media": Provenance.media,
    "aggregator_or_blog": Provenance.aggregator,
    "community_dataset": Provenance.aggregator,
    "independent_measurement": Provenance.independent_measurement,
    "unknown": Provenance.unknown,
}
if set(PROVENANCE) != set(get_args(SourceClass)):  # our own table, checked at import
    raise AssertionError("PROVENANCE must map every source_class")
SELF_DISCLOSURE = frozenset({Provenance.vendor_disclosure, Provenance.government_disclosure})


def _vendor_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def vendor_name(accelerator_key: str) -> str:
    """The catalog's vendor name for a hardware key like ``metax/c500`` (else the prefix)."""
    try:
        return catalog.accelerator(accelerator_key).vendor
    except ConfigError:
        pass
    prefix = _vendor_key(accelerator_key.split("/")[0])
    for acc in catalog.accelerators():
        if _vendor_key(acc.vendor).startswith(prefix):
            return acc.vendor
    return accelerator_key.split("/")[0]


class _ClaimModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# Numbers as numbers: a string such as "5000" is refused rather than coerced (an int is a float).
Number = Annotated[float, Field(strict=True)]
Count = Annotated[int, Field(strict=True, ge=0)]


def _partial_date(value: str | None) -> str | None:
    if value is not None and not _PARTIAL_DATE.match(value):
        raise ValueError(f"{value!r} is not an ISO date (YYYY, YYYY-MM or YYYY-MM-DD)")
    return value


class Entity(_ClaimModel):
    name: str = Field(min_length=1)
    name_local: str | None = None
    role: Role


class Site(_ClaimModel):
    name: str | None = None
    name_local: str | None = None
    city: str | None = None
    province: str | None = None
    country: str | None = None
    lat: Annotated[float, Field(strict=True, ge=-90, le=90)] | None = None
    lon: Annotated[float, Field(strict=True, ge=-180, le=180)] | None = None

    def label(self) -> str:
        """A short human label: the site's name, else its city, province or country."""
        return self.name or self.city or self.province or self.country or "unnamed site"

    def matches(self, text: str) -> bool:
        needle = text.lower()
        fields = (self.name, self.name_local, self.city, self.province, self.country)
        return any(needle in f.lower() for f in fields if f)


class Subject(_ClaimModel):
    entities: tuple[Entity, ...] = Field(min_length=1)
    site: Site | None = None
    project: str | None = None
    deployment: str | None = None  # the id a RunSpec.deployment names

    def names(self, role: str) -> list[str]:
        return [e.name for e in self.entities if e.role == role]


class Quantity(_ClaimModel):
    metric: Metric
    value: Number | None
    value_low: Number | None = None
    value_high: Number | None = None
    bound: Literal["exact", "at_most", "at_least", "approximately", "range"] = "exact"
    unit: str = Field(min_length=1)
    precision: Precision = "unspecified"
    sparsity: Literal["dense", "sparse", "unspecified", "not_applicable"] = "unspecified"
    basis: Basis
    as_of: str | None = None
    derivation: str | None = None

    _as_of = field_validator("as_of")(_partial_date)

    @model_validator(mode="after")
    def _not_negative(self) -> Quantity:
        if self.metric == "other":
            return self
        for name in ("value", "value_low", "value_high"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} {v:g}: a {self.metric} quantity cannot be negative")
        return self

    def label(self) -> str:
        v = self.value
        value = "?" if v is None else f"{v:,.0f}" if v == int(v) else f"{v:,.6g}"
        return f"{value} {self.unit} ({self.basis})"


class Hardware(_ClaimModel):
    accelerator: str = Field(min_length=1)  # catalog key, e.g. "alibaba-thead/ppu"
    count: Count | None = None
    count_unit: Literal["cards", "chips", "dies", "servers", "unspecified"] | None = None
    server_count: Count | None = None
    contracting_party: str | None = None


class Serving(_ClaimModel):
    """How a throughput claim is served: what the roofline check and reconciliation need."""

    model: str = Field(min_length=1)  # catalog id/alias, and the endpoint's model name
    precision: str | None = None  # weight format, e.g. bf16, fp8 (None: the model's default)
    concurrency: Annotated[int, Field(strict=True, ge=1)] | None = None  # concurrent sequences
    context_tokens: Count | None = None  # prompt + output per sequence
    slo: str | None = None  # e.g. "ttft_p99=2000ms,tpot_p99=100ms"
    techniques: tuple[Technique, ...] = ()

    @field_validator("slo")
    @classmethod
    def _slo(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                SLO.parse(v)
            except ConfigError as exc:
                raise ValueError(exc.diagnostics()) from None
        return v

    def slo_bounds(self) -> dict[str, float]:
        return {} if self.slo is None else SLO.parse(self.slo).bounds_ms


class Source(_ClaimModel):
    url: str = Field(min_length=1)
    archived_url: str | None = None
    title: str | None = None
    publisher: str | None = None
    source_class: SourceClass
    cites: str | None = None
    language: str | None = None
    published: str | None = None
    accessed: str | None = None  # retrieval date
    quote: str | None = Field(default=None, max_length=600)

    _dates = field_validator("published", "accessed")(_partial_date)

    @property
    def provenance(self) -> Provenance:
        return PROVENANCE[self.source_class]


class EventDates(_ClaimModel):
    event: str | None = None
    event_year_inferred: bool = False
    target_completion: str | None = None
    first_reported: str | None = None


class PlausibilityCheck(_ClaimModel):
    check: str
    result: Literal["pass", "fail", "inconclusive", "not_run"]
    details: str | None = None


class Verification(_ClaimModel):
    level: (
        Literal[
            "none",
            "single_source",
            "multi_source_same_origin",
            "multi_source_independent",
            "documentary",
            "remote_sensing",
            "telemetry_attested",
            "benchmark_measured",
        ]
        | None
    ) = None
    methods: tuple[str, ...] = ()
    plausibility_checks: tuple[PlausibilityCheck, ...] = ()
    measured_over_claimed: Number | None = None


class Discrepancy(_ClaimModel):
    field: str
    values: tuple[str, ...]
    note: str | None = None


class RecordMeta(_ClaimModel):
    created: str
    updated: str | None = None
    author: str | None = None
    schema_version: Literal["0.1"] = SCHEMA_VERSION

    _dates = field_validator("created", "updated")(_partial_date)


class Claim(_ClaimModel):
    """One capacity claim (immutable; corrections supersede)."""

    claim_id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{2,80}$")
    claim_type: ClaimType
    statement: str = Field(min_length=1)
    statement_original: str | None = None
    subject: Subject
    quantities: tuple[Quantity, ...] = ()
    hardware: tuple[Hardware, ...] = ()
    serving: Serving | None = None
    status: ClaimStatus
    epoch_status: Literal["Existing", "Planned", "Decommissioned"] | None = None
    certainty: Certainty
    certainty_note: str | None = None
    event_dates: EventDates | None = None
    sources: tuple[Source, ...] = Field(min_length=1)
    verification: Verification | None = None
    discrepancies: tuple[Discrepancy, ...] = ()
    related_claims: tuple[str, ...] = ()
    supersedes: str | None = None
    part_of: str | None = None
    record: RecordMeta
    notes: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form: absent optional fields left out, so schema-0.1 input round-trips."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def canonical(self) -> bytes:
        """RFC 8785 bytes of ``to_json()``: what is stored, hashed and signed."""
        return rfc8785.dumps(self.to_json())

    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def site_label(self) -> str:
        return self.subject.site.label() if self.subject.site else "unspecified site"

    @property
    def vendors(self) -> list[str]:
        """Chip vendors: entities with that role and the vendor part of hardware keys."""
        named = self.subject.names("chip_vendor")
        from_hw = [vendor_name(h.accelerator) for h in self.hardware]
        seen = [_vendor_key(v) for v in named]

        def known(v: str) -> bool:
            k = _vendor_key(v)
            return any(k.startswith(s) or s.startswith(k) for s in seen)

        return named + list(dict.fromkeys(v for v in from_hw if not known(v)))

    @property
    def operator(self) -> str | None:
        ops = self.subject.names("operator") or self.subject.names("owner")
        return ops[0] if ops else None

    @property
    def project(self) -> str:
        return self.subject.project or self.claim_id

    @property
    def provenance(self) -> frozenset[Provenance]:
        return frozenset(s.provenance for s in self.sources)

    def quantity(self, metric: str, *, derived: bool = False) -> Quantity | None:
        """The first quantity of a metric with a value (not derived unless asked)."""
        for q in self.quantities:
            if q.metric == metric and q.value is not None and (derived or q.basis != "derived"):
                return q
        return None
