"""Client noise: which records a timing judge may use, and when to say "the client was busy".

A timing check reads arrival times stamped by the client. A busy client moves them: a stalled
event loop reads events late (a late first event, a long gap) and reads several events in one go
(a "burst" that the server never sent). A false accusation is as bad as a missed cheat, so every
timing judge follows the same rules (issue 9 item 2):

1. It judges only records whose time span lies in health windows (contract C3,
   ``inferaudit.measure.health.HealthWindow``) that the client marked ``healthy``; a span not
   covered by any window is not judged either. Without any health data (a new run that recorded
   none) nothing rules client noise out: the judge reports what it sees, passes a clean stream,
   but never FAILs on timing (inconclusive, "no client health data").
2. When the signal it looks for shows only in records it could not judge, or in too few judged
   records (``MIN_JUDGED``), the verdict is *inconclusive — the client was busy*, with the
   numbers (records judged and not, busy windows, worst loop delay).
3. A run that the metrics marked invalid for client lag (``lag_problem``) never gets a timing
   FAIL: the finding becomes inconclusive, with the lag reason in its summary.

A span is judged only when the windows overlapping it cover it and are all healthy; the
fluidity judge also refuses a span whose loop delay p99 (time-weighted: the loop was late by more
than this for 1% of the window) reaches the request's own time per token.

Where the windows record the client's loop stalls (``HealthWindow.stalls``, every health file
written since they exist), a judge does not need a whole quiet window: it asks, signal by signal,
whether a stall of the request's own worker could have made it (``Stalls``). A stall only delays
what the client stamps: it can merge events that came apart (fluidity), lengthen the gap after
the first event (first token), make a control look slower (caching). A signal that a recorded
stall overlaps, or that is not longer than what the client's stalls inside it can add (their
recorded time plus, per stamp it rests on, one stall too short for the timer, ``UNSEEN_NS``),
is *excused*; a
finding must stand on the signals that are not (and on most of the requests: when more than half
are excused, the verdict is inconclusive). A span that no window covers is not judged; a worker
that sent no sample for a window counts as stalled through it. Windows without stall data (health
files written before) are judged by rule 1 exactly as before, so old evidence recomputes to the
same verdicts.

``split_by_health`` and ``busy_numbers`` are the helpers a timing judge (and the caching
comparison) calls; ``run_lag_problem`` gives the run's client-lag invalidity, from the one
validity rule in ``inferaudit.measure.budget`` as applied by ``metrics.summarize``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from inferaudit.judge.verdict import Outcome, Verdict
from inferaudit.measure.health import LOOP_TICK_S, STALL_MS, epoch_phase
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig

# A timing verdict rests on at least this many judged requests: below it, one odd request
# (or one stall the windows missed) would decide it.
MIN_JUDGED = 3
LAG_REASON_PREFIX = "client fell behind its schedule"
# The longest loop stall the health timer can miss: one that ends before the timer is a stall
# late (a tick plus ``STALL_MS``). Charged once per stamp a signal rests on, beside the stalls
# that were recorded.
UNSEEN_NS = round((LOOP_TICK_S * 1e3 + STALL_MS) * 1e6)

T = TypeVar("T")


class ClientWindow(Protocol):
    """The fields of a health window (C3 ``HealthWindow``) that the judges read."""

    @property
    def start_ns(self) -> int: ...

    @property
    def end_ns(self) -> int: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def loop_delay_p99_ms(self) -> float | None: ...

    @property
    def loop_delay_max_ms(self) -> float | None: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def phase(self) -> str: ...

    @property
    def stalls(self) -> tuple[tuple[int, int, int], ...] | None: ...


def of_load(health: Sequence[ClientWindow], phase: str) -> list[ClientWindow]:
    """The windows that timed the load ``phase``'s records were sent by (each load has its own
    clock origin: records are judged only against their own load's windows)."""
    own = epoch_phase(phase)
    return [w for w in health if w.phase == own]


