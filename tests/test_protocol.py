import hashlib

import orjson
import pytest

from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import (
    SLO,
    Endpoint,
    Length,
    Load,
    RunSpec,
    canonical_bytes,
    spec_digest,
)


def spec(**load: object) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:8000/v1/", model="m"),
        load=Load(**({"concurrency": 4, "requests": 10} | load)),
    )


@pytest.mark.parametrize(
    ("text", "lo", "hi", "dist"),
    [
        ("128", 128, 128, "fixed"),
        ("64-256", 64, 256, "uniform"),
        ("64-256:normal", 64, 256, "normal"),
    ],
)
def test_length_parse(text: str, lo: int, hi: int, dist: str) -> None:
    length = Length.parse(text)
    assert (length.lo, length.hi, length.dist) == (lo, hi, dist)
    assert Length.parse(str(length)) == length


@pytest.mark.parametrize("text", ["0", "-5", "12x", "256-64", "010", "1_0", "+4", ""])
def test_length_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="token length"):
        Length.parse(text)


def test_slo_parse_units_and_order() -> None:
    slo = SLO.parse("tpot_p99=0.1s, ttft_p99=2000ms,e2e_p50=30000")
    assert slo.bounds_ms == {"e2e_p50": 30000.0, "tpot_p99": 100.0, "ttft_p99": 2000.0}
    assert list(slo.bounds_ms) == ["e2e_p50", "tpot_p99", "ttft_p99"]


@pytest.mark.parametrize(
    "text", ["ttft=5ms", "latency_p99=5ms", "ttft_p99", "ttft_p42=5ms", "ttft_p99=0"]
)
def test_slo_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        SLO.parse(text)


def test_load_needs_exactly_one_mode() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Load(concurrency=1, rate=2.0, requests=5)
    with pytest.raises(ValueError, match="requests or duration"):
        Load(rate=2.0)


def test_endpoint_normalised() -> None:
    assert spec().endpoint.base_url == "http://127.0.0.1:8000/v1"
    with pytest.raises(ValueError, match="http"):
        Endpoint(base_url="127.0.0.1:8000", model="m")


def test_canonical_hash_is_jcs_and_stable() -> None:
    a, b = spec(), spec()
    assert canonical_bytes(a) == canonical_bytes(b)
    raw = canonical_bytes(a)
    # RFC 8785: keys sorted (at every level), no whitespace
    assert raw.startswith(b'{"allow_prompt_cache":false,"checks":[]')
    parsed = orjson.loads(raw)
    assert list(parsed) == sorted(parsed) and list(parsed["load"]) == sorted(parsed["load"])
    assert b" " not in raw
    assert spec_digest(a) == hashlib.sha256(raw).hexdigest()
    assert spec_digest(spec(requests=11)) != spec_digest(a)
    assert RunSpec.model_validate_json(raw) == a
