"""What the dashboard's pages show, gathered from the stores: the live reconciliation (cached
until a claim or a run is added), a claim, a run, the ledger's checkpoint and its entries.

Nothing here reads every ledger entry or verifies a run: the reconciliation is over the evidence
store's cached ``VerifiedRun``s and is rebuilt only when the claims registry (its row count and
last row) or the evidence store (its ``version``) changed; a ledger page reads the state row and
one page of entries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
from markupsafe import Markup
from sqlalchemy import func, select

from inferaudit.errors import InferauditError
from inferaudit.intent.claims import Claim, ClaimStore, StoredClaim
from inferaudit.intent.claims.registry import claims_table
from inferaudit.intent.reconcile import (
    DEFAULT_TOLERANCE,
    Reconciliation,
    RunJudgement,
    RunSet,
    matches,
    reconcile,
    reconcile_claim,
    status_counts,
)
from inferaudit.intent.rollups import GROUPS, Rollup, rollups
from inferaudit.present.report import ReportData, capacity_charts, provenance_chart
from inferaudit.present.series import RunView, run_view
from inferaudit.present.web.evidence import EvidenceRow, EvidenceStore
from inferaudit.seal.evidence import parse_envelope
from inferaudit.seal.keys import Verifier, b64decode_strict
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import (
    NoteError,
    parse_checkpoint,
    split_cosignature,
    split_note,
    verify_cosignature,
)
from inferaudit.seal.ledger.store import Ledger
from inferaudit.seal.verified import VerifiedRun

PAGE_SIZE = 50
CHART_ROWS = 30  # the largest roll-up rows drawn per group; the tables list every row
ROLLUP_PREVIEW = 25
MAX_NUMBERS = 200  # rows of a verdict's numbers shown
RUN_VIEWS = 32  # run pages' charts kept in memory


class DashboardSource(Protocol):
    """What the dashboard reads (``present.web.service.Service`` is one)."""

    @property
    def claims(self) -> ClaimStore: ...
    @property
    def evidence(self) -> EvidenceStore: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def witness_keys(self) -> tuple[Verifier, ...]: ...
    @property
    def witness_quorum(self) -> int: ...


class PageError(InferauditError):
    """A page cannot be shown: ``status`` 400 (bad input) or 404 (no such thing)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_index(text: str | None, what: str, *, default: int | None = None) -> int:
    """A canonical non-negative decimal below 2^63 (no sign, no leading zeros); else 400."""
    if text is None and default is not None:
        return default
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 19:
        raise PageError(400, f"{what} must be a non-negative integer")
    if text != str(int(text)) or int(text) >= 1 << 63:
        raise PageError(400, f"{what} must be a non-negative integer")
    return int(text)


