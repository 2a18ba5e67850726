"""The live progress of `inferaudit run`: its TTFT figure is over the latest requests, so its
memory and its refresh cost stay the same however long the run is."""

from inferaudit.cli.run import _PROGRESS_TTFT_WINDOW, LiveProgress
from inferaudit.measure.records import Record


def done(i: int, ttft_ms: int) -> Record:
    sent = i * 1_000_000
    first = sent + ttft_ms * 1_000_000
    return Record(
        id=i,
        scheduled_ns=sent,
        sent_ns=sent,
        first_content_ns=first,
        done_ns=first + 1_000_000,
        chunk_ns=[first],
        chunk_chars=[3],
        content_chunks=1,
        status=200,
        finish_reason="length",
    )


def test_the_ttft_window_keeps_the_latest_requests_only() -> None:
    progress = LiveProgress()
    early = 2 * _PROGRESS_TTFT_WINDOW
    for i in range(early):  # the early requests are slow ...
        progress.record(done(i, 900))
    for i in range(early, early + _PROGRESS_TTFT_WINDOW):  # ... the latest ones fast
        progress.record(done(i, 100))
    assert len(progress.ttfts) == _PROGRESS_TTFT_WINDOW
    assert progress.done == early + _PROGRESS_TTFT_WINDOW
    stats = progress._stats()
    assert f"TTFT p50 (last {_PROGRESS_TTFT_WINDOW}) 100.0 ms" in stats, stats


def test_a_short_run_shows_its_whole_median_unlabelled() -> None:
    progress = LiveProgress()
    for i, ttft in enumerate((100, 200, 300)):
        progress.record(done(i, ttft))
    assert progress._stats().endswith("TTFT p50 200.0 ms")
