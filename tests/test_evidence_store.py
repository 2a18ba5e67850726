"""The service's evidence store: bundles unpacked safely (every unsafe member refused, nothing
left behind), the envelope held to the ledger entry, evidence immutable, outcomes persisted and
re-verified once by a new store."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import Engine

from inferaudit import home as home_mod
from inferaudit.home import make_engine
from inferaudit.measure.rundir import ENVELOPE_FILE, RECORDS_FILE
from inferaudit.present.web.evidence import (
    BundleError,
    BundleTooLargeError,
    EntryMismatchError,
    EvidenceImmutableError,
    EvidenceStore,
    files_digest,
    pack_run,
)
from inferaudit.seal.ledger.store import open_ledger
from inferaudit.seal.trust import default_policy
from inferaudit.seal.verified import VerifiedRun
from test_reconcile import make_run


def ledger_index(home: Path, run: Path) -> int:
    with open_ledger(home_mod.db_url(None, home), home) as ledger:
        return ledger.find((run / ENVELOPE_FILE).read_bytes())


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], *, mtime: int = 0) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue(), mtime=mtime)


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def run_members(run: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [reg(p.name, p.read_bytes()) for p in sorted(run.iterdir()) if p.is_file()]


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """(home, run directory, its ledger index): one real sealed run."""
    base = tmp_path_factory.mktemp("sealed")
    home = base / "home"
    run = make_run(base / "run", home, claim="tps-claim")
    return home, run, ledger_index(home, run)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'service.sqlite3'}")


def store_of(engine: Engine, tmp_path: Path, home: Path, **limits: int) -> EvidenceStore:
    return EvidenceStore(engine, tmp_path / "evidence", default_policy(home), **limits)


def test_a_sealed_run_is_stored_verified_and_byte_identical(
    sealed: tuple[Path, Path, int], engine: Engine, tmp_path: Path
) -> None:
    home, run, index = sealed
    store = store_of(engine, tmp_path, home)
    outcome = store.add(index, (run / ENVELOPE_FILE).read_bytes(), pack_run(run))
    assert (outcome.index, outcome.status, outcome.reason) == (index, "verified", None)
    row = store.get(index)
    assert row is not None and isinstance(row.run, VerifiedRun)
    assert row.run.ledger_index == index and row.run.spec.claim == "tps-claim"
    names = sorted(p.name for p in run.iterdir())
    assert list(row.files) == names
    for name in names:
        assert (store.run_dir(index) / name).read_bytes() == (run / name).read_bytes()
    assert [r.ledger_index for r in store.verified()] == [index]
    assert store.unverified() == []
    assert list((tmp_path / "evidence" / "tmp").iterdir()) == []


def test_a_tampered_bundle_is_stored_as_not_verified_with_its_reason(
    sealed: tuple[Path, Path, int], engine: Engine, tmp_path: Path
) -> None:
    home, run, index = sealed
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    records = (bad / RECORDS_FILE).read_bytes()
    (bad / RECORDS_FILE).write_bytes(records.replace(b'"status":200', b'"status":201', 1))
    store = store_of(engine, tmp_path, home)
    outcome = store.add(index, (bad / ENVELOPE_FILE).read_bytes(), pack_run(bad))
    assert outcome.status == "unverified"
    assert outcome.reason is not None and outcome.reason.startswith("subjects:")
    assert RECORDS_FILE in outcome.reason
    assert store.verified() == []
    assert [r.index for r in store.unverified()] == [index]


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (special("link", tarfile.SYMTYPE, "/etc/passwd"), "'link' is not a regular file"),
        (special("hard", tarfile.LNKTYPE, "spec.json"), "'hard' is not a regular file"),
        (special("sub", tarfile.DIRTYPE), "'sub' is not a regular file"),
        (special("dev", tarfile.CHRTYPE), "'dev' is not a regular file"),
        (special("fifo", tarfile.FIFOTYPE), "'fifo' is not a regular file"),
        (reg("../escape.json", b"{}"), "'../escape.json': only flat file names"),
        (reg("/etc/cron.d/x", b"x"), "'/etc/cron.d/x': only flat file names"),
        (reg("sub/spec.json", b"{}"), "'sub/spec.json': only flat file names"),
        (reg("..", b""), "'..': only flat file names"),
        (reg(".hidden", b""), "'.hidden': only flat file names"),
    ],
)
def test_unsafe_members_are_refused_and_nothing_is_left(
    sealed: tuple[Path, Path, int],
    engine: Engine,
    tmp_path: Path,
    member: tuple[tarfile.TarInfo, bytes | None],
    message: str,
) -> None:
    home, run, index = sealed
    store = store_of(engine, tmp_path, home)
    bundle = tar_of([*run_members(run), member])
    with pytest.raises(BundleError, match=message.replace(".", r"\.")):
        store.add(index, (run / ENVELOPE_FILE).read_bytes(), bundle)
    assert store.get(index) is None and not store.run_dir(index).exists()
    assert list((tmp_path / "evidence" / "tmp").iterdir()) == []
    assert not (tmp_path / "escape.json").exists()


def test_limits_are_enforced(
    sealed: tuple[Path, Path, int], engine: Engine, tmp_path: Path
) -> None:
    home, run, index = sealed
    entry = (run / ENVELOPE_FILE).read_bytes()
    bundle = pack_run(run)
    files = len(run_members(run))
    biggest = max(len(data) for _, data in run_members(run))

    small = store_of(engine, tmp_path, home, max_bundle_bytes=len(bundle) - 1)
    with pytest.raises(BundleTooLargeError, match=f"bundle is {len(bundle):,} bytes"):
        small.add(index, entry, bundle)
    few = store_of(engine, tmp_path, home, max_files=files - 1)
    with pytest.raises(BundleTooLargeError, match=f"more than {files - 1} files"):
        few.add(index, entry, bundle)
    narrow = store_of(engine, tmp_path, home, max_file_bytes=biggest - 1)
    with pytest.raises(BundleTooLargeError, match=f"is {biggest:,} bytes; the limit is"):
        narrow.add(index, entry, bundle)
    # a decompression bomb: 64 MiB of zeros gzip to ~64 KiB; unpacking stops at the cap
    bomb = tar_of([reg("zeros.jsonl", bytes(64 << 20))])
    assert len(bomb) < 200_000
    capped = store_of(engine, tmp_path, home, max_unpacked_bytes=1 << 20)
    with pytest.raises(BundleTooLargeError, match="unpacks to more than 1,048,576 bytes"):
        capped.add(index, entry, bomb)
    assert not small.run_dir(index).exists()
    assert list((tmp_path / "evidence" / "tmp").iterdir()) == []


def test_malformed_bundles_are_refused(
    sealed: tuple[Path, Path, int], engine: Engine, tmp_path: Path
) -> None:
    home, run, index = sealed
    entry = (run / ENVELOPE_FILE).read_bytes()
    store = store_of(engine, tmp_path, home)
    good = pack_run(run)
    twice = [*run_members(run), reg("spec.json", b"{}")]
    cases: list[tuple[bytes, type[BundleError], str]] = [
        (b"not gzip at all", BundleError, "not a gzip stream"),
        (good[: len(good) // 2], BundleError, "truncated"),
        (good + b"trailing", BundleError, "data after the end of the gzip stream"),
        (gzip.compress(b"x" * 1000), BundleError, "not a tar archive"),
        (tar_of(twice), BundleError, "'spec.json' appears twice"),
        (
            tar_of([m for m in run_members(run) if m[0].name != ENVELOPE_FILE]),
            EntryMismatchError,
            "bundle has no envelope.dsse.json",
        ),
    ]
    for bundle, kind, message in cases:
        with pytest.raises(kind, match=message):
            store.add(index, entry, bundle)
    with pytest.raises(EntryMismatchError, match=f"is not ledger entry {index} "):
        store.add(index, entry + b" ", good)
    assert store.get(index) is None


def test_evidence_is_immutable(
    sealed: tuple[Path, Path, int], engine: Engine, tmp_path: Path
) -> None:
    home, run, index = sealed
    entry = (run / ENVELOPE_FILE).read_bytes()
    store = store_of(engine, tmp_path, home)
    first = store.add(index, entry, tar_of(run_members(run), mtime=1))
    # the same files in other gzip bytes: the same evidence, the same outcome
    again = store.add(index, entry, tar_of(run_members(run), mtime=2))
    assert again == first and first.status == "verified"
    other = [
        m if m[0].name != "verdicts.json" else reg("verdicts.json", b"[]") for m in run_members(run)
    ]
    with pytest.raises(EvidenceImmutableError, match=f"entry {index} already has other evidence"):
        store.add(index, entry, tar_of(other))
    assert (store.run_dir(index) / "verdicts.json").read_bytes() == (
        run / "verdicts.json"
    ).read_bytes()


def test_outcomes_persist_and_a_new_store_verifies_the_disk_again(
    sealed: tuple[Path, Path, int], engine: Engine, tmp_path: Path
) -> None:
    home, run, index = sealed
    store = store_of(engine, tmp_path, home)
    store.add(index, (run / ENVELOPE_FILE).read_bytes(), pack_run(run))
    row = store.get(index)
    assert row is not None
    reopened = store_of(engine, tmp_path, home)
    again = reopened.get(index)
    assert again is not None
    assert (again.status, again.files_digest, again.files, again.added_at) == (
        "verified",
        row.files_digest,
        row.files,
        row.added_at,
    )
    digests = {n: _sha(store.run_dir(index) / n) for n in row.files}
    assert files_digest(digests) == row.files_digest
    # the stored records edited on disk: the next store lists the run as not verified
    path = store.run_dir(index) / RECORDS_FILE
    path.write_bytes(path.read_bytes().replace(b'"status":200', b'"status":201', 1))
    tampered = store_of(engine, tmp_path, home)
    assert tampered.verified() == []
    (bad,) = tampered.unverified()
    assert bad.index == index and bad.reason is not None and bad.reason.startswith("subjects:")
    assert reopened.verified() != []  # a store verifies once: pages never re-verify


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