@dataclass(frozen=True)
class SpanHealth:
    """The client's health over one span of the run clock."""

    healthy: bool  # every window over the span was healthy (True without health data)
    windows: int  # windows overlapping the span
    loop_delay_p99_ms: float | None  # the worst window's p99 over the span
    loop_delay_max_ms: float | None  # the worst stall seen over the span


def span_health(health: Sequence[ClientWindow], start_ns: int, end_ns: int) -> SpanHealth:
    """Health over ``[start_ns, end_ns]``; a span no window covers is not healthy."""
    if not health:
        return SpanHealth(True, 0, None, None)
    over = [w for w in health if w.start_ns <= end_ns and w.end_ns >= start_ns]
    if not over:
        return SpanHealth(False, 0, None, None)
    covered = min(w.start_ns for w in over) <= start_ns and max(w.end_ns for w in over) >= end_ns
    return SpanHealth(
        healthy=covered and all(w.healthy for w in over),
        windows=len(over),
        loop_delay_p99_ms=_worst(w.loop_delay_p99_ms for w in over),
        loop_delay_max_ms=_worst(w.loop_delay_max_ms for w in over),
    )


def covered(health: Sequence[ClientWindow], start_ns: int, end_ns: int) -> bool:
    """Do the windows over ``[start_ns, end_ns]`` cover it?"""
    over = [w for w in health if w.start_ns <= end_ns and w.end_ns >= start_ns]
    return bool(over) and (
        min(w.start_ns for w in over) <= start_ns and max(w.end_ns for w in over) >= end_ns
    )


