"""Memory bounded by what is in flight (issue 12): the summary streams ``records.jsonl`` and
keeps compact numbers, exactly.

* the exact streaming statistics (``stats.ExactSum``, ``distribution_array``,
  ``StreamDistribution`` in every mode: in memory, one refinement, down to single keys) give
  ``stats.distribution``'s figures bit for bit;
* ``summarize`` over a streamed file equals ``summarize`` over the list, and the ITL figures
  equal the plain definition, also when the ITL samples overflow memory (a second pass);
* structurally: tracemalloc's peak while summarizing a file grows far less than the text the
  file holds (no Record, no text kept), and ``verify``'s recomputation reads the file streamed.
"""

from __future__ import annotations

import hashlib
import math
import random
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pytest

from inferaudit.measure import stats
from inferaudit.measure.metrics import itl_samples_ms, summarize
from inferaudit.measure.protocol import SLO, Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import Record, iter_records, read_records
from inferaudit.seal.evidence import canonical
from inferaudit.seal.recompute import recompute_summary

MS = 1_000_000


def _spec(**load: object) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"),
        load=Load(rate=100, duration_s=10, **load),  # type: ignore[arg-type]
        workload=Workload(input_tokens=Length(lo=8, hi=8), output_tokens=Length(lo=8, hi=8)),
        slo=SLO(bounds_ms={"ttft_p99": 45.0, "itl_p50": 9.0, "tpot_p90": 10.0, "e2e_p99": 200.0}),
        seed=1,
    )


def _record(i: int, rng: random.Random, chunks: int, text_bytes: int = 0) -> dict[str, object]:
    """One valid record: some fail, some are warm-up, usage above the chunks on some."""
    scheduled = i * 10 * MS + rng.randint(0, MS)
    slot = scheduled + rng.randint(0, 3 * MS) if i % 3 else None
    sent = (slot or scheduled) + rng.randint(10_000, 900_000)
    first = sent + rng.randint(20 * MS, 50 * MS)
    times = [first]
    for _ in range(chunks - 1):
        times.append(times[-1] + rng.choice((0, rng.randint(MS, 14 * MS))))
    chars = [rng.randint(0, 9) for _ in range(chunks)]
    text = ("y" * text_bytes) if text_bytes else "x" * sum(chars)
    failed = i % 17 == 3
    return {
        "id": i,
        "worker": i % 2,
        "phase": "warmup" if i < 3 else "measure",
        "scheduled_ns": scheduled,
        "slot_ns": slot,
        "sent_ns": None if i % 29 == 5 else sent,
        "first_content_ns": None if failed else first,
        "chunk_ns": times,
        "chunk_chars": chars,
        "done_ns": times[-1] + rng.randint(0, MS),
        "status": 200,
        "error_class": "http_503" if failed else None,
        "usage_completion_tokens": chunks + (i % 5 == 0) * 7 if i % 7 else None,
        "content_chunks": chunks,
        "empty_chunks_before_content": i % 2,
        "output_chars": len(text),
        "output_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "output_text": text,
    }


def _write(path: Path, n: int, chunks: int, text_bytes: int = 0) -> None:
    rng = random.Random(n)
    with open(path, "wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps(_record(i, rng, chunks, text_bytes)) + b"\n")


# -- exact streaming statistics ----------------------------------------------------------------


def _samples() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.exponential(5.0, 3001),
        np.full(1000, 0.25),  # one value, many times: the selection goes down to one key
        rng.integers(0, 4, 2000) / 7.0,
        np.concatenate([rng.normal(0, 1e-300, 500), rng.normal(0, 1e300, 3)]),
        rng.lognormal(0, 3, 4000) * rng.choice([-1, 1], 4000),
        np.array([3.5]),
    ]


@pytest.mark.parametrize("index", range(6))
def test_exact_sum_and_array_distribution_equal_fsum_and_distribution(index: int) -> None:
    values = _samples()[index]
    total = stats.ExactSum()
    for part in np.array_split(values, 5):
        total.add(part)
    assert total.value() == math.fsum(values.tolist())
    assert stats.distribution_array(values) == stats.distribution(values.tolist())


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize(("memory", "window"), [(10**6, 1), (0, 10**6), (10, 100), (0, 1)])
def test_stream_distribution_is_exact_in_every_mode(index: int, memory: int, window: int) -> None:
    values = _samples()[index]
    parts = np.array_split(values, 7)
    dist = stats.StreamDistribution(memory_values=memory, window_values=window)
    for part in parts:
        dist.add(part)
    assert dist.result(lambda: iter(parts)) == stats.distribution(values.tolist())
    if memory == 0 and len(values) > 1:
        assert dist.passes >= 2  # it did read the values again


