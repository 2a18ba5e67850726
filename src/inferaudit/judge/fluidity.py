"""Streaming fluidity: are tokens streamed as generated, or held and flushed together?

A server can hold tokens and flush several in one write: inter-token latency then looks tiny
between flushes (the ITL p50 collapses to 0) while tokens really come late. From first
principles, steady decoding at a request's own time per output token (TPOT, its stream's span
over its tokens) sends one event every TPOT; events written together arrive within microseconds.
So the check judges the distribution of gaps against the request's own TPOT, with no floor on
the group size: a token is *grouped* when its event arrives within ``tick`` of the event before
it (or the one after), ``tick = min(TICK_MS, TPOT_SHARE x TPOT)`` (1 ms, or a quarter of the
TPOT for fast streams, so a 0.5 ms honest stream is not grouped). The share of grouped tokens
fails at ``LIMIT`` (20%): grouping fewer than a fifth of the tokens can pull no more than a fifth
of the ITL samples to zero, so the reported ITL p50 stays at or above the honest p30. Tokens
flushed 2, 3 or 16 at a time are all grouped (share close to 100%).

Multi-token events (speculative decoding) are one event each and are never grouped by
themselves. The client can group events too: a reader stalled for a TPOT reads two events at
once. Only requests in healthy client windows whose loop delay p99 is below the request's TPOT
(minus the tick) are judged: a client that stalls for less than a TPOT on 99% of its timer ticks
cannot merge events a TPOT apart, except on the rare stalls that its p99 already bounds. When
grouping shows only where the client could have caused it, the verdict is *inconclusive — the
client was busy* (``judge.noise``).

With the client's recorded loop stalls (``HealthWindow.stalls``) the judge no longer needs quiet
windows: every request the windows cover is judged, and a group is *excused* when a stall of the
request's own worker could have made it: one that ended when the group was read and lasted the
``k - 1`` TPOTs the group's events took to come (each less one stall too short to be recorded,
``judge.noise.UNSEEN_NS``, and the tick). The share is taken over
the tokens not excused; when more than half of the tokens are excused, nothing can be said
(inconclusive).
"""

from __future__ import annotations

from collections.abc import Sequence

from inferaudit.judge.counting import completed
from inferaudit.judge.noise import (
    MIN_JUDGED,
    UNSEEN_NS,
    ClientWindow,
    SpanHealth,
    Stalls,
    busy_numbers,
    busy_verdict,
    covered,
    record_span,
    split_by_health,
)
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.records import Record
from inferaudit.measure.stats import allocate, round_sig

NAME = "fluidity"
TICK_MS = 1.0
LIMIT = 0.20
TPOT_SHARE = 0.25


def tokens_per_event(r: Record) -> list[int]:
    """Tokens per content event: usage spread by characters when it exceeds the event count."""
    k = len(r.chunk_ns)
    total = r.usage_completion_tokens
    if not k or total is None or total <= k:
        return [1] * k
    return allocate(total, r.chunk_chars)


def tpot_ms(r: Record) -> float | None:
    """The stream's own time per output token after the first event (None below 2 events)."""
    tokens = tokens_per_event(r)
    ns = r.chunk_ns
    if len(ns) < 2:
        return None
    return (ns[-1] - ns[0]) / 1e6 / max(sum(tokens) - tokens[0], 1)


def tick_ms(r: Record, tick: float = TICK_MS) -> float:
    tpot = tpot_ms(r)
    return tick if tpot is None else min(tick, TPOT_SHARE * tpot)


def group_spans(r: Record, *, tick: float = TICK_MS) -> list[tuple[int, int, int]]:
    """(first event, last event, tokens) of each group (>= 2 consecutive events within the
    tick) in one record."""
    ns = r.chunk_ns  # read once: a stored record's list comes from its file (record_store)
    k = len(ns)
    if k < 2:
        return []
    limit_ns = tick_ms(r, tick) * 1e6
    tokens = tokens_per_event(r)
    out: list[tuple[int, int, int]] = []
    first, toks = 0, tokens[0]
    for i in range(1, k + 1):
        if i < k and ns[i] - ns[i - 1] <= limit_ns:
            toks += tokens[i]
            continue
        if i - 1 > first:
            out.append((first, i - 1, toks))
        if i < k:
            first, toks = i, tokens[i]
    return out


def groups(r: Record, *, tick: float = TICK_MS) -> list[int]:
    """Token counts of each group in one record."""
    return [toks for _, _, toks in group_spans(r, tick=tick)]


def _stall_made(r: Record, group: tuple[int, int, int], stalls: Stalls) -> bool:
    """Could a stall of the record's worker have merged this group? A stalled client reads, when
    it resumes, all that arrived meanwhile: ``k`` events sent a TPOT apart come out in one read
    only after a stall that ended when the group was read (within one unrecorded stall,
    ``UNSEEN_NS``) and lasted ``(k - 1)`` TPOTs less the tick (less one unrecorded stall)."""
    first, last, _ = group
    tpot = tpot_ms(r) or 0.0
    need = (last - first) * tpot - tick_ms(r)
    longest = stalls.longest_ns(r.worker, r.chunk_ns[first] - UNSEEN_NS, r.chunk_ns[last])
    return longest > 0 and (longest + UNSEEN_NS) / 1e6 >= need


def _client_could_group(r: Record, h: SpanHealth) -> bool:
    """A loop delay p99 as long as the gap between two tokens (minus the tick) could merge them."""
    tpot = tpot_ms(r)
    if tpot is None or h.loop_delay_p99_ms is None:
        return False
    return h.loop_delay_p99_ms >= tpot - tick_ms(r)


