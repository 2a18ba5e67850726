"""Timing judges with the client's recorded loop stalls (issue 9): a signal is charged to the
stalls of its own worker, so a busy client is excused exactly where it stalled and a cheat is
still caught in between; health files without stall data are judged as before."""

from __future__ import annotations

from pathlib import Path

from inferaudit.judge.caching import check_caching
from inferaudit.judge.first_token import check_first_token
from inferaudit.judge.fluidity import check_fluidity, group_spans
from inferaudit.judge.noise import Stalls
from inferaudit.judge.verdict import Outcome, format_verdict
from inferaudit.measure.health import HealthRecorder, HealthSampler, HealthWindow, read_health
from inferaudit.measure.load.client import ReadMeter
from inferaudit.measure.records import Record
from inferaudit.measure.tokenizer import load_tokenizer
from test_checks_records import MS, rec, split_rec
from test_health import S, _sample, spec
from test_traffic_cheats import cached_run


def window(
    k: int, stalls: tuple[tuple[int, int, int], ...] | None = (), *, healthy: bool = False
) -> HealthWindow:
    """Window ``k`` (1 s) of a busy client (not ``healthy``: the window gate alone would judge
    nothing) with the given stalls (worker, start_ns, end_ns)."""
    return HealthWindow(
        start_ns=k * 1000 * MS,
        end_ns=(k + 1) * 1000 * MS,
        loop_delay_p99_ms=5.0,
        loop_delay_max_ms=9.0,
        send_lag_p99_ms=3.0,
        client_cpu_util=0.5,
        loadavg1=4.0,
        steal_share=None,
        coalesced_share=None,
        allowed_lag_ms=1.0,
        healthy=healthy,
        reason=None if healthy else "loop delay p99 5 ms > 1 ms allowed",
        stalls=stalls,
    )


def test_stalls_are_a_union_per_worker_with_exact_overlap() -> None:
    w = [window(0, ((0, 10, 20), (0, 15, 30), (1, 0, 1000), (0, 50, 60)))]
    s = Stalls.of(w)
    assert s is not None and s.by_worker == {0: [(10, 30), (50, 60)], 1: [(0, 1000)]}
    assert s.stalled_ns(0, 0, 100) == 30 and s.stalled_ns(0, 25, 55) == 10
    assert s.longest_ns(0, 30, 49) == 20 and s.longest_ns(0, 31, 49) == 0
    assert s.longest_ns(2, 0, 100) == 0 and s.longest_ns(0, 0, 100) == 20
    assert Stalls.of([window(0, None)]) is None  # a file written before stalls were recorded