def test_stream_distribution_notices_values_that_changed_between_passes() -> None:
    dist = stats.StreamDistribution(memory_values=0, window_values=10**6)
    dist.add(np.arange(100, dtype=np.float64))
    with pytest.raises(AssertionError, match="changed between passes"):
        dist.result(lambda: iter([np.arange(50, dtype=np.float64)]))


# -- the summary, streamed -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", [_spec(), _spec(max_concurrency=4)], ids=["open", "capped"])
def test_summary_of_a_streamed_file_equals_the_in_memory_one(tmp_path: Path, spec: RunSpec) -> None:
    path = tmp_path / "records.jsonl"
    _write(path, 700, 6)
    records = read_records(path)
    streamed = summarize(path, spec).to_json()
    assert streamed == summarize(records, spec).to_json()
    ok = [r for r in records if r.phase == "measure" and r.ok]
    assert streamed["itl_ms"] == stats.distribution([x for r in ok for x in itl_samples_ms(r)])
    ttft = [(r.first_content_ns - r.scheduled_ns) / MS for r in ok if r.first_content_ns]
    assert streamed["ttft_ms"] == stats.distribution(ttft)
    assert streamed["requests"] == 697 and streamed["excluded"] == {"warmup": 3}
    assert streamed["errors"] == {"http_503": 41}


def test_summary_reads_the_file_again_when_itl_samples_overflow_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "records.jsonl"
    _write(path, 400, 9)
    spec = _spec()
    in_memory = summarize(path, spec).to_json()
    monkeypatch.setattr(stats.StreamDistribution.__init__, "__defaults__", (100, 50))
    opened: list[object] = []

    real_open = Path.open

    def counting_open(self: Path, *args: object, **kwargs: object) -> object:
        opened.append(self)
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    # the records reader opens the file with ``Path.open``
    monkeypatch.setattr(Path, "open", counting_open)
    overflowing = summarize(path, spec).to_json()
    assert overflowing == in_memory
    assert opened.count(path) >= 2  # the first pass, then at least one more for the ranks


def _peak_bytes(path: Path, spec: RunSpec) -> int:
    tracemalloc.start()
    try:
        summarize(path, spec)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_summary_keeps_numbers_not_records(tmp_path: Path) -> None:
    """20k vs 80k records of ~2.2 KB each (2 KB of text): what the summary holds grows by far
    less than a quarter of a line per extra record (its columns: ~100 bytes a request), where
    holding the records would grow by more than a line each."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    _write(small, 20_000, 4, text_bytes=2048)
    _write(large, 80_000, 4, text_bytes=2048)
    line_bytes = large.stat().st_size / 80_000
    assert line_bytes > 2048
    spec = _spec()
    growth_per_record = (_peak_bytes(large, spec) - _peak_bytes(small, spec)) / 60_000
    assert growth_per_record < line_bytes / 4


def test_verify_recomputes_the_summary_from_the_streamed_file(tmp_path: Path) -> None:
    from inferaudit.measure.protocol import canonical_bytes

    spec = _spec()
    _write(tmp_path / "records.jsonl", 300, 5)
    (tmp_path / "spec.json").write_bytes(canonical_bytes(spec))
    signed = orjson.loads(canonical(summarize(tmp_path / "records.jsonl", spec).to_json()))
    assert recompute_summary(tmp_path, signed, None) == (
        True,
        "recomputed from 300 records: equal",
    )
    signed["itl_ms"]["p50"] = 1.0
    ok, detail = recompute_summary(tmp_path, signed, None)
    assert not ok and detail.startswith("summary.itl_ms.p50 differs: 1.0 vs ")


def test_iter_records_streams_and_ignores_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    _write(path, 5, 2)
    with open(path, "ab") as fh:
        fh.write(b'{"id": 99, "sched')  # a write cut short
    stream = iter_records(path)
    first = next(stream)
    assert isinstance(first, Record) and first.id == 0
    assert [r.id for r in stream] == [1, 2, 3, 4]
