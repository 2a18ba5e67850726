"""Which checks a run does (``plan_checks``), without any network."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferaudit.errors import ConfigError
from inferaudit.judge.suite import ALL_CHECKS, plan_checks
from inferaudit.measure.protocol import Endpoint, Load, RunSpec


def spec(checks: tuple[str, ...] = ()) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:1/v1", model="m"),
        load=Load(concurrency=1, requests=10),
        checks=checks,
    )


def test_defaults_are_all_but_identity_without_fingerprint() -> None:
    suite = plan_checks(spec())
    assert suite.names == tuple(n for n in ALL_CHECKS if n != "identity")
    traffic = suite.traffic(spec())
    assert traffic.injected == {}  # 10 requests: too short to carry the audit inside
    assert len(traffic.before) == 6 and len(traffic.after) == 64


def test_selection_keeps_canonical_order_and_empty_means_none() -> None:
    assert plan_checks(spec(), selected=["errors", "fluidity"]).names == ("fluidity", "errors")
    none = plan_checks(spec(), selected=[])
    assert none.names == ()
    traffic = none.traffic(spec())
    assert (traffic.injected, traffic.before, traffic.after) == ({}, (), ())
    assert plan_checks(spec(("caching",))).names == ("caching",)


def test_bad_selections_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'speed': unknown check"):
        plan_checks(spec(), selected=["speed"])
    with pytest.raises(ConfigError, match="identity needs --fingerprint"):
        plan_checks(spec(), selected=["identity"])
    with pytest.raises(ConfigError, match="no such file"):
        plan_checks(spec(), tokenizer=tmp_path / "tokenizer.json")
    with pytest.raises(ConfigError, match="no such file"):
        plan_checks(spec(), fingerprint=tmp_path / "fp.json")