@dataclass(frozen=True)
class Stalls:
    """The loop stalls of one load's workers: what a timing signal is charged against."""

    # worker -> the union of its stalls: disjoint (start, end) spans in order
    by_worker: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    @classmethod
    def of(cls, health: Sequence[ClientWindow]) -> Stalls | None:
        """The stalls of ``health``; None when some window did not record them (older files)."""
        if not health or any(w.stalls is None for w in health):
            return None
        out: dict[int, list[tuple[int, int]]] = {}
        for w in health:
            for worker, a, b in w.stalls or ():
                out.setdefault(worker, []).append((a, b))
        return cls({worker: _union(spans) for worker, spans in out.items()})

    def _over(self, worker: int, start_ns: int, end_ns: int) -> Iterable[tuple[int, int]]:
        spans = self.by_worker.get(worker, [])
        for a, b in spans[bisect_left(spans, start_ns, key=lambda ab: ab[1]) :]:
            if a > end_ns:
                break
            yield a, b

    def longest_ns(self, worker: int, start_ns: int, end_ns: int) -> int:
        """The longest stall of ``worker`` that overlaps ``[start_ns, end_ns]`` (0: none)."""
        return max((b - a for a, b in self._over(worker, start_ns, end_ns)), default=0)

    def stalled_ns(self, worker: int, start_ns: int, end_ns: int) -> int:
        """How long ``worker``'s loop was stalled inside ``[start_ns, end_ns]``."""
        return sum(
            min(b, end_ns) - max(a, start_ns) for a, b in self._over(worker, start_ns, end_ns)
        )

    def charge_ns(self, worker: int, start_ns: int, end_ns: int, stamps: int) -> int:
        """The most the client can have delayed ``stamps`` stamps inside ``[start_ns, end_ns]``:
        its recorded stall time there plus, per stamp, one stall too short to be recorded."""
        return self.stalled_ns(worker, start_ns, end_ns) + stamps * UNSEEN_NS

    def count(self) -> int:
        return sum(len(v) for v in self.by_worker.values())

    def total_ms(self) -> float:
        return sum(b - a for v in self.by_worker.values() for a, b in v) / 1e6


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _worst(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def split_by_health(
    items: Sequence[T],
    health: Sequence[ClientWindow],
    span: Callable[[T], tuple[int, int]],
    extra: Callable[[T, SpanHealth], bool] | None = None,
) -> tuple[list[T], list[T]]:
    """(judged, busy): items whose ``span`` lies in healthy windows (and pass ``extra``), the rest.

    ``extra(item, health)`` lets a judge refuse a span the client could still have distorted
    (fluidity: a loop delay p99 as long as the request's own time per token).
    """
    judged: list[T] = []
    busy: list[T] = []
    for item in items:
        start, end = span(item)
        h = span_health(health, start, end)
        ok = h.healthy and (extra is None or extra(item, h))
        (judged if ok else busy).append(item)
    return judged, busy


def record_span(r: Record) -> tuple[int, int]:
    """From the actual send (or the schedule) to the end of the response."""
    start = r.sent_ns if r.sent_ns is not None else r.scheduled_ns
    end = r.done_ns if r.done_ns is not None else (r.chunk_ns[-1] if r.chunk_ns else start)
    return start, max(start, end)


def busy_numbers(
    health: Sequence[ClientWindow],
    judged: int,
    busy: int,
    lag_problem: str | None,
    excused: int | None = None,
) -> dict[str, object]:
    """The client-health figures every timing verdict carries (``excused``: signals charged to
    client stalls, with stall data)."""
    if not health:
        return {
            "client_health": "not recorded: every request judged",
            "judged_requests": judged,
            "busy_requests": busy,
            "client_lag_invalid": lag_problem,
        }
    unhealthy = [w for w in health if not w.healthy]
    reasons = sorted({w.reason for w in unhealthy if w.reason})
    stalls = Stalls.of(health)
    extra: dict[str, object] = {}
    if stalls is not None:
        extra = {
            "client_stalls": stalls.count(),
            "client_stalled_ms": round_sig(stalls.total_ms()),
            "excused_by_stalls": excused,
        }
    return {
        "client_health": "health windows",
        "windows": len(health),
        "busy_windows": len(unhealthy),
        "loop_delay_p99_ms_max": round_sig(_worst(w.loop_delay_p99_ms for w in health)),
        "loop_delay_max_ms": round_sig(_worst(w.loop_delay_max_ms for w in health)),
        "busy_reasons": reasons[:3],
        "judged_requests": judged,
        "busy_requests": busy,
        "client_lag_invalid": lag_problem,
        **extra,
    }


def busy_verdict(
    name: str, finding: str, numbers: dict[str, object], lag_problem: str | None
) -> Verdict:
    """*Inconclusive — the client was busy*: the finding it could explain, and why."""
    if lag_problem is not None:
        why = f"the run is invalid for client lag ({lag_problem.split(' — ')[0]})"
    elif numbers.get("client_health") != "health windows":
        why = "no client health data was recorded to rule client noise out"
    elif numbers.get("excused_by_stalls") is not None:
        why = (
            f"{numbers.get('excused_by_stalls')} signals overlap the client's own loop stalls "
            f"({numbers.get('client_stalls')} stalls, {numbers.get('client_stalled_ms')} ms in "
            f"all); {numbers.get('judged_requests', 0)} requests judged, "
            f"{numbers.get('busy_requests', 0)} not"
        )
    else:
        why = (
            f"{numbers.get('judged_requests', 0)} requests in healthy windows, "
            f"{numbers.get('busy_requests', 0)} in busy ones"
        )
    return Verdict(
        name, Outcome.inconclusive, f"inconclusive — the client was busy: {finding}; {why}", numbers
    )


def lag_reason(invalid_reasons: Sequence[str]) -> str | None:
    """The client-lag reason among a summary's ``invalid_reasons``, None when it kept up."""
    return next((r for r in invalid_reasons if r.startswith(LAG_REASON_PREFIX)), None)


def run_lag_problem(records: Sequence[Record], spec: RunSpec) -> str | None:
    """The run's invalidity for client lag (the metrics' own rule), None when it kept up."""
    from inferaudit.measure.metrics import summarize

    return lag_reason(summarize(records, spec).invalid_reasons)
