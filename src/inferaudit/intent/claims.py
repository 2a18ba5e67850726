"""Capacity claims: the model, the registry (SQL tables beside the ledger), import and export.

A claim is one statement of promised capacity with its subject, quantities (each with basis,
precision, sparsity, as-of date), status, certainty and sources (each with a provenance class and
a quote). The model refines ``data/capacity_claim.schema.json`` (schema 0.1) and keeps its field
names, so files in that shape import as they are. Refinements:

- ``subject.deployment``: the id a ``RunSpec.deployment`` names, for reconciliation;
- ``serving``: model, precision, concurrency, context, SLO and declared techniques of a
  throughput claim, which the roofline check and reconciliation need;
- ``supersedes`` and ``part_of`` relations besides ``related_claims``;
- ``Source.provenance``: the six provenance classes derived from the finer ``source_class``.

Claims are immutable: the registry refuses to change a stored claim; a correction is a new claim
that ``supersedes`` it. ``findings`` states consistency problems (sum of parts) in words.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from inferaudit.errors import ClaimsError, ConfigError
from inferaudit.intent import catalog
from inferaudit.intent.roofline import Technique
from inferaudit.measure.protocol import SLO

SCHEMA_VERSION = "0.1"
PREDICATE_TYPE = "https://inferaudit.dev/capacity-claim/v1"

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
Status = Literal[
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
assert set(PROVENANCE) == set(get_args(SourceClass))
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


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _partial_date(value: str | None) -> str | None:
    if value is not None and not _PARTIAL_DATE.match(value):
        raise ValueError(f"{value!r} is not an ISO date (YYYY, YYYY-MM or YYYY-MM-DD)")
    return value


class Entity(_Frozen):
    name: str = Field(min_length=1)
    name_local: str | None = None
    role: Role


class Site(_Frozen):
    name: str | None = None
    name_local: str | None = None
    city: str | None = None
    province: str | None = None
    country: str | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)

    def label(self) -> str:
        """A short human label: the site's name, else its city, province or country."""
        return self.name or self.city or self.province or self.country or "unnamed site"

    def matches(self, text: str) -> bool:
        needle = text.lower()
        fields = (self.name, self.name_local, self.city, self.province, self.country)
        return any(needle in f.lower() for f in fields if f)


class Subject(_Frozen):
    entities: tuple[Entity, ...] = Field(min_length=1)
    site: Site | None = None
    project: str | None = None
    deployment: str | None = None  # the id a RunSpec.deployment names

    def names(self, role: str) -> list[str]:
        return [e.name for e in self.entities if e.role == role]


class Quantity(_Frozen):
    metric: Metric
    value: float | None
    value_low: float | None = None
    value_high: float | None = None
    bound: Literal["exact", "at_most", "at_least", "approximately", "range"] = "exact"
    unit: str = Field(min_length=1)
    precision: Precision = "unspecified"
    sparsity: Literal["dense", "sparse", "unspecified", "not_applicable"] = "unspecified"
    basis: Basis
    as_of: str | None = None
    derivation: str | None = None

    _as_of = field_validator("as_of")(_partial_date)

    def label(self) -> str:
        v = self.value
        value = "?" if v is None else f"{v:,.0f}" if v == int(v) else f"{v:,.6g}"
        return f"{value} {self.unit} ({self.basis})"


class Hardware(_Frozen):
    accelerator: str = Field(min_length=1)  # catalog key, e.g. "alibaba-thead/ppu"
    count: int | None = Field(default=None, ge=0)
    count_unit: Literal["cards", "chips", "dies", "servers", "unspecified"] | None = None
    server_count: int | None = Field(default=None, ge=0)
    contracting_party: str | None = None


class Serving(_Frozen):
    """How a throughput claim is served: what the roofline check and reconciliation need."""

    model: str = Field(min_length=1)  # catalog id/alias, and the endpoint's model name
    precision: str | None = None  # weight format, e.g. bf16, fp8 (None: the model's default)
    concurrency: int | None = Field(default=None, ge=1)  # total concurrent sequences
    context_tokens: int | None = Field(default=None, ge=0)  # prompt + output per sequence
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


