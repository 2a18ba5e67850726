"""The witnessed log service end to end, every part a real process on 127.0.0.1: three
`inferaudit witness serve`, one `inferaudit serve` asking all three (quorum 1, so it still
answers with witnesses down), over SQLite and (with INFERAUDIT_TEST_PG_URL) PostgreSQL.

A hand-made run is logged at index 0 and a twin run through `inferaudit run --publish` at index
1; `inferaudit verify --log` proves it under a 2-of-3 witness policy; a tile mirror of the
service reproduces its JSON proofs; a split view (a second ledger under the SAME log key) is
refused by every witness, kept as a fork proof, and shown as a fork by `verify --log`; with two
witnesses stopped, a new entry's proof carries one cosignature: 2-of-3 fails, 1-of-3 passes.

Tests of one database run in file order on shared processes; only the last stops witnesses."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from conftest_ledger import SEED, make_run_dir
from inferaudit.seal.keys import DEFAULT_SIGNER_NAME, Signer, Verifier, load_or_create_signer
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import open_checkpoint, open_note, parse_tlog_proof, split_note
from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME, open_ledger
from inferaudit.seal.ledger.tile_client import TileLog
from inferaudit.seal.ledger.tiles import export_tiles
from inferaudit.seal.ledger.witnessing import request_cosignatures
from inferaudit.seal.remote import RemoteLog, seal_run_remote
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions
from service_procs import WitnessProc, cli, database, witnesses
from test_service import Served, prepare, serve
from test_tile_client import served as static_site

pytestmark = pytest.mark.slow

WITNESSES = ("witness.test/a", "witness.test/b", "witness.test/c")


@dataclass
class World:
    base: Path
    served: Served
    witnesses: list[WitnessProc]
    home: Path  # the auditor's INFERAUDIT_HOME (its runner key signs the runs)
    signer: Signer
    made: Path  # a hand-made run, logged at index 0
    twin_run: Path  # `inferaudit run --publish` against the twin, logged at index 1
    publish_out: str  # what that command printed
    trust_2of3: Path
    trust_1of3: Path
    trust_no_witness: Path

    @property
    def log_key(self) -> Verifier:
        return self.served.log_key

    def remote(self) -> RemoteLog:
        return RemoteLog(self.served.url, self.served.tokens["submit-evidence"])

    def verify(self, run: Path, trust: Path, log: str, verifier: str) -> tuple[int, str]:
        """`inferaudit verify RUN --trust T --log URL` as a third party (its own data dir)."""
        done = cli(
            "verify", run, "--trust", trust, "--log", log,
            "--data-dir", self.base / "verifiers" / verifier,
        )  # fmt: skip
        assert not done.stderr, done.stderr
        return done.returncode, done.stdout


def _trust(
    world_base: Path, home: Path, served: Served, ws: list[WitnessProc], quorum: int | None
) -> Path:
    """`inferaudit keys trust`: the runner key, the service's log key, the witnesses' keys."""
    name = "no-witness" if quorum is None else f"{quorum}-of-{len(ws)}"
    out = world_base / f"trust-{name}.txt"
    args: list[str | Path] = [
        "keys", "trust", "--data-dir", home, "--signer", DEFAULT_SIGNER_NAME,
        "--log", served.data_dir / "keys" / f"{DEFAULT_LOG_NAME}.pub", "-o", out,
    ]  # fmt: skip
    if quorum is not None:
        for w in ws:
            args += ["--witness", w.home / "witness.pub"]
        args += ["--witness-quorum", str(quorum)]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    return out


def _publish_twin_run(base: Path, home: Path, served: Served) -> tuple[Path, str]:
    token_file = base / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, served.tokens["submit-evidence"].encode() + b"\n")
    os.close(fd)
    run = base / "twin-run"
    with start_twin(TwinOptions(ttft_ms=5, tpot_ms=1)) as twin:
        done = cli(
            "run", "--endpoint", twin.base_url, "--model", "inferaudit-twin",
            "--concurrency", "2", "--requests", "6", "--input-tokens", "16",
            "--output-tokens", "4", "--checks", "none", "--max-lag-ms", "100", "--workers", "1",
            "--out", run, "--publish", served.url, "--token-file", token_file,
            env={"INFERAUDIT_HOME": str(home)},
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert served.tokens["submit-evidence"] not in done.stdout + done.stderr
    return run, done.stdout


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    base = tmp_path_factory.mktemp(f"witnessed-{request.param}")
    with database(request.param, base) as db:
        service_dir = base / "service"
        # The log key exists before the witnesses start: they are configured with it.
        log_key = load_or_create_signer(service_dir, DEFAULT_LOG_NAME).verifier()
        home = base / "auditor-home"
        signer = load_or_create_signer(home, DEFAULT_SIGNER_NAME)
        tokens = prepare(db, auditors=(signer,))
        with witnesses(base, WITNESSES, log_key) as ws:
            flags = [a for w in ws for a in ("--witness", w.option)]
            with serve(service_dir, db, *flags, "--witness-quorum", "1") as served:
                served.tokens = tokens
                made = make_run_dir(base / "made-run", seed=SEED)
                first = seal_run_remote(made, signer, RemoteLog(served.url, tokens["both"]))
                assert first["ledger_index"] == 0
                twin_run, out = _publish_twin_run(base, home, served)
                yield World(
                    base=base,
                    served=served,
                    witnesses=ws,
                    home=home,
                    signer=signer,
                    made=made,
                    twin_run=twin_run,
                    publish_out=out,
                    trust_2of3=_trust(base, home, served, ws, 2),
                    trust_1of3=_trust(base, home, served, ws, 1),
                    trust_no_witness=_trust(base, home, served, ws, None),
                )
                assert "PRIVATE+KEY" not in served.output()


def _line(output: str, prefix: str) -> str:
    found = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, (prefix, output)
    return found[0]


def _fails(output: str) -> list[str]:
    return [line.split(":")[0] for line in output.splitlines() if line.startswith("FAIL ")]


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


def _log_note(note: str, origin: str) -> str:
    """The note with only the log's own signature line (as a witness keeps what it cosigned)."""
    text, sigs = split_note(note)
    return text + "\n" + "".join(s.line() for s in sigs if s.name == origin)


