"""`inferaudit claims` commands: import, add, list, show, supersede, export."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, get_args

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from inferaudit import home
from inferaudit.cli.app import app, console, err_console
from inferaudit.errors import ClaimsError, ConfigError
from inferaudit.intent import claims as C
from inferaudit.intent.reconcile import roofline_check

claims_app = typer.Typer(
    help="The capacity-claims registry (immutable claims; corrections supersede).",
    no_args_is_help=True,
)
app.add_typer(claims_app, name="claims")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (default: INFERAUDIT_HOME)")
]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL (default: INFERAUDIT_DB)")]


def open_store(data_dir: Path | None, db: str | None) -> C.ClaimStore:
    """The registry in the ledger's database (same resolution as every other command)."""
    url = home.db_url(db, home.data_dir(data_dir) if db is None else None)
    return C.ClaimStore(home.make_engine(url))


def printable(text: str) -> str:
    """``text`` with control and bidi-override characters escaped (``\\x1b``, ``\\u202e``), so
    that a claim can never drive the terminal (print it through ``Text``: no markup either)."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in "\u200d":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def cell(text: str | None) -> Text:
    """A table cell showing ``text`` literally: no markup, no control characters."""
    return Text(printable(text or ""))


def say(text: str) -> None:
    """Print one line of claim content literally (no markup, no control characters)."""
    console.print(Text(printable(text)), highlight=False)


@contextmanager
def signing(data_dir: Path | None, db: str | None) -> Iterator[C.Signing]:
    """The claims signer (key ``inferaudit-claims``) and the ledger, for one import."""
    from inferaudit.seal.keys import load_or_create_signer
    from inferaudit.seal.ledger.store import open_ledger

    base = home.data_dir(data_dir)
    signer = load_or_create_signer(base, C.SIGNER_NAME)
    with open_ledger(home.db_url(db, base), base) as ledger:
        yield C.Signing(signer, ledger)


def _import(
    store: C.ClaimStore,
    claims: list[C.Claim],
    path: str,
    data_dir: Path | None,
    db: str | None,
) -> C.ImportResult:
    try:
        with signing(data_dir, db) as sig:
            result = store.add(claims, path=path, signing=sig)
    except C.ClaimImportError as exc:
        _print_problems(exc)
    console.print(
        f"imported {len(result.added)} claim(s); {len(result.unchanged)} already stored unchanged"
    )
    if result.repaired:
        console.print(
            f"signed {len(result.repaired)} stored claim(s) that had no ledger entry: "
            + escape(", ".join(result.repaired)),
            highlight=False,
        )
    if result.indices:
        indices = sorted(set(result.indices.values()))
        console.print(f"signed into the ledger at indices {', '.join(map(str, indices))}")
    return result


def _print_problems(exc: C.ClaimImportError) -> NoReturn:
    err_console.print(
        f"[bold red]error:[/] {escape(printable(exc.path))}: {len(exc.problems)} bad record(s); "
        "nothing imported",
        highlight=False,
    )
    for p in exc.problems:
        err_console.print(Text(f"  {printable(p)}"), highlight=False)
    raise typer.Exit(2)


@claims_app.command("import")
def import_(
    file: Annotated[Path | None, typer.Argument(help="JSON, JSONL or CSV file of claims")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="json|jsonl|csv")] = None,
    example: Annotated[
        bool, typer.Option("--example", help="Import the bundled seed claims")
    ] = False,
    data_dir: DataDir = None,
    db: DbUrl = None,
    publish: Annotated[
        str | None,
        typer.Option(
            help="Sign here, then submit to this log service (`inferaudit serve`) "
            "instead of the local registry; token: $INFERAUDIT_TOKEN or --token-file"
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="--publish: file holding the bearer token (chmod 600)")
    ] = None,
) -> None:
    """Import claims in one transaction: every record or none."""
    if (file is None) == (not example):
        raise ConfigError("give a FILE or --example (not both)")
    if token_file is not None and publish is None:
        raise ConfigError("--token-file is for --publish URL")
    try:
        claims = C.seed_claims() if file is None else C.read_claims(file, fmt)
    except C.ClaimImportError as exc:
        _print_problems(exc)
    if publish is not None:
        _publish(claims, publish, token_file, data_dir)
        return
    _import(open_store(data_dir, db), claims, str(file or "seed_claims.json"), data_dir, db)


def _publish(
    claims: list[C.Claim], url: str, token_file: Path | None, data_dir: Path | None
) -> None:
    """Sign every claim with the claims key (every size checked first), then submit them one
    by one to the log service, printing each index."""
    from inferaudit.seal.keys import load_or_create_signer
    from inferaudit.seal.remote import RemoteLog, read_token

    remote = RemoteLog(url, read_token(token_file))
    signer = load_or_create_signer(home.data_dir(data_dir), C.SIGNER_NAME)
    signed = C.publish_claims(claims, C.Signing(signer, None))
    for claim, published in zip(claims, signed, strict=True):
        receipt = remote.submit_claim(published.envelope)
        say(f"{claim.claim_id}: logged at index {receipt.index}")
    console.print(f"submitted {len(claims)} claim(s) to {escape(remote.url)}", highlight=False)


def _ask(value: Any, name: str, flag: str, missing: list[str], **prompt: Any) -> Any:
    if value is not None:
        return value
    if sys.stdin.isatty():
        return typer.prompt(name, **prompt)
    missing.append(flag)
    return None


@claims_app.command("add")
def add(
    claim_id: Annotated[str | None, typer.Option("--id", help="Claim id (a-z0-9._-)")] = None,
    statement: Annotated[str | None, typer.Option(help="The claim in one sentence")] = None,
    status: Annotated[str | None, typer.Option(help="signed, operational_claimed, ...")] = None,
    certainty: Annotated[str | None, typer.Option(help="confirmed|likely|unlikely|unknown")] = None,
    source_url: Annotated[str | None, typer.Option(help="Where the claim was made")] = None,
    source_class: Annotated[str | None, typer.Option(help="vendor, state_media, ...")] = None,
    claim_type: Annotated[str, typer.Option("--type")] = "capacity_figure",
    statement_original: Annotated[str | None, typer.Option(help="Original wording")] = None,
    quote: Annotated[str | None, typer.Option(help="Quote from the source (<= 600 chars)")] = None,
    accessed: Annotated[str | None, typer.Option(help="Retrieval date YYYY-MM-DD")] = None,
    operator: Annotated[str | None, typer.Option(help="Operator of the site")] = None,
    vendor: Annotated[str | None, typer.Option(help="Chip vendor")] = None,
    site: Annotated[str | None, typer.Option(help="Site name")] = None,
    city: Annotated[str | None, typer.Option()] = None,
    country: Annotated[str | None, typer.Option()] = None,
    project: Annotated[str | None, typer.Option()] = None,
    deployment: Annotated[str | None, typer.Option(help="Id that run protocols name")] = None,
    accelerator: Annotated[str | None, typer.Option(help="Catalog id, e.g. H100-SXM")] = None,
    count: Annotated[int | None, typer.Option(help="Accelerator count")] = None,
    metric: Annotated[str | None, typer.Option(help="tokens_per_second, compute, ...")] = None,
    value: Annotated[float | None, typer.Option()] = None,
    unit: Annotated[str | None, typer.Option(help="tokens/s, PFLOPS, cards, ...")] = None,
    basis: Annotated[str | None, typer.Option(help="signed, installed, measured, ...")] = None,
    precision: Annotated[str, typer.Option()] = "unspecified",
    sparsity: Annotated[str, typer.Option()] = "unspecified",
    as_of: Annotated[str | None, typer.Option(help="YYYY[-MM[-DD]]")] = None,
    model: Annotated[str | None, typer.Option(help="Served model (throughput claims)")] = None,
    concurrency: Annotated[int | None, typer.Option()] = None,
    context_tokens: Annotated[int | None, typer.Option()] = None,
    slo: Annotated[str | None, typer.Option(help="e.g. ttft_p99=2000ms")] = None,
    technique: Annotated[list[str] | None, typer.Option(help="Declared technique")] = None,
    supersedes: Annotated[str | None, typer.Option()] = None,
    part_of: Annotated[str | None, typer.Option()] = None,
    related: Annotated[list[str] | None, typer.Option()] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Add one claim from flags (prompts for missing required ones on a terminal)."""
    missing: list[str] = []
    claim_id = _ask(claim_id, "claim id", "--id", missing)
    statement = _ask(statement, "statement", "--statement", missing)
    status = _ask(status, "status", "--status", missing, default="announced_intent")
    certainty = _ask(certainty, "certainty", "--certainty", missing, default="unknown")
    source_url = _ask(source_url, "source URL", "--source-url", missing)
    source_class = _ask(source_class, "source class", "--source-class", missing)
    if metric is not None:
        value = _ask(value, "value", "--value", missing, type=float)
        unit = _ask(unit, "unit", "--unit", missing)
        basis = _ask(basis, "basis", "--basis", missing, default="announced")
    if missing:
        raise ConfigError(f"claims add: missing {', '.join(missing)} (stdin is not a terminal)")
    entities = [(n, r) for n, r in ((operator, "operator"), (vendor, "chip_vendor")) if n]
    claim = C.build_claim(
        C.claim_input(
            claim_id=claim_id,
            statement=statement,
            status=status,
            certainty=certainty,
            source_url=source_url,
            source_class=source_class,
            claim_type=claim_type,
            statement_original=statement_original,
            entities=tuple(entities),
            site=site,
            city=city,
            country=country,
            project=project,
            deployment=deployment,
            accelerator=accelerator,
            count=count,
            metric=metric,
            value=value,
            unit=unit,
            basis=basis,
            precision=precision,
            sparsity=sparsity,
            as_of=as_of,
            quote=quote,
            accessed=accessed,
            model=model,
            concurrency=concurrency,
            context_tokens=context_tokens,
            slo=slo,
            techniques=tuple(technique or ()),
            supersedes=supersedes,
            part_of=part_of,
            related=tuple(related or ()),
        )
    )
    _import(open_store(data_dir, db), [claim], "claims add", data_dir, db)