class Source(_Frozen):
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


class EventDates(_Frozen):
    event: str | None = None
    event_year_inferred: bool = False
    target_completion: str | None = None
    first_reported: str | None = None


class PlausibilityCheck(_Frozen):
    check: str
    result: Literal["pass", "fail", "inconclusive", "not_run"]
    details: str | None = None


class Verification(_Frozen):
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
    measured_over_claimed: float | None = None


class Discrepancy(_Frozen):
    field: str
    values: tuple[str, ...]
    note: str | None = None


class RecordMeta(_Frozen):
    created: str
    updated: str | None = None
    author: str | None = None
    schema_version: Literal["0.1"] = SCHEMA_VERSION

    _dates = field_validator("created", "updated")(_partial_date)


class Claim(_Frozen):
    """One capacity claim (immutable; corrections supersede)."""

    claim_id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{2,80}$")
    claim_type: ClaimType
    statement: str = Field(min_length=1)
    statement_original: str | None = None
    subject: Subject
    quantities: tuple[Quantity, ...] = ()
    hardware: tuple[Hardware, ...] = ()
    serving: Serving | None = None
    status: Status
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


# ---------------------------------------------------------------------------------------------
# Findings: consistency rules over a claim, its stated parts and the claims that are part of it.


@dataclass(frozen=True)
class Finding:
    claim_id: str
    rule: str  # "sum-of-parts", "derivation"
    severity: Literal["discrepancy", "consistent"]
    message: str


_SUM = re.compile(r"^\s*(\d+(?:\.\d+)?(?:\s*\+\s*\d+(?:\.\d+)?)+)\s*(?:\(|$)")
_COUNT_METRICS = {"card_count": "cards", "accelerator_count": "chips"}
_REL_TOL = 1e-6


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _REL_TOL * max(abs(a), abs(b), 1.0)


def _sum_terms(derivation: str | None) -> list[float] | None:
    m = _SUM.match(derivation or "")
    return None if m is None else [float(t) for t in m.group(1).split("+")]


def _fmt(x: float) -> str:
    return f"{x:,.6g}"


def _compare(claim: Claim, total: Quantity, parts: list[float], what: str) -> Finding:
    assert total.value is not None
    s = sum(parts)
    terms = " + ".join(_fmt(p) for p in parts)
    if _close(s, total.value):
        return Finding(
            claim.claim_id,
            "sum-of-parts",
            "consistent",
            f"{total.metric}: {what} {terms} = {_fmt(s)} {total.unit} equals the stated total",
        )
    diff = s - total.value
    return Finding(
        claim.claim_id,
        "sum-of-parts",
        "discrepancy",
        f"{total.metric}: stated total {_fmt(total.value)} {total.unit} ({total.basis}) but "
        f"{what} sum to {terms} = {_fmt(s)} {total.unit} "
        f"({diff:+,.6g}, {diff / total.value:+.1%})",
    )


def findings(claim: Claim, registry: Iterable[Claim] = ()) -> list[Finding]:
    """Sum-of-parts consistency of one claim, stated as findings.

    Parts are (1) the terms of a derived quantity whose derivation is a sum ("a + b + c ..."),
    (2) the counts of the claim's hardware lines, (3) the same metric and unit in the claims
    whose ``part_of`` is this claim. Each is held against the claim's stated (non-derived)
    quantity of that metric and unit. A derived quantity is also checked against its own sum.
    """
    out: list[Finding] = []
    stated = [q for q in claim.quantities if q.basis != "derived" and q.value is not None]
    for q in claim.quantities:
        terms = _sum_terms(q.derivation) if q.basis == "derived" else None
        if terms is None:
            continue
        if q.value is not None and not _close(sum(terms), q.value):
            out.append(
                Finding(
                    claim.claim_id,
                    "derivation",
                    "discrepancy",
                    f"{q.metric}: derived value {_fmt(q.value)} {q.unit} but its derivation "
                    f"{q.derivation!r} sums to {_fmt(sum(terms))}",
                )
            )
        for total in stated:
            if (total.metric, total.unit) == (q.metric, q.unit):
                out.append(_compare(claim, total, terms, "the stated parts"))
    counts = [h.count for h in claim.hardware]
    if len(counts) > 1 and all(c is not None for c in counts):
        units = {h.count_unit for h in claim.hardware}
        for total in stated:
            if total.metric in _COUNT_METRICS and units == {_COUNT_METRICS[total.metric]}:
                parts = [float(c) for c in counts if c is not None]
                out.append(_compare(claim, total, parts, "the hardware lines"))
    children = [c for c in registry if c.part_of == claim.claim_id]
    for total in stated:
        parts: list[float] = []
        for child in children:
            q = next(
                (
                    cq
                    for cq in child.quantities
                    if (cq.metric, cq.unit) == (total.metric, total.unit)
                    and cq.basis != "derived"
                    and cq.value is not None
                ),
                None,
            )
            if q is not None and q.value is not None:
                parts.append(q.value)
        if parts:
            names = ", ".join(c.claim_id for c in children)
            out.append(_compare(claim, total, parts, f"the part claims ({names})"))
    return out