def _share(rs: Sequence[Record]) -> tuple[int, int, int, int]:
    """(tokens, grouped tokens, groups, largest group) over ``rs``."""
    total = grouped = count = largest = 0
    for r in rs:
        total += sum(tokens_per_event(r))
        g = groups(r)
        grouped += sum(g)
        count += len(g)
        largest = max(largest, *g) if g else largest
    return total, grouped, count, largest


def check_fluidity(
    records: Sequence[Record],
    *,
    health: Sequence[ClientWindow] = (),
    lag_problem: str | None = None,
    limit: float = LIMIT,
) -> Verdict:
    done = [r for r in completed(records) if len(r.chunk_ns) >= 2]
    if not done:
        return Verdict(NAME, Outcome.inconclusive, "no stream with two or more tokens", {})
    stalls = Stalls.of(health)
    if stalls is not None:
        return _by_stalls(done, health, stalls, lag_problem, limit)
    judged, busy = split_by_health(
        done, health, record_span, lambda r, h: not _client_could_group(r, h)
    )
    total, grouped, count, largest = _share(judged)
    all_total, all_grouped, _, all_largest = _share(done)
    share = grouped / total if total else 0.0
    all_share = all_grouped / all_total if all_total else 0.0
    numbers: dict[str, object] = {
        "requests": len(done),
        "tokens": total,
        "grouped_tokens": grouped,
        "grouped_share": round_sig(share),
        "groups": count,
        "largest_group_tokens": largest,
        "requests_with_groups": sum(1 for r in judged if groups(r)),
        "all_requests_grouped_share": round_sig(all_share),
        "tpot_ms_p50": _tpot_p50(done),
        "limits": {"tick_ms": TICK_MS, "tpot_share": TPOT_SHARE, "share": limit},
        **busy_numbers(health, len(judged), len(busy), lag_problem),
    }
    if share >= limit and lag_problem is None and len(judged) >= MIN_JUDGED and health:
        return Verdict(
            NAME,
            Outcome.failed,
            _held(share, largest, numbers, limit),
            numbers,
        )
    if share >= limit or all_share >= limit:
        return busy_verdict(
            NAME,
            f"{pct(max(share, all_share))} of tokens arrived grouped (up to "
            f"{max(largest, all_largest)} at once)",
            numbers,
            lag_problem,
        )
    return Verdict(
        NAME,
        Outcome.passed,
        f"tokens streamed steadily ({pct(share)} grouped, limit {pct(limit)}; "
        f"{len(judged)} of {len(done)} requests judged)",
        numbers,
    )


def _tpot_p50(rs: Sequence[Record]) -> float | None:
    tpots = sorted(t for r in rs if (t := tpot_ms(r)) is not None)
    return round_sig(tpots[len(tpots) // 2]) if tpots else None


def _held(
    share: float, largest: int, numbers: dict[str, object], limit: float, note: str = ""
) -> str:
    return (
        f"{pct(share)} of tokens arrived grouped (up to {largest} at once within {TICK_MS:g} ms "
        f"at a TPOT of {numbers['tpot_ms_p50']} ms; limit {pct(limit)}{note}): tokens are held "
        "and flushed, inter-token latency is not what it seems"
    )


def _by_stalls(
    done: Sequence[Record],
    health: Sequence[ClientWindow],
    stalls: Stalls,
    lag_problem: str | None,
    limit: float,
) -> Verdict:
    """The verdict with the client's recorded stalls: each group is judged unless a stall of its
    worker could have made it (``_stall_made``); the share is over the tokens not excused."""
    judged = [r for r in done if covered(health, *record_span(r))]
    total = grouped = excused = count = largest = 0
    for r in judged:
        total += sum(tokens_per_event(r))
        for g in group_spans(r):
            if _stall_made(r, g, stalls):
                excused += g[2]
                continue
            grouped += g[2]
            count += 1
            largest = max(largest, g[2])
    kept = total - excused
    share = grouped / kept if kept else 0.0
    numbers: dict[str, object] = {
        "requests": len(done),
        "tokens": total,
        "grouped_tokens": grouped,
        "grouped_share": round_sig(share),
        "groups": count,
        "largest_group_tokens": largest,
        "grouped_tokens_excused_by_stalls": excused,
        "tpot_ms_p50": _tpot_p50(done),
        "limits": {"tick_ms": TICK_MS, "tpot_share": TPOT_SHARE, "share": limit},
        **busy_numbers(health, len(judged), len(done) - len(judged), lag_problem, excused),
    }
    seen = f"{pct(share)} of tokens arrived grouped (up to {largest} at once)"
    if share >= limit:
        if lag_problem is None and len(judged) >= MIN_JUDGED and 2 * excused <= total:
            return Verdict(
                NAME,
                Outcome.failed,
                _held(
                    share,
                    largest,
                    numbers,
                    limit,
                    f"; {excused} grouped tokens overlapping a client stall not counted",
                ),
                numbers,
            )
        return busy_verdict(NAME, seen, numbers, lag_problem)
    if 2 * excused > total:
        return busy_verdict(
            NAME, f"{excused} of {total} tokens arrived grouped during client stalls", numbers,
            lag_problem,
        )  # fmt: skip
    return Verdict(
        NAME,
        Outcome.passed,
        f"tokens streamed steadily ({pct(share)} grouped, limit {pct(limit)}; {excused} grouped "
        f"tokens during client stalls not counted; {len(judged)} of {len(done)} requests judged)",
        numbers,
    )