def test_the_published_run_verifies_against_the_log_under_a_2_of_3_witness_policy(
    world: World,
) -> None:
    assert "ledger_index: 1" in world.publish_out
    assert "bundle: verified" in world.publish_out
    assert not (world.home / "ledger.sqlite3").exists()  # the local ledger was never touched
    proof = parse_tlog_proof((world.twin_run / "entry.tlog-proof").read_text())
    assert proof.index == 1
    opened = open_note(proof.checkpoint, [world.log_key, *(w.key for w in world.witnesses)])
    assert sorted(s.name for s in opened.verified) == sorted([DEFAULT_LOG_NAME, *WITNESSES])
    code, out = world.verify(world.twin_run, world.trust_2of3, world.served.url, "v-2of3")
    assert code == 0, out
    witnessed = _line(out, "ok   witnesses: ")
    assert witnessed.startswith("ok   witnesses: 3 of 3 witnesses cosigned (")
    assert witnessed.endswith("); the policy needs 2")
    for w in world.witnesses:  # each cosigning witness named by its key id
        assert f"{w.key.keyid} at " in witnessed
    remote = _line(out, "ok   log checkpoint: ")
    assert remote.startswith(
        f"ok   log checkpoint: the log at {world.served.url}: {DEFAULT_LOG_NAME} size 2 signed "
        f"by {world.log_key.keyid}; 3 of 3 witnesses cosigned ("
    )
    assert _line(out, "ok   log entry: ") == (
        f"ok   log entry: the log at {world.served.url} serves this envelope at index 1 of 2"
    )
    assert out.rstrip().endswith(f"{world.twin_run}: verified")


def test_the_checkpoint_carries_the_cosignatures_and_a_tile_mirror_gives_the_same_proofs(
    world: World,
) -> None:
    with httpx.Client(base_url=world.served.url, timeout=60) as c:
        note = c.get("/checkpoint").text
        size = 2
        entries = [c.get(f"/api/v1/entries/{i}").json() for i in range(size)]
        inclusion = {
            (i, n): c.get("/api/v1/proof/inclusion", params={"index": i, "size": n}).json()
            for n in range(1, size + 1)
            for i in range(n)
        }
        consistency = {
            (m, n): c.get("/api/v1/proof/consistency", params={"old": m, "size": n}).json()
            for n in range(1, size + 1)
            for m in range(1, n + 1)
        }
    cp, _ = open_checkpoint(note, [world.log_key])
    assert cp.size == size
    opened = open_note(note, [world.log_key, *(w.key for w in world.witnesses)])
    assert sorted(s.name for s in opened.verified) == sorted([DEFAULT_LOG_NAME, *WITNESSES])
    assert note == parse_tlog_proof((world.twin_run / "entry.tlog-proof").read_text()).checkpoint
    with TileLog(world.served.url) as mirror:
        assert mirror.checkpoint() == note
        assert mirror.root(size) == cp.root
        for i, answer in enumerate(entries):
            leaf = mirror.entry(i, size)
            assert orjson.loads(leaf) == answer["envelope"]
            assert merkle.hash_leaf(leaf).hex() == answer["leaf_hash"]
        for (i, n), answer in inclusion.items():
            assert (answer["index"], answer["size"]) == (i, n)
            want = [_b64(h) for h in mirror.inclusion_proof(i, n)]
            assert answer["hashes"] == want, (i, n)
        for (m, n), answer in consistency.items():
            assert (answer["old"], answer["size"]) == (m, n)
            want = [_b64(h) for h in mirror.consistency_proof(m, n)]
            assert answer["hashes"] == want, (m, n)
        assert mirror.entry(1, size) == (world.twin_run / "envelope.dsse.json").read_bytes()