# ---------------------------------------------------------------------------------------------
# Reading files: JSON (object or array), JSONL, CSV. Every bad record is reported with its line.


@dataclass(frozen=True)
class Located:
    line: int
    data: dict[str, Any]


class ClaimImportError(ClaimsError):
    """One or more records of a file are bad; each problem names its line and field."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(
            f"{path}: {len(problems)} bad record(s), nothing imported: " + "; ".join(problems)
        )


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _read_json(text: str, path: str) -> list[Located]:
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if text[pos : pos + 1] == "{":
        value, _ = _decode(decoder, text, pos, path)
        return [Located(_line_of(text, pos), value)]
    if text[pos : pos + 1] != "[":
        raise ClaimsError(f"{path} line {_line_of(text, pos)}: expected a JSON array or object")
    out: list[Located] = []
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise ClaimsError(f"{path}: JSON array is not closed")
        if text[pos] == "]":
            return out
        value, end = _decode(decoder, text, pos, path)
        out.append(Located(_line_of(text, pos), value))
        pos = end


def _decode(decoder: json.JSONDecoder, text: str, pos: int, path: str) -> tuple[Any, int]:
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise ClaimsError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from None


def _read_jsonl(text: str, path: str) -> list[Located]:
    out: list[Located] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(Located(n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ClaimsError(f"{path} line {n}: invalid JSON ({exc.msg})") from None
    return out


# CSV: one claim per row. Nested objects become dotted columns (``subject.site.city``); lists
# are JSON text in one cell (``quantities``, ``sources``, ...). An empty cell is an absent field.
def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif value is None:
            out[name] = ""
        else:
            out[name] = str(value)
    return out


def _list_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted names of the fields that hold lists (tuples) in the claim model."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        ann = info.annotation
        options = get_args(ann) if get_origin(ann) in (Union, UnionType) else (ann,)
        for opt in options:
            if get_origin(opt) is tuple:
                out.add(prefix + name)
            elif isinstance(opt, type) and issubclass(opt, BaseModel):
                out |= _list_fields(opt, f"{prefix}{name}.")
    return out


def _read_csv(text: str, path: str) -> list[Located]:
    lists = _list_fields(Claim)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    out: list[Located] = []
    start = reader.line_num + 1
    for row in reader:
        if not any(c.strip() for c in row):
            start = reader.line_num + 1
            continue
        if len(row) != len(header):
            raise ClaimsError(
                f"{path} line {start}: {len(row)} cells but the header has {len(header)}"
            )
        data: dict[str, Any] = {}
        for name, raw in zip(header, row, strict=True):
            if raw == "":
                continue
            try:
                value = json.loads(raw) if name in lists else raw
            except json.JSONDecodeError as exc:
                raise ClaimsError(
                    f"{path} line {start}: column {name}: invalid JSON ({exc.msg})"
                ) from None
            node = data
            *parents, leaf = name.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        out.append(Located(start, data))
        start = reader.line_num + 1
    return out


def _format_of(path: Path, fmt: str | None) -> str:
    chosen = (fmt or path.suffix.lstrip(".")).lower()
    if chosen not in ("json", "jsonl", "csv"):
        raise ConfigError(f"{path}: format {chosen!r}; expected json, jsonl or csv")
    return chosen


def _pydantic_problem(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"field {field}: {err['msg']}")
    return ", ".join(parts)


def parse_claims(text: str, fmt: str, path: str = "<input>") -> list[Claim]:
    """Parse and validate every record; raise ``ClaimImportError`` listing every bad one."""
    reader = {"json": _read_json, "jsonl": _read_jsonl, "csv": _read_csv}[fmt]
    located = reader(text, path)
    claims: list[Claim] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for item in located:
        if not isinstance(item.data, dict):
            problems.append(f"line {item.line}: a claim must be a JSON object")
            continue
        label = f"line {item.line}"
        if isinstance(item.data.get("claim_id"), str):
            label += f" ({item.data['claim_id']})"
        try:
            claim = Claim.model_validate(item.data)
        except ValidationError as exc:
            problems.append(f"{label}: {_pydantic_problem(exc)}")
            continue
        if claim.claim_id in seen:
            problems.append(f"{label}: field claim_id: duplicate of line {seen[claim.claim_id]}")
            continue
        seen[claim.claim_id] = item.line
        claims.append(claim)
    if problems:
        raise ClaimImportError(path, problems)
    return claims


def read_claims(path: Path, fmt: str | None = None) -> list[Claim]:
    """Read a claims file (format from ``fmt`` or the extension)."""
    chosen = _format_of(path, fmt)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ClaimsError(f"{path}: not UTF-8 text") from None
    return parse_claims(text, chosen, str(path))


def seed_claims() -> list[Claim]:
    """The example data set shipped with the package (``data/seed_claims.json``)."""
    from importlib import resources

    text = resources.files("inferaudit.data").joinpath("seed_claims.json").read_text("utf-8")
    return parse_claims(text, "json", "seed_claims.json")


def dump_claims(claims: Sequence[Claim], fmt: str) -> str:
    """Claims as JSON (array), JSONL or CSV text; ``parse_claims`` reads each back unchanged."""
    if fmt == "json":
        return json.dumps([c.to_json() for c in claims], ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(
            json.dumps(c.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
            for c in claims
        )
    if fmt == "csv":
        rows = [_flatten(c.to_json()) for c in claims]
        header = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    raise ConfigError(f"export format {fmt!r}; expected json, jsonl or csv")


# ---------------------------------------------------------------------------------------------
# The registry: SQLAlchemy Core tables in the ledger's database.

metadata = MetaData()
claims_table = Table(
    "capacity_claims",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("claim_id", String(100), nullable=False, unique=True),
    Column("sha256", String(64), nullable=False),
    Column("body", Text, nullable=False),  # RFC 8785 JSON of the claim
    Column("supersedes", String(100), nullable=True, unique=True),  # no forked corrections
    Column("added_at", String(40), nullable=False),
    Column("ledger_index", Integer, nullable=True),
)


@dataclass(frozen=True)
class StoredClaim:
    claim: Claim
    seq: int
    sha256: str
    added_at: str
    superseded_by: str | None
    ledger_index: int | None


@dataclass(frozen=True)
class ImportResult:
    added: list[str]
    unchanged: list[str]  # already stored with identical content


class ClaimStore:
    """The claims registry. Every write is one transaction: all records or none."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            metadata.create_all(engine)
        except SQLAlchemyError as exc:
            raise ClaimsError(f"claims database: {exc.__class__.__name__}: {exc}") from None

    def add(self, claims: Sequence[Claim], *, path: str = "<input>") -> ImportResult:
        """Store new claims; identical ones already stored are skipped, changed ones refused."""
        added: list[str] = []
        unchanged: list[str] = []
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(claims_table.c.claim_id, claims_table.c.sha256, claims_table.c.supersedes)
            ).all()
            stored = {r.claim_id: r.sha256 for r in rows}
            superseded = {r.supersedes: r.claim_id for r in rows if r.supersedes}
            incoming = {c.claim_id for c in claims}
            problems: list[str] = []
            for c in claims:
                if c.claim_id in stored:
                    if stored[c.claim_id] == c.digest():
                        unchanged.append(c.claim_id)
                        continue
                    problems.append(
                        f"{c.claim_id}: already stored with other content; claims are "
                        "immutable, add a correction that supersedes it"
                    )
                    continue
                for field, ref in (("supersedes", c.supersedes), ("part_of", c.part_of)):
                    if ref is not None and ref not in stored and ref not in incoming:
                        problems.append(f"{c.claim_id}: field {field}: unknown claim {ref!r}")
                if c.supersedes is not None:
                    if c.supersedes == c.claim_id:
                        problems.append(
                            f"{c.claim_id}: field supersedes: a claim cannot supersede itself"
                        )
                    elif c.supersedes in superseded:
                        problems.append(
                            f"{c.claim_id}: field supersedes: {c.supersedes} is already "
                            f"superseded by {superseded[c.supersedes]}"
                        )
                    superseded[c.supersedes] = c.claim_id
            if problems:
                raise ClaimImportError(path, problems)
            for c in claims:
                if c.claim_id in unchanged:
                    continue
                conn.execute(
                    insert(claims_table).values(
                        claim_id=c.claim_id,
                        sha256=c.digest(),
                        body=c.canonical().decode("utf-8"),
                        supersedes=c.supersedes,
                        added_at=now,
                    )
                )
                added.append(c.claim_id)
        return ImportResult(added, unchanged)

    def set_ledger_index(self, claim_id: str, index: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                claims_table.update()
                .where(claims_table.c.claim_id == claim_id)
                .values(ledger_index=index)
            )

    def _rows(self) -> Iterator[StoredClaim]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(claims_table).order_by(claims_table.c.seq)).all()
        by = {r.supersedes: r.claim_id for r in rows if r.supersedes}
        for r in rows:
            claim = Claim.model_validate_json(r.body)
            assert claim.digest() == r.sha256, f"stored claim {r.claim_id} does not match its hash"
            yield StoredClaim(
                claim, r.seq, r.sha256, r.added_at, by.get(r.claim_id), r.ledger_index
            )

    def all(self) -> list[StoredClaim]:
        return list(self._rows())

    def get(self, claim_id: str) -> StoredClaim:
        for s in self._rows():
            if s.claim.claim_id == claim_id:
                return s
        raise ClaimsError(f"no claim {claim_id!r} in the registry")

    def query(
        self,
        *,
        site: str | None = None,
        vendor: str | None = None,
        status: str | None = None,
        certainty: str | None = None,
        include_superseded: bool = False,
    ) -> list[StoredClaim]:
        """Claims matching every filter (site and vendor: case-insensitive substrings)."""
        for name, value, allowed in (
            ("status", status, get_args(Status)),
            ("certainty", certainty, get_args(Certainty)),
        ):
            if value is not None and value not in allowed:
                raise ConfigError(f"--{name} {value!r}; expected one of {', '.join(allowed)}")
        out = []
        for s in self._rows():
            c = s.claim
            if s.superseded_by and not include_superseded:
                continue
            if site and not (c.subject.site and c.subject.site.matches(site)):
                continue
            if vendor and not any(vendor.lower() in v.lower() for v in c.vendors):
                continue
            if status and c.status != status:
                continue
            if certainty and c.certainty != certainty:
                continue
            out.append(s)
        return out

    def supersede(self, old_id: str, new: Claim) -> ImportResult:
        """Store ``new`` as the correction of ``old_id`` (it must say ``supersedes: old_id``)."""
        self.get(old_id)
        if new.supersedes != old_id:
            raise ClaimsError(
                f"{new.claim_id}: field supersedes is {new.supersedes!r}, expected {old_id!r}"
            )
        return self.add([new])


