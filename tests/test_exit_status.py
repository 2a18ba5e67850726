"""The pass rule of a run (``audit.run.problems``: the CLI's and the demo's exit status) and the
one-line refusal of an --out that is a file; on hand-made summaries, no load."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from inferaudit.audit.run import RunOutcome, prepare_dir, problems
from inferaudit.errors import ConfigError
from inferaudit.judge.verdict import Outcome, Verdict
from inferaudit.measure.protocol import SLO, Endpoint, Load, RunSpec
from inferaudit.measure.summary import Summary

FIXTURE_SUMMARY = Path(__file__).parent / "data" / "evidence-v1" / "summary.json"


def outcome(
    *, failed: int = 0, slo: bool = False, checks: tuple[str, ...] = (), **over: object
) -> RunOutcome:
    spec = RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"),
        load=Load(concurrency=2, requests=8),
        slo=SLO.parse("ttft_p99=2000ms") if slo else SLO(),
        checks=checks,
    )
    summary = Summary.from_json(orjson.loads(FIXTURE_SUMMARY.read_bytes()))
    summary = summary.model_copy(update={"failed": failed, "completed": 8 - failed})
    fields: dict[str, object] = {"run_dir": Path("r"), "spec": spec, "summary": summary, **over}
    return RunOutcome(**fields)  # type: ignore[arg-type]


def test_failed_requests_fail_the_run_only_when_judged() -> None:
    assert problems(outcome()) == []
    # --checks none, no SLO: failures are reported by the CLI but judged by nothing
    assert problems(outcome(failed=4)) == []
    assert problems(outcome(failed=4, slo=True)) == [
        "4 of 8 measured requests failed (the SLO counts them)"
    ]
    assert problems(outcome(failed=4, checks=("errors",))) == [
        "4 of 8 measured requests failed (the errors check counts them)"
    ]


def test_invalid_interrupted_and_failed_checks() -> None:
    bad = Verdict("caching", Outcome.failed, "repeated prompts 34% faster")
    fine = Verdict("fluidity", Outcome.inconclusive, "the client was busy")
    o = outcome(verdicts=(bad, fine), interrupted=True)
    assert problems(o) == [
        "interrupted: finished requests are kept in records.jsonl",
        "check caching failed: repeated prompts 34% faster",
    ]
    invalid = outcome()
    invalid.summary = invalid.summary.model_copy(
        update={"valid": False, "invalid_reasons": ("no measured request completed",)}
    )
    assert problems(invalid) == ["invalid: no measured request completed"]


def test_out_naming_a_file_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        prepare_dir(f)
    with pytest.raises(ConfigError, match="a parent of it is a file"):
        prepare_dir(f / "run")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        prepare_dir(tmp_path / "full")
