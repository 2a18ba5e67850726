"""Old evidence keeps verifying: a run directory sealed by inferaudit 0.1 (predicate
``inference-run/v1``), committed with its public keys, must verify with every later version."""

from __future__ import annotations

import shutil
from pathlib import Path

from inferaudit.seal.keys import load_trust
from inferaudit.seal.verify import verify_run

FIXTURE = Path(__file__).parent / "data" / "evidence-v1"


def test_v1_run_directory_still_verifies(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    report = verify_run(run, load_trust(FIXTURE / "trust.txt"))
    assert report.ok, [f"{c.name}: {c.detail}" for c in report.failures()]
    names = [c.name for c in report.steps]
    assert "summary" in names and "verdicts" in names


def test_v1_run_directory_refuses_an_edited_record(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    records = run / "records.jsonl"
    records.write_bytes(records.read_bytes().replace(b'"worker":0', b'"worker":1', 1))
    report = verify_run(run, load_trust(FIXTURE / "trust.txt"))
    assert not report.ok
    assert any(c.name == "subjects" for c in report.failures())


FIXTURE_V2 = Path(__file__).parent / "data" / "evidence-v2"


def test_v2_run_directory_of_this_round_still_verifies(tmp_path: Path) -> None:
    # Sealed by this round's version (multi-turn sessions from the ShareGPT sample, the twin's
    # /metrics scraped, nine checks): every later version must verify it as it is.
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_V2, run)
    report = verify_run(run, load_trust(FIXTURE_V2 / "trust.txt"))
    assert report.ok, [f"{c.name}: {c.detail}" for c in report.failures()]
    server = run / "server-metrics.jsonl"
    server.write_bytes(server.read_bytes().replace(b'"ok":true', b'"ok":false', 1))
    report = verify_run(run, load_trust(FIXTURE_V2 / "trust.txt"))
    assert any(c.name == "subjects" for c in report.failures())
