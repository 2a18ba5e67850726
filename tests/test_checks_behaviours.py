"""Each adversarial twin behaviour is reported as ``fail`` by its matching check when
`inferaudit run` (the library entry point) runs against it. Helpers: ``test_checks_twin``."""

from __future__ import annotations

from pathlib import Path

import pytest

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