def held_by_three(i: int) -> Record:
    """Request ``i`` (sent at ``i`` s): tokens every 10 ms, held and flushed 3 at a time."""
    t0 = 1000 * MS * i + 50 * MS
    return rec(i, 31, times=[t0 + (k // 3) * 30 * MS for k in range(31)])


def test_fluidity_charges_each_group_to_its_own_workers_stalls() -> None:
    three = [held_by_three(i) for i in range(3)]  # groups read at 50, 80, 110, ... ms
    # a busy client (every window unhealthy) that stalled 4 times per request on worker 0,
    # each stall ending as a group was read: two of 5 ms, too short to merge 3 tokens 10 ms
    # apart (that takes 20 ms less the tick, less 3 ms unrecorded), and two of 25 ms that could
    stalls = tuple(
        (0, 1000 * MS * i + (end - length) * MS, 1000 * MS * i + end * MS)
        for i in range(3)
        for end, length in ((80, 5), (140, 5), (200, 25), (260, 25))
    )
    busy = [window(k, tuple(s for s in stalls if s[1] // (1000 * MS) == k)) for k in range(3)]
    v = check_fluidity(three, health=busy)
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["grouped_tokens_excused_by_stalls"] == 3 * 2 * 3  # 2 groups of 3 each
    assert v.numbers["grouped_tokens"] == 90 - 18
    assert v.numbers["judged_requests"] == 3 and v.numbers["client_stalls"] == 12
    # the stalls of another worker excuse nothing
    other = [window(k, tuple((1, a, b) for _, a, b in w.stalls or ())) for k, w in enumerate(busy)]
    assert check_fluidity(three, health=other).numbers["grouped_tokens_excused_by_stalls"] == 0
    # the same windows without stall data: judged by the window gate alone, as before
    legacy = [window(k, None) for k in range(3)]
    assert check_fluidity(three, health=legacy).verdict is Outcome.inconclusive


def test_fluidity_groups_made_by_client_stalls_are_excused() -> None:
    # an honest 10 ms stream read by a client that stalled 25 ms three times per request: each
    # stall merges the tokens it held into one read
    out, stalls = [], []
    for i in range(3):
        t0 = 1000 * MS * i + 50 * MS
        times = [t0 + k * 10 * MS for k in range(31)]
        for s in (55, 155, 255):  # stall [s, s + 25) ms after t0: reads land at its end
            end = t0 + (s + 25) * MS
            times = [end if t0 + s * MS <= t < end else t for t in times]
            stalls.append((0, t0 + s * MS, end))
        out.append(rec(i, 31, times=times))
    assert [toks for _, _, toks in group_spans(out[0])] == [3, 3, 3]
    health = [window(k, tuple(s for s in stalls if s[1] // (1000 * MS) == k)) for k in range(3)]
    v = check_fluidity(out, health=health)
    assert v.verdict is Outcome.passed, format_verdict(v)
    assert v.numbers["grouped_tokens"] == 0 and v.numbers["grouped_tokens_excused_by_stalls"] == 27
    # unrecorded, the same stalls would read as 29% grouped: FAIL (the client's doing)
    assert check_fluidity(out, health=[window(k) for k in range(3)]).verdict is Outcome.failed
    # when most grouped tokens overlap stalls, nothing can be said
    dense = tuple((0, 1000 * MS * k, 1000 * MS * (k + 1)) for k in range(3))
    held = [held_by_three(i) for i in range(3)]
    swamped = check_fluidity(held, health=[window(k, dense[k : k + 1]) for k in range(3)])
    assert swamped.verdict is Outcome.inconclusive, format_verdict(swamped)
    assert "overlap the client's own loop stalls" in swamped.summary


def test_first_token_split_is_caught_between_stalls_and_excused_inside_one(
    word_tokenizer: Path,
) -> None:
    tok = load_tokenizer(word_tokenizer)
    rs = [split_rec(i) for i in range(4)]  # fragment at 1 ms, the whole token at 50 ms
    # stalls of 5 ms at 20 ms after each send: twice 5 ms cannot make a 49 ms gap
    short = [window(k, ((0, (1000 * k + 20) * MS, (1000 * k + 25) * MS),)) for k in range(4)]
    v = check_first_token(rs, tokenizer=tok, health=short)
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["excused_by_stalls"] == 0 and v.numbers["early_fragments"] == 4
    # a stall over most of the gap could have delayed the second read: excused, inconclusive
    long = [window(k, ((0, (1000 * k + 2) * MS, (1000 * k + 47) * MS),)) for k in range(4)]
    assert check_first_token(rs, tokenizer=tok, health=long).verdict is Outcome.inconclusive
    # ... but a 38 ms stall (+ 3 ms unseen) leaves 8 ms of the 49 ms gap: still early, FAIL
    part = [window(k, ((0, (1000 * k + 2) * MS, (1000 * k + 40) * MS),)) for k in range(4)]
    assert check_first_token(rs, tokenizer=tok, health=part).verdict is Outcome.failed
    v = check_first_token(rs, tokenizer=tok, health=long)
    assert v.verdict is Outcome.inconclusive, format_verdict(v)
    assert v.numbers["excused_by_stalls"] == 4
    # an early role-only chunk 40 ms ahead of content, no stall inside the lead: FAIL
    role = [rec(i, empty_lead_ms=40.0) for i in range(4)]
    assert check_first_token(role, health=short).verdict is Outcome.failed


def test_caching_charges_each_control_its_own_stall_time() -> None:
    records = cached_run()  # repeats in 1 ms against 120 ms controls, sent every 200 ms
    quiet = [window(k, ((0, 1000 * MS * k, 1000 * MS * k + 5 * MS),)) for k in range(20)]
    v = check_caching(records, health=quiet)
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert "hastened by all that the client's stalls" in v.summary
    # honest repeats (as slow as their controls) whose controls were stalled 30 ms each: the
    # controls, charged twice their stall time, are no slower: nothing is found
    honest = cached_run(cache_from=10**6)
    stalled = tuple(
        (0, r.sent_ns or 0, (r.sent_ns or 0) + 30 * MS) for r in honest if r.tag is None
    )
    health = [window(k, tuple(s for s in stalled if s[1] // (1000 * MS) == k)) for k in range(20)]
    slowed = [
        r if r.tag else r.model_copy(update={
            "first_content_ns": (r.first_content_ns or 0) + 30 * MS,
            "done_ns": (r.done_ns or 0) + 30 * MS,
        })
        for r in honest
    ]  # fmt: skip
    assert check_caching(slowed, health=[window(k) for k in range(20)]).verdict is not (
        Outcome.passed
    )  # without the stalls recorded, the stalled controls look like a cache
    v = check_caching(slowed, health=health)
    assert v.verdict is Outcome.inconclusive, format_verdict(v)
    assert "but not beyond the client's own stalls" in v.summary
    assert "22 signals overlap the client's own loop stalls" in v.summary


def test_the_sampler_records_stalls_and_a_silent_worker_stalls_its_window(tmp_path: Path) -> None:
    got = []
    epoch = 10 * S
    sampler = HealthSampler(0, epoch, S, ReadMeter(), got.append)
    tick = 2 * MS
    sampler._late(epoch + 100 * MS, epoch + 100 * MS + MS // 2, tick)  # 0.5 ms late: no stall
    sampler._late(epoch + 300 * MS, epoch + 303 * MS, tick)  # 3 ms late: [298, 303] ms
    sampler.flush(upto=1)
    assert got[0].stalls == ((298 * MS, 303 * MS),)
    rec_ = HealthRecorder(tmp_path / "h.jsonl", spec(max_client_lag_p99_ms=5.0), epoch, [0, 1], S)
    rec_.sample(got[0])
    rec_.tick(epoch + 4 * S)  # worker 1 never reported window 0: taken as stalled through it
    (w,) = read_health(tmp_path / "h.jsonl")[:1]
    assert w.stalls == ((0, 298 * MS, 303 * MS), (1, 0, S))
    assert _sample(0, 0, ()).stalls == ()