def build_claim(
    *,
    claim_id: str,
    statement: str,
    status: str,
    certainty: str,
    source_url: str,
    source_class: str,
    claim_type: str = "capacity_figure",
    statement_original: str | None = None,
    entities: Sequence[tuple[str, str]] = (),
    site: str | None = None,
    city: str | None = None,
    country: str | None = None,
    project: str | None = None,
    deployment: str | None = None,
    accelerator: str | None = None,
    count: int | None = None,
    metric: str | None = None,
    value: float | None = None,
    unit: str | None = None,
    basis: str | None = None,
    precision: str = "unspecified",
    sparsity: str = "unspecified",
    as_of: str | None = None,
    quote: str | None = None,
    accessed: str | None = None,
    model: str | None = None,
    concurrency: int | None = None,
    context_tokens: int | None = None,
    slo: str | None = None,
    techniques: Sequence[str] = (),
    supersedes: str | None = None,
    part_of: str | None = None,
    related: Sequence[str] = (),
    author: str | None = None,
    created: str | None = None,
) -> Claim:
    """One claim from flat fields (``claims add``); raises ``ClaimsError`` naming bad fields."""
    data: dict[str, Any] = {
        "claim_id": claim_id,
        "claim_type": claim_type,
        "statement": statement,
        "status": status,
        "certainty": certainty,
        "subject": {
            "entities": [{"name": n, "role": r} for n, r in entities]
            or [{"name": "unspecified", "role": "other"}],
        },
        "sources": [
            {
                k: v
                for k, v in (
                    ("url", source_url),
                    ("source_class", source_class),
                    ("quote", quote),
                    ("accessed", accessed),
                )
                if v is not None
            }
        ],
        "record": {"created": created or datetime.now(UTC).date().isoformat()},
    }
    if author:
        data["record"]["author"] = author
    site_fields = {k: v for k, v in (("name", site), ("city", city), ("country", country)) if v}
    if site_fields:
        data["subject"]["site"] = site_fields
    for key, val in (("project", project), ("deployment", deployment)):
        if val:
            data["subject"][key] = val
    if statement_original:
        data["statement_original"] = statement_original
    if accelerator:
        data["hardware"] = [{"accelerator": accelerator, "count": count, "count_unit": "cards"}]
    if metric is not None:
        quantity: dict[str, Any] = {
            "metric": metric,
            "value": value,
            "unit": unit,
            "basis": basis,
            "precision": precision,
            "sparsity": sparsity,
        }
        if as_of:
            quantity["as_of"] = as_of
        data["quantities"] = [quantity]
    if model:
        data["serving"] = {
            k: v
            for k, v in (
                ("model", model),
                ("precision", None if precision in ("unspecified", "mixed") else precision),
                ("concurrency", concurrency),
                ("context_tokens", context_tokens),
                ("slo", slo),
                ("techniques", list(techniques)),
            )
            if v not in (None, [])
        }
    for key, ref in (("supersedes", supersedes), ("part_of", part_of)):
        if ref:
            data[key] = ref
    if related:
        data["related_claims"] = list(related)
    try:
        return Claim.model_validate(data)
    except ValidationError as exc:
        raise ClaimsError(f"claim {claim_id!r}: {_pydantic_problem(exc)}") from None


# ---------------------------------------------------------------------------------------------
# Signing into the ledger: each claim is an in-toto statement of its own predicate type.


def claim_statement(claim: Claim) -> dict[str, Any]:
    """In-toto Statement v1 about one claim; the subject is the claim's canonical bytes."""
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": f"claim:{claim.claim_id}", "digest": {"sha256": claim.digest()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"claim": claim.to_json()},
    }


def sign_claims(store: ClaimStore, claim_ids: Sequence[str], signer: Any, ledger: Any) -> list[int]:
    """Sign each stored claim in a DSSE envelope, append them to the ledger in one batch,
    sign a checkpoint when the ledger has its key, and record each claim's ledger index."""
    from inferaudit.seal import evidence

    if not claim_ids:
        return []
    leaves = []
    for cid in claim_ids:
        payload = evidence.canonical(claim_statement(store.get(cid).claim), "claim statement")
        leaves.append(evidence.envelope_leaf(evidence.sign_envelope(payload, signer)))
    indices: list[int] = ledger.append(leaves)
    if ledger.signer is not None:
        ledger.sign_checkpoint()
    for cid, index in zip(claim_ids, indices, strict=True):
        store.set_ledger_index(cid, index)
    return indices