@claims_app.command("list")
def list_(
    site: Annotated[str | None, typer.Option(help="Site name/city contains")] = None,
    vendor: Annotated[str | None, typer.Option(help="Chip vendor contains")] = None,
    status: Annotated[str | None, typer.Option(help=", ".join(get_args(C.ClaimStatus)))] = None,
    certainty: Annotated[str | None, typer.Option(help="confirmed|likely|unlikely|unknown")] = None,
    include_superseded: Annotated[bool, typer.Option("--all", help="Include superseded")] = False,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """List claims, filtered."""
    rows = open_store(data_dir, db).query(
        site=site,
        vendor=vendor,
        status=status,
        certainty=certainty,
        include_superseded=include_superseded,
    )
    table = Table("id", "status", "certainty", "site", "vendors", "headline", title="claims")
    for s in rows:
        c = s.claim
        head = next((q.label() for q in c.quantities if q.basis != "derived"), "-")
        cid = c.claim_id + (f" (superseded by {s.superseded_by})" if s.superseded_by else "")
        table.add_row(
            cell(cid),
            cell(c.status),
            cell(c.certainty),
            cell(c.site_label),
            cell(", ".join(c.vendors)),
            cell(head),
        )
    console.print(table)
    console.print(f"{len(rows)} claim(s)")


@claims_app.command("show")
def show(
    claim_id: Annotated[str, typer.Argument()],
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Show one claim: quantities, sources, findings, roofline, supersession."""
    store = open_store(data_dir, db)
    stored = store.get(claim_id)
    registry = [s.claim for s in store.all()]
    c = stored.claim
    say(f"{c.claim_id}  {c.claim_type}  status={c.status}  certainty={c.certainty}")
    say(c.statement)
    if c.statement_original:
        say(f"original: {c.statement_original}")
    say(
        f"site: {c.site_label}; operator: {c.operator or '-'}; "
        f"vendors: {', '.join(c.vendors) or '-'}"
    )
    if c.quantities:
        qt = Table("metric", "value", "unit", "basis", "precision", "sparsity", "as of")
        for q in c.quantities:
            qt.add_row(
                cell(q.metric),
                cell("?" if q.value is None else f"{q.value:,.6g}"),
                cell(q.unit),
                cell(q.basis),
                cell(q.precision),
                cell(q.sparsity),
                cell(q.as_of or "-"),
            )
        console.print(qt)
    st = Table("provenance", "class", "url", "quote")
    for s in c.sources:
        st.add_row(cell(s.provenance.value), cell(s.source_class), cell(s.url), cell(s.quote))
    console.print(st)
    for f in C.findings(c, registry):
        say(f"finding ({f.rule}, {f.severity}): {f.message}")
    check = roofline_check(c)
    if check is not None:
        say(f"roofline: {check.verdict.value}: {check.explanation}")
        for a in check.bound.assumptions if check.bound else ():
            say(f"  - {a}")
    if c.supersedes:
        say(f"supersedes: {c.supersedes}")
    if stored.superseded_by:
        say(f"superseded by {stored.superseded_by}")
    say(
        f"sha256: {stored.sha256}  added: {stored.added_at}"
        + (f"  ledger index: {stored.ledger_index}" if stored.ledger_index is not None else "")
    )


@claims_app.command("supersede")
def supersede(
    old_id: Annotated[str, typer.Argument(help="The claim being corrected")],
    file: Annotated[Path, typer.Argument(help="File holding the one correcting claim")],
    fmt: Annotated[str | None, typer.Option("--format")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Store a correction: the new claim supersedes OLD_ID (set when the file leaves it out)."""
    try:
        new = C.read_claims(file, fmt)
    except C.ClaimImportError as exc:
        _print_problems(exc)
    if len(new) != 1:
        raise ClaimsError(f"{file}: expected exactly one claim, found {len(new)}")
    claim = new[0]
    if claim.supersedes is None:
        claim = claim.model_copy(update={"supersedes": old_id})
    store = open_store(data_dir, db)
    store.get(old_id)
    if claim.supersedes != old_id:
        raise ClaimsError(
            f"{claim.claim_id}: field supersedes is {claim.supersedes!r}, expected {old_id!r}"
        )
    _import(store, [claim], str(file), data_dir, db)
    say(f"{claim.claim_id} supersedes {old_id}")


@claims_app.command("export")
def export(
    out: Annotated[Path | None, typer.Option("--out", help="File (default: stdout)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json|jsonl|csv")] = "json",
    include_superseded: Annotated[bool, typer.Option("--all", help="Include superseded")] = True,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Export claims (by default all, superseded ones included: they are history)."""
    rows = open_store(data_dir, db).query(include_superseded=include_superseded)
    text = C.dump_claims([s.claim for s in rows], fmt)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {len(rows)} claim(s) to {out}")
