"""Each adversarial twin behaviour is reported as ``fail`` by its matching check when
`inferaudit run` (the library entry point) runs against it. Helpers: ``test_checks_twin``."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferaudit.judge.verdict import Outcome
from inferaudit.measure.protocol import Api
from test_checks_twin import assert_fails, run_checks

CASES = [
    (("response-cache",), ["caching"], "caching"),
    (("prefix-cache",), ["prefix-cache"], "prefix-cache"),
    (("early-stop",), ["output-length"], "output-length"),
    (("early-stop:lie=true",), ["output-length"], "output-length"),
    (("role-first-chunk",), ["first-token"], "first-token"),
    (("burst",), ["fluidity"], "fluidity"),
    (("shed-under-load:threshold=2",), ["errors"], "errors"),
    (("shed-under-load:threshold=2,mode=truncate",), ["errors"], "errors"),
    (("ignore-params",), ["conformance"], "conformance"),
    (("usage-inflate",), ["token-accounting"], "token-accounting"),
]


@pytest.mark.parametrize(("behave", "checks", "failing"), CASES, ids=[c[0][0] for c in CASES])
def test_behaviour_is_caught(
    tmp_path: Path, behave: tuple[str, ...], checks: list[str], failing: str
) -> None:
    verdicts = run_checks(tmp_path, behave, checks=checks)
    assert set(verdicts) == set(checks)
    assert_fails(verdicts, failing)


def test_role_first_chunk_over_chat(tmp_path: Path) -> None:
    # Chat: an honest role-only delta comes with the first token; this one comes at once.
    # A slow first token (200 ms) keeps every early chunk far past the check's 50% / 5 ms bar,
    # even when a busy machine delays the empty chunk by tens of milliseconds.
    verdicts = run_checks(
        tmp_path, ("role-first-chunk",), checks=["first-token"], api=Api.chat, ttft_ms=200
    )
    v = assert_fails(verdicts, "first-token")
    assert v.numbers["early_empty_chunks"] == 20


def test_honest_chat_role_delta_is_not_a_finding(tmp_path: Path) -> None:
    verdicts = run_checks(tmp_path, checks=["first-token"], api=Api.chat)
    v = verdicts["first-token"]
    assert v.verdict is Outcome.passed
    assert v.numbers["with_empty_first_chunk"] == 20 and v.numbers["early_empty_chunks"] == 0
