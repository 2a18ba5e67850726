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
    (("shed-under-load:threshold=2",), ["errors"], "errors"),
    (("shed-under-load:threshold=2,mode=truncate",), ["errors"], "errors"),
    (("ignore-params",), ["conformance"], "conformance"),
    (("usage-inflate",), ["token-accounting"], "token-accounting"),
]


@pytest.mark.parametrize(("behave", "checks", "failing"), CASES, ids=[c[0][0] for c in CASES])
def test_behaviour_is_caught(
    tmp_path: Path, behave: tuple[str, ...], checks: list[str], failing: str
) -> None:
    # The cache tests give the twin a slow first token (400 ms): a cache's 1 ms answer then
    # stands far beyond any stall a busy test machine puts on the client, which the caching
    # judge charges to every control before it accuses (see judge/caching.py).
    slow = failing in ("caching", "prefix-cache")
    verdicts = run_checks(tmp_path, behave, checks=checks, ttft_ms=400 if slow else 30)
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


def test_split_first_token_fails_with_tokenizer(tmp_path: Path, word_tokenizer: Path) -> None:
    # The twin sends 2 characters of the first token at once, the rest after its real 30 ms.
    verdicts = run_checks(
        tmp_path, ("split-first-token",), checks=["first-token"], tokenizer=word_tokenizer
    )
    v = assert_fails(verdicts, "first-token")
    assert v.numbers["fragment_first_events"] == 20
    assert v.numbers["early_fragments"] == v.numbers["judged_requests"]
    t1, t2 = v.numbers["ttft_first_event_ms_p50"], v.numbers["ttft_whole_token_ms_p50"]
    assert isinstance(t1, float) and isinstance(t2, float)
    assert t2 >= 30.0 and t2 == v.numbers["ttft_second_event_ms_p50"] and t1 < 0.5 * t2


def test_split_first_token_without_tokenizer_is_flagged(tmp_path: Path) -> None:
    v = run_checks(tmp_path, ("split-first-token",), checks=["first-token"])["first-token"]
    assert v.verdict is Outcome.inconclusive, v.summary
    assert "to the second" in v.summary and "--tokenizer" in v.summary


def test_one_token_more_on_every_answer_fails_inside_tolerance(
    tmp_path: Path, word_tokenizer: Path
) -> None:
    verdicts = run_checks(
        tmp_path,
        ("usage-inflate:ratio=0,add=1",),
        checks=["token-accounting"],
        tokenizer=word_tokenizer,
        output_tokens=128,
    )
    v = assert_fails(verdicts, "token-accounting")
    assert v.numbers["client_tokens"] == 20 * 128 and v.numbers["usage_tokens"] == 20 * 129
    assert v.numbers["relative_difference"] == 1 / 128  # 0.78%: inside the 1% tolerance
    assert v.numbers["sign_test"]["above"] == 20  # type: ignore[index]


@pytest.mark.parametrize("behave", ["burst", "burst:every=3", "burst:every=2"])
def test_held_tokens_fail_fluidity(tmp_path: Path, behave: str) -> None:
    # A 20 ms TPOT: a client loop late by up to 19 ms for 1% of the time (a busy shared machine)
    # still cannot merge tokens 20 ms apart, so every request is judged.
    verdicts = run_checks(tmp_path, (behave,), checks=["fluidity"], tpot_ms=20)
    v = assert_fails(verdicts, "fluidity")
    assert v.numbers["judged_requests"] == 20
    assert v.numbers["grouped_share"] >= 0.9  # type: ignore[operator]