@dataclass(frozen=True)
class Page:
    number: int  # 1-based
    pages: int
    total: int
    start: int  # first item, 0-based
    end: int  # past the last item

    @classmethod
    def of(cls, total: int, text: str | None, size: int = PAGE_SIZE) -> Page:
        try:
            number = parse_index(text, "page", default=1)
        except PageError:
            number = 0
        if number < 1:
            raise PageError(400, "page must be a positive integer")
        pages = max(1, -(-total // size))
        if number > pages:
            raise PageError(404, f"no page {number} (there are {pages})")
        start = (number - 1) * size
        return cls(number, pages, total, start, min(total, start + size))


def http_link(url: str) -> str | None:
    """``url`` when it is an absolute http(s) URL (to draw as a link), else None (text only)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    ok = parts.scheme in ("http", "https") and bool(parts.netloc)
    return url if ok and not any(c.isspace() or ord(c) < 0x20 for c in url) else None


def flatten(value: Any, prefix: str = "", limit: int = MAX_NUMBERS) -> list[tuple[str, str]]:
    """Nested JSON as ``(dotted.key, text)`` rows, at most ``limit`` of them."""
    out: list[tuple[str, str]] = []

    def walk(v: Any, key: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(v, Mapping):
            for k, sub in v.items():
                walk(sub, f"{key}.{k}" if key else str(k))
        elif isinstance(v, list | tuple) and v and any(isinstance(x, Mapping) for x in v):
            for i, sub in enumerate(v):
                walk(sub, f"{key}[{i}]")
        elif v is not None:
            text = v if isinstance(v, str) else orjson.dumps(v).decode()
            out.append((key or "value", text if len(text) <= 300 else text[:299] + "…"))

    walk(value, prefix)
    return out


# -- the live reconciliation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Behind:
    """A verified run matched to a claim, with what it says about it."""

    index: int
    label: str
    judgement: RunJudgement


@dataclass(frozen=True)
class Overview:
    key: tuple[int, int, int]
    policy: str
    stored: Mapping[str, StoredClaim]  # every claim, superseded ones too
    results: Sequence[Reconciliation]  # current claims, registry order
    by_claim: Mapping[str, Reconciliation]
    counts: Mapping[str, int]
    rollups: Mapping[str, Sequence[Rollup]]
    charts: Sequence[Markup]
    runs: RunSet
    refused: Sequence[EvidenceRow]
    stored_runs: int

    def behind(self, claim: Claim, result: Reconciliation) -> list[Behind]:
        """The verified runs matching ``claim``, each with its judgement (same order)."""
        runs = [r for r in self.runs.verified if matches(claim, r)]
        return [
            Behind(r.ledger_index, label_of(r), j) for r, j in zip(runs, result.runs, strict=True)
        ]


def label_of(run: VerifiedRun) -> str:
    """A stored run's name: its protocol label, else "run <ledger index>"."""
    return run.spec.label or f"run {run.ledger_index}"


def _top(rows: Sequence[Rollup], n: int) -> list[Rollup]:
    keep = {id(r) for r in sorted(rows, key=lambda r: -r.claimed)[:n]}
    return [r for r in rows if id(r) in keep]


def build_overview(key: tuple[int, int, int], claims: ClaimStore, store: EvidenceStore) -> Overview:
    stored = {s.claim.claim_id: s for s in claims.all()}
    current = [s.claim for s in stored.values() if s.superseded_by is None]
    runs = RunSet(store.policy.describe(), tuple(store.verified()), ())
    results = reconcile(current, runs, tolerance=DEFAULT_TOLERANCE)
    groups = {g: rollups(results, g) for g in GROUPS}
    shown = ReportData(
        title="",
        generated_at="",
        tolerance=DEFAULT_TOLERANCE,
        trust_policy=runs.policy,
        results=results,
        rollups={g: _top(rows, CHART_ROWS) for g, rows in groups.items()},
        runs=[],
        refused=[],
        sweeps=[],
    )
    charts = capacity_charts(shown)
    mix = provenance_chart(shown)
    return Overview(
        key=key,
        policy=runs.policy,
        stored=stored,
        results=results,
        by_claim={r.claim_id: r for r in results},
        counts=status_counts(results),
        rollups=groups,
        charts=[*charts, *([mix] if mix is not None else [])],
        runs=runs,
        refused=store.unverified(),
        stored_runs=len(store.rows()),
    )


class Views:
    """The dashboard's cached views over one source."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._overview: Overview | None = None
        self._runs: dict[int, tuple[VerifiedRun, RunView]] = {}

    def overview(self, source: DashboardSource) -> Overview:
        key = (*_claims_version(source.claims), source.evidence.version)
        with self._lock:
            if self._overview is None or self._overview.key != key:
                self._overview = build_overview(key, source.claims, source.evidence)
            return self._overview

    def run(self, run: VerifiedRun) -> RunView:
        """The run's facts and charts (``series.run_view`` reads its records once)."""
        with self._lock:
            cached = self._runs.get(run.ledger_index)
            if cached is not None and cached[0] is run:
                return cached[1]
        view = run_view(run)
        with self._lock:
            if len(self._runs) >= RUN_VIEWS:
                self._runs.pop(next(iter(self._runs)))
            self._runs[run.ledger_index] = (run, view)
        return view


def _claims_version(claims: ClaimStore) -> tuple[int, int]:
    """(rows, last row) of the append-only registry: a change of either is a new claim."""
    with claims.engine.connect() as conn:
        n, last = conn.execute(select(func.count(), func.max(claims_table.c.seq))).one()
    return int(n), int(last or 0)


def claim_chain(overview: Overview, claim_id: str) -> tuple[list[str], list[str]]:
    """(the claims this one supersedes, nearest first; the ones superseding it, nearest first)."""
    earlier: list[str] = []
    seen = {claim_id}
    ref = overview.stored[claim_id].claim.supersedes
    while ref is not None and ref in overview.stored and ref not in seen:
        earlier.append(ref)
        seen.add(ref)
        ref = overview.stored[ref].claim.supersedes
    later: list[str] = []
    nxt = overview.stored[claim_id].superseded_by
    while nxt is not None and nxt in overview.stored and nxt not in seen:
        later.append(nxt)
        seen.add(nxt)
        nxt = overview.stored[nxt].superseded_by
    return earlier, later


def claim_result(overview: Overview, claim_id: str) -> Reconciliation:
    """A current claim's cached result; a superseded one is reconciled alone, as history."""
    found = overview.by_claim.get(claim_id)
    if found is not None:
        return found
    current = [r.claim for r in overview.results]
    return reconcile_claim(overview.stored[claim_id].claim, overview.runs, registry=current)


# -- the ledger ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureLine:
    name: str
    key_id: str
    role: str  # "log", "witness", "unknown key"
    time: str | None  # a cosignature's timestamp (ISO 8601), when it has one
    verifies: bool | None  # None: no configured key to check it with
    detail: str


@dataclass(frozen=True)
class CheckpointView:
    note: str
    origin: str
    size: int
    root: str  # base64, as in the note
    lines: tuple[SignatureLine, ...]
    cosigned: int  # configured witnesses whose cosignature verifies
    witnesses: int
    quorum: int

    @property
    def quorum_met(self) -> bool:
        return self.cosigned >= self.quorum


def _iso(ts: int) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ts} (out of range)"


def checkpoint_view(
    note: str, log_key: Verifier | None, witnesses: Sequence[Verifier], quorum: int
) -> CheckpointView:
    """The checkpoint's fields and every signature line, each checked where a key is known."""
    text, sigs = split_note(note)
    cp = parse_checkpoint(text)
    root_line = text.split("\n")[2]
    by_id = {(w.name, w.key_hash): w for w in witnesses}
    lines: list[SignatureLine] = []
    good: set[tuple[str, int]] = set()
    for sig in sigs:
        kid = f"{sig.key_hash:08x}"
        if sig.name == cp.origin:
            ok = None
            if log_key is not None and (log_key.name, log_key.key_hash) == (sig.name, sig.key_hash):
                ok = log_key.verify(text.encode(), sig.sig)
            detail = "log key not loaded" if ok is None else "log signature"
            lines.append(SignatureLine(sig.name, kid, "log", None, ok, detail))
            continue
        key = by_id.get((sig.name, sig.key_hash))
        try:
            stamp: int | None = split_cosignature(sig)[0]
        except NoteError:
            stamp = None
        when = None if stamp is None else _iso(stamp)
        if key is None:
            lines.append(
                SignatureLine(sig.name, kid, "unknown key", when, None, "not a configured witness")
            )
            continue
        verified = stamp is not None and verify_cosignature(text, sig, key) is not None
        if verified:
            good.add((key.name, key.key_hash))
        detail = f"cosigned at {when}" if verified else "cosignature does NOT verify"
        lines.append(SignatureLine(sig.name, kid, "witness", when, verified, detail))
    return CheckpointView(
        note=note,
        origin=cp.origin,
        size=cp.size,
        root=root_line,
        lines=tuple(lines),
        cosigned=len(good),
        witnesses=len(by_id),
        quorum=quorum,
    )


@dataclass(frozen=True)
class EntryView:
    index: int
    leaf_hash: str
    bytes: int
    payload_type: str | None
    keyids: tuple[str, ...]
    statement_type: str | None
    predicate_type: str | None
    subjects: tuple[tuple[str, str], ...]  # (name, "sha256:<hex>")
    statement: str | None  # the payload, pretty-printed JSON
    problem: str | None  # why the entry is not a readable envelope of a statement
    run: int | None  # the index, when the evidence store holds its bundle
    claim: str | None  # the claim id, when the registry holds it


def _subjects(raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise ValueError("statement subject is not a list")
    out = []
    for s in raw[:MAX_NUMBERS]:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise ValueError("statement subject entries need a name")
        digest = s.get("digest")
        if not isinstance(digest, dict):
            raise ValueError("statement subject entries need a digest")
        out.append((s["name"], ", ".join(f"{k}:{v}" for k, v in digest.items())))
    return tuple(out)


def entry_view(index: int, leaf: bytes, overview: Overview, store: EvidenceStore) -> EntryView:
    """One ledger entry as an envelope of an in-toto statement, read strictly."""
    leaf_hash = merkle.hash_leaf(leaf).hex()
    payload_type: str | None = None
    keyids: tuple[str, ...] = ()
    try:
        env = parse_envelope(leaf)
        payload_type = str(env["payloadType"])
        keyids = tuple(str(s["keyid"]) for s in env["signatures"])
        if not isinstance(env["payload"], str):
            raise ValueError("envelope payload is not a string")
        payload = b64decode_strict(env["payload"], "envelope payload", InferauditError)
        statement = orjson.loads(payload)
        if not isinstance(statement, dict):
            raise ValueError("the payload is not a JSON object")
        st_type, pred = statement.get("_type"), statement.get("predicateType")
        if not isinstance(st_type, str) or not isinstance(pred, str):
            raise ValueError("the payload has no _type and predicateType strings")
        subjects = _subjects(statement.get("subject"))
    except (InferauditError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        why = exc.diagnostics() if isinstance(exc, InferauditError) else str(exc)
        return EntryView(
            index, leaf_hash, len(leaf), payload_type, keyids, None, None, (), None, why, None, None
        )
    claim = next((n.removeprefix("claim:") for n, _ in subjects if n.startswith("claim:")), None)
    return EntryView(
        index=index,
        leaf_hash=leaf_hash,
        bytes=len(leaf),
        payload_type=payload_type,
        keyids=keyids,
        statement_type=st_type,
        predicate_type=pred,
        subjects=subjects,
        statement=orjson.dumps(statement, option=orjson.OPT_INDENT_2).decode(),
        problem=None,
        run=index if store.get(index) is not None else None,
        claim=claim if claim is not None and claim in overview.stored else None,
    )


def recent_entries(
    ledger: Ledger, page: Page, overview: Overview, store: EvidenceStore
) -> Iterator[EntryView]:
    """One page of entries, newest first: reads only those entries."""
    size = page.total
    hi, lo = size - page.start, size - page.end
    if hi <= lo:
        return
    for offset, leaf in enumerate(reversed(ledger.entries(lo, hi))):
        yield entry_view(hi - 1 - offset, leaf, overview, store)