def test_a_split_view_is_refused_by_every_witness_and_shown_as_a_fork(world: World) -> None:
    # A second ledger under the SAME log key: entry 0 differs, entry 1 is the twin run's own
    # envelope, at the size the witnesses hold (2).
    forged_home = world.base / "forged"
    (forged_home / "keys").mkdir(parents=True, mode=0o700)
    for name in (f"{DEFAULT_LOG_NAME}.key", f"{DEFAULT_LOG_NAME}.pub"):
        shutil.copy2(world.served.data_dir / "keys" / name, forged_home / "keys" / name)
    envelope = (world.twin_run / "envelope.dsse.json").read_bytes()
    real = parse_tlog_proof((world.twin_run / "entry.tlog-proof").read_text()).checkpoint
    with open_ledger(f"sqlite:///{forged_home / 'ledger.sqlite3'}", forged_home) as forged:
        forged.append([b"a forged entry 0", envelope])
        forged_note = forged.sign_checkpoint()
        asked = request_cosignatures(
            forged, forged_note, [w.endpoint for w in world.witnesses], timeout_s=30
        )
        export_tiles(forged, world.base / "forged-tiles")
    assert split_note(forged_note)[0] != split_note(real)[0]
    assert [(a.witness, a.ok, a.detail) for a in asked.answers] == [
        (name, False, "409: witness is at size 2") for name in WITNESSES
    ]
    assert asked.note == forged_note  # no cosignature for the split view
    held = _log_note(real, DEFAULT_LOG_NAME)
    for w in world.witnesses:
        shown = cli("witness", "forks", "--data-dir", w.home)
        assert shown.returncode == 1, (w.name, shown.stdout, shown.stderr)
        assert f"fork of {DEFAULT_LOG_NAME} at size 2" in shown.stdout
        assert f"{held}\n{forged_note}" in shown.stdout
    # The log service itself is untouched: its checkpoint is the real one.
    assert httpx.get(world.served.url + "/checkpoint", timeout=60).text == real

    with static_site(world.base / "forged-tiles") as url:
        # A verifier that requires witnesses refuses the forged log's uncosigned checkpoint ...
        code, out = world.verify(world.twin_run, world.trust_2of3, url, "v-forged-2of3")
        assert code == 1, out
        assert _line(out, "FAIL log checkpoint: ") == (
            f"FAIL log checkpoint: the log at {url}: {DEFAULT_LOG_NAME} size 2 signed by "
            f"{world.log_key.keyid}; 0 of 3 witnesses cosigned; the policy needs 2"
        )
        # ... and one that requires none sees two checkpoints of size 2: a fork, both printed.
        code, out = world.verify(world.twin_run, world.trust_no_witness, url, "v-forged-none")
    assert code == 1, out
    assert _fails(out) == ["FAIL checkpoint consistency"]
    assert _line(out, "FAIL checkpoint consistency: ").startswith(
        f"FAIL checkpoint consistency: FORK: two checkpoints of size 2 signed by "
        f"{world.log_key.keyid} with different roots (both notes printed below; "
    )
    assert (
        f"fork proof: two signed checkpoints of {DEFAULT_LOG_NAME} at size 2 (the one shown by "
        f"this run, then the one served by the log at {url}):"
    ) in out
    assert f"\n{real}\n{forged_note}" in out


def test_with_two_witnesses_down_a_proof_carries_one_cosignature(world: World) -> None:
    """(last: it stops two witnesses.)"""
    up, *down = world.witnesses
    for w in down:
        w.stop()
    run = make_run_dir(world.base / "after-outage", n=12)
    out = seal_run_remote(run, world.signer, world.remote())
    assert out["ledger_index"] == 2  # quorum 1: the service still answers
    proof = parse_tlog_proof((run / "entry.tlog-proof").read_text())
    opened = open_note(proof.checkpoint, [world.log_key, *(w.key for w in world.witnesses)])
    assert [s.name for s in opened.verified] == [DEFAULT_LOG_NAME, up.name]
    assert len(split_note(proof.checkpoint)[1]) == 2
    url = world.served.url
    code, text = world.verify(run, world.trust_2of3, url, "v-outage-2of3")
    assert code == 1, text
    assert _line(text, "FAIL witnesses: ") == (
        f"FAIL witnesses: 1 of 3 witnesses cosigned ({up.key.keyid}); the policy needs 2"
    )
    # the log's current checkpoint (the same one) falls short too, so its entry is not read
    assert _fails(text) == ["FAIL witnesses", "FAIL log checkpoint", "FAIL log entry"]
    assert _line(text, "FAIL log checkpoint: ") == (
        f"FAIL log checkpoint: the log at {url}: {DEFAULT_LOG_NAME} size 3 signed by "
        f"{world.log_key.keyid}; 1 of 3 witnesses cosigned ({up.key.keyid}); the policy needs 2"
    )
    code, text = world.verify(run, world.trust_1of3, url, "v-outage-1of3")
    assert code == 0, text
    assert _line(text, "ok   witnesses: ").startswith(
        f"ok   witnesses: 1 of 3 witnesses cosigned ({up.key.keyid} at "
    )
    assert text.rstrip().endswith(f"{run}: verified")
