"""Caching (MLPerf TEST04's idea, over HTTP) and prefix reuse, judged on the records alone.

Both compare audit requests with *controls* sent in the same phase at the same time: for each
audit request, the ordinary request (a prompt sent for the first time, not a source of the pair)
of similar prompt length (within 10%, where known) whose actual send time is nearest to it. The
audit requests sit at positions drawn from the run's secret seed, inside the measured load
(``measure``) or in a supplementary block (``audit``), so a drift of host speed hits both arms
alike: nothing is ever sent unique-then-repeat.

``caching``: a *repeat* is a record whose prompt (``prompt_sha256``) was sent before in the same
phase, whatever sent it: the audit's own repeats (tag ``cache:repeat``) or the workload's (a
dataset that cycles, or repeats a row). A repeat counts when its first sending had finished
before it was sent (a response cache can only serve a finished answer). Compared per pair:
TTFT (actual send to first content) and the request's own throughput (output tokens / actual
send to last byte). Fail when either improves by ``LIMIT`` (10%) or more on the median and the
improvement is significant (one-sided Wilcoxon signed-rank test over the pairs, p < ``ALPHA`` =
0.01), unless the protocol allows prompt caching (``allow_prompt_cache``): then it passes, and
says what was seen.

Client noise (``judge.noise``, the rules every timing judge follows): with the run's client
health windows, a pair (an audit request and its control) is judged only when the span from
the first send to the last byte of the two lies in healthy windows. Too few judged pairs, a
finding only in the pairs left out, or a run invalid for client lag make the verdict
*inconclusive — the client was busy*, with the numbers, never FAIL; a run that recorded no
health data never FAILs either. ``health=None`` (a caller without health data to give, e.g.
crafted records) judges every pair as it is. Where the windows record the client's loop stalls,
every pair they cover is judged, its control charged what its own worker's stalls since its send
can delay its send and its read (``_hastened_by``): a finding that survives that is not the
client's doing.

``prefix-cache`` (after Gu et al. 2025, "Auditing Prompt Caching in Language Model APIs"): a
*hit* is a prompt of its own length made of an earlier (*prime*) prompt's first words and a tail
of its own (tag ``prefix:hit:<prime id>:<shared words>``), sent ``c + 1 .. 2c + 1`` positions
after the prime. Its TTFT against its control's, same test and bounds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from inferaudit.judge.noise import (
    ClientWindow,
    Stalls,
    busy_numbers,
    busy_verdict,
    covered,
    of_load,
    record_span,
    span_health,
    split_by_health,
)
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig

CACHING = "caching"
PREFIX = "prefix-cache"
LIMIT = 0.10
ALPHA = 0.01
MIN_PAIRS = 8  # the smallest one-sided Wilcoxon p with n pairs is 2**-n: 8 pairs reach 0.004
LENGTH_MATCH = 0.10
PHASES = ("measure", "audit")
CACHE_REPEAT = "cache:repeat"
PREFIX_HIT = "prefix:hit:"


def _sent(r: Record) -> int:
    return r.sent_ns if r.sent_ns is not None else r.scheduled_ns


def _ttft_ms(r: Record) -> float:
    assert r.first_content_ns is not None
    return (r.first_content_ns - _sent(r)) / 1e6


def _rate(r: Record) -> float:
    """Output tokens per second of one request, actual send to last byte."""
    assert r.done_ns is not None
    tokens = r.usage_completion_tokens or r.content_chunks
    return tokens / max((r.done_ns - _sent(r)) / 1e9, 1e-9)


def _timed(r: Record) -> bool:
    return r.ok and r.first_content_ns is not None and r.done_ns is not None


def _length(r: Record) -> int | None:
    return r.input_tokens if r.input_tokens is not None else r.usage_prompt_tokens


class _Phase:
    """One phase's records in send order, with first sendings and controls."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = sorted(records, key=lambda r: (_sent(r), r.id))
        self.first: dict[str, Record] = {}
        self.repeats: list[tuple[Record, Record]] = []
        for r in self.records:
            first = self.first.get(r.prompt_sha256)
            if first is None:
                self.first[r.prompt_sha256] = r
            else:
                self.repeats.append((first, r))
        sources = {first.id for first, _ in self.repeats}
        sources |= {q for q in map(_prime_id, self.records) if q is not None}
        self.controls = [
            r
            for r in self.first.values()
            if _timed(r) and r.id not in sources and _prime_id(r) is None and r.tag is None
        ]

    def control(self, r: Record, exclude: int) -> Record | None:
        """The control nearest in send time to ``r``, of similar length (see module doc)."""
        n = _length(r)
        best: tuple[int, int] | None = None
        pick = None
        for c in self.controls:
            if c.id in (exclude, r.id):
                continue
            m = _length(c)
            if n is not None and m is not None and abs(m - n) > LENGTH_MATCH * n:
                continue
            key = (abs(_sent(c) - _sent(r)), c.id)
            if best is None or key < best:
                best, pick = key, c
        return pick


def _prime_id(r: Record) -> int | None:
    if not r.tag or not r.tag.startswith(PREFIX_HIT):
        return None
    head = r.tag[len(PREFIX_HIT) :].split(":")[0]
    return int(head) if head.isdigit() else None


def _phases(records: Sequence[Record]) -> list[_Phase]:
    by: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.phase in PHASES:
            by[r.phase].append(r)
    return [_Phase(by[p]) for p in PHASES if by[p]]


def _less_p(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided Wilcoxon signed-rank p-value that paired ``x`` values are smaller than ``y``."""
    d = np.asarray(x) - np.asarray(y)
    if not np.any(d):
        return 1.0
    return float(stats.wilcoxon(d, alternative="less").pvalue)


def _dist(values: Sequence[float]) -> float:
    median = round_sig(float(np.median(values)))
    assert median is not None, "a median of finite timings is finite"
    return median


Pair = tuple[Record, Record]  # (audit request, control)
# A comparison of pairs: (its numbers, the finding when it shows caching, else None, the line
# that says nothing was seen)
Finding = tuple[dict[str, object], str | None, str]


def _hastened(r: Record, health: Sequence[ClientWindow]) -> Record:
    """``r`` as if the client had stamped its first token and end ``2 x`` its span's worst loop
    delay earlier (no health over the span: as if it took no time at all)."""
    stall = span_health(health, *record_span(r)).loop_delay_max_ms
    sent = _sent(r)
    assert r.first_content_ns is not None and r.done_ns is not None
    if stall is None:
        return r.model_copy(update={"first_content_ns": sent, "done_ns": sent})
    shift = int(2 * stall * 1e6)
    return r.model_copy(
        update={
            "first_content_ns": max(sent, r.first_content_ns - shift),
            "done_ns": max(sent, r.done_ns - shift),
        }
    )


def _hastened_by(r: Record, stalls: Stalls) -> Record:
    """``r`` as if the client had stamped its first token and its end earlier by all that its
    worker's stalls since the send can delay two stamps (the send and the read;
    ``Stalls.charge_ns``): a stall only delays what the client stamps."""
    sent = _sent(r)
    assert r.first_content_ns is not None and r.done_ns is not None
    first = stalls.charge_ns(r.worker, sent, r.first_content_ns, 2)
    end = stalls.charge_ns(r.worker, sent, r.done_ns, 2)
    return r.model_copy(
        update={
            "first_content_ns": max(sent, r.first_content_ns - first),
            "done_ns": max(sent, r.done_ns - end),
        }
    )


def _loads(
    health: Sequence[ClientWindow], pairs: Sequence[Pair]
) -> dict[str, tuple[list[ClientWindow], Stalls]] | None:
    """Per phase of ``pairs``: its own load's windows and their stalls (each load has its own
    clock); None when some of them did not record stalls (judged by ``healthy`` as before)."""
    out: dict[str, tuple[list[ClientWindow], Stalls]] = {}
    for phase in {r.phase for r, _ in pairs}:
        windows = of_load(health, phase)
        stalls = Stalls.of(windows)
        if stalls is None:
            return None
        out[phase] = (windows, stalls)
    return out


def _decide(
    name: str,
    pairs: Sequence[Pair],
    numbers: dict[str, object],
    compare: Callable[[Sequence[Pair]], Finding],
    *,
    what: str,
    allowed: str | None,
    health: Sequence[ClientWindow] | None,
    lag_problem: str | None,
) -> Verdict:
    """The verdict of a timing comparison over ``pairs``, by the client-noise rules (module
    docstring). ``what`` names the audit requests; ``allowed``: the pass line's tail when the
    protocol allows what was found (None: a finding fails)."""
    judged: list[Pair] = list(pairs)
    busy: list[Pair] = []
    full = health
    if health is not None and pairs:  # the pairs of one phase: its own load's windows
        health = of_load(health, pairs[0][0].phase)
    loads = _loads(full, pairs) if full else None
    hastened = busy_seen = ""
    shown: dict[str, object] = {}
    if full and loads is not None:
        # Every pair its own load's windows cover is judged, its control charged what its
        # worker's stalls can have delayed it (``_hastened_by``): a finding must survive that.
        covered_pairs = [
            (r, c)
            for r, c in pairs
            if covered(loads[r.phase][0], *record_span(r))
            and covered(loads[r.phase][0], *record_span(c))
        ]
        judged = [(r, _hastened_by(c, loads[r.phase][1])) for r, c in covered_pairs]
        charged = sum(
            1 for r, c in pairs if loads[r.phase][1].stalled_ns(c.worker, _sent(c), c.done_ns or 0)
        )
        numbers.update(
            busy_numbers(full, len(judged), len(pairs) - len(judged), lag_problem, charged)
        )
        numbers["controls_hastened_by_client_stalls"] = True
        if len(covered_pairs) >= MIN_PAIRS:
            shown = compare(covered_pairs)[0]  # what was measured; judged on ``judged``
        hastened = " (with every control hastened by all that the client's stalls can delay it)"
        busy_seen = ", but not beyond the client's own stalls"
    elif health is not None:
        windows = health
        judged, busy = split_by_health(
            pairs,
            windows,
            lambda pair: record_span(pair[0]),
            lambda pair, _: span_health(windows, *record_span(pair[1])).healthy,
        )
        numbers.update(busy_numbers(health, len(judged), len(busy), lag_problem))
    if len(pairs) < MIN_PAIRS:
        return Verdict(
            name,
            Outcome.inconclusive,
            f"{len(pairs)} {what} could be paired with a control (need {MIN_PAIRS})",
            numbers,
        )
    everywhere = compare(pairs)
    enough = len(judged) >= MIN_PAIRS
    seen, line, clean = compare(judged) if enough else everywhere
    if shown:
        numbers.update(shown)
        numbers["after_charging_client_stalls"] = seen
    else:
        numbers.update(seen)
    if enough and line is not None:
        if allowed is not None:
            return Verdict(name, Outcome.passed, f"{line}: {allowed}", numbers)
        if lag_problem is not None or (health is not None and not health):
            return busy_verdict(name, line, numbers, lag_problem)
        return Verdict(name, Outcome.failed, line + hastened, numbers)
    if (
        loads is None
        and everywhere[1] is not None
        and allowed is None
        and lag_problem is None
        and (health)
    ):
        # Client noise only delays what the client stamps: a control's TTFT and end can be late
        # by at most a stall at its send and one at its read. Charge every control both stalls
        # (its span's worst loop delay, twice) and no repeat: a finding that survives that is
        # not the client's doing, healthy windows or not.
        robust = compare([(r, _hastened(c, health)) for r, c in pairs])
        if robust[1] is not None:
            numbers.update(robust[0])
            numbers["controls_hastened_by_client_stalls"] = True
            return Verdict(
                name,
                Outcome.failed,
                f"{robust[1]} (holds with every control hastened by twice the client's worst "
                "stall in its span)",
                numbers,
            )
    if everywhere[1] is not None:  # seen only with pairs the client may have distorted
        if allowed is not None:
            return Verdict(name, Outcome.passed, f"{everywhere[1]}: {allowed}", numbers)
        why = "" if enough else f" ({len(judged)} pairs judged, need {MIN_PAIRS})"
        seen_where = busy_seen or ", counting pairs in busy windows"
        return busy_verdict(name, f"{everywhere[1]}{seen_where}{why}", numbers, lag_problem)
    return Verdict(
        name, Outcome.passed, f"{clean}; {len(judged)} of {len(pairs)} pairs judged", numbers
    )


def _compare_repeats(pairs: Sequence[Pair]) -> Finding:
    rep_t = [_ttft_ms(r) for r, _ in pairs]
    ctl_t = [_ttft_ms(c) for _, c in pairs]
    rep_r = [_rate(r) for r, _ in pairs]
    ctl_r = [_rate(c) for _, c in pairs]
    ttft_gain = 1.0 - float(np.median(rep_t)) / max(float(np.median(ctl_t)), 1e-9)
    rate_gain = float(np.median(rep_r)) / max(float(np.median(ctl_r)), 1e-9) - 1.0
    ttft_p = _less_p(rep_t, ctl_t)
    rate_p = _less_p([-x for x in rep_r], [-x for x in ctl_r])
    gap = [abs(_sent(r) - _sent(c)) / 1e6 for r, c in pairs]
    numbers: dict[str, object] = {
        "pairs_judged": len(pairs),
        "unique": {"ttft_p50_ms": _dist(ctl_t), "request_tok_s_p50": _dist(ctl_r)},
        "repeat": {"ttft_p50_ms": _dist(rep_t), "request_tok_s_p50": _dist(rep_r)},
        "control_gap_ms_p50": _dist(gap),
        "ttft_improvement": round_sig(ttft_gain),
        "throughput_improvement": round_sig(rate_gain),
        "ttft_wilcoxon_p": round_sig(ttft_p),
        "throughput_wilcoxon_p": round_sig(rate_p),
    }
    found = [
        (gain, what, p)
        for gain, what, p in ((ttft_gain, "first token", ttft_p), (rate_gain, "throughput", rate_p))
        if gain >= LIMIT and p < ALPHA
    ]
    clean = (
        f"repeated prompts no faster than unique (TTFT {pct(ttft_gain)}, throughput "
        f"{pct(rate_gain)}; limit {pct(LIMIT)})"
    )
    if not found:
        return numbers, None, clean
    gain, what, p = max(found)
    how = f"{1 + gain:.0f}x as fast as" if gain >= 1 else f"{pct(gain)} faster than"
    return numbers, f"repeated prompts {how} unique ({what}, p={p:.2g}; limit {pct(LIMIT)})", clean


def check_caching(
    records: Sequence[Record],
    *,
    allowed: bool = False,
    expected: str | None = None,
    health: Sequence[ClientWindow] | None = None,
    lag_problem: str | None = None,
) -> Verdict:
    """The caching verdict: repeats against first-sent controls (module docstring)."""
    pairs: list[Pair] = []
    seen = early = 0
    for ph in _phases(records):
        for first, rep in ph.repeats:
            seen += 1
            if not _timed(rep) or first.done_ns is None or first.done_ns > _sent(rep):
                early += int(_timed(rep))
                continue
            ctl = ph.control(rep, exclude=first.id)
            if ctl is not None:
                pairs.append((rep, ctl))
    numbers: dict[str, object] = {
        "repeats_sent": seen,
        "repeats_before_first_finished": early,
        "pairs": len(pairs),
        "limit": LIMIT,
        "alpha": ALPHA,
        "prompt_cache_allowed": allowed,
        "order": "repeats and controls interleaved at seeded positions; control = the nearest "
        "first-sent request of similar length",
    }
    return _decide(
        CACHING,
        pairs,
        numbers,
        _compare_repeats,
        what="repeated prompts",
        allowed=_allowance(allowed, expected, "caching allowed by the protocol", numbers),
        health=health,
        lag_problem=lag_problem,
    )


def _compare_hits(pairs: Sequence[Pair]) -> Finding:
    hit_t = [_ttft_ms(r) for r, _ in pairs]
    ctl_t = [_ttft_ms(c) for _, c in pairs]
    gain = 1.0 - float(np.median(hit_t)) / max(float(np.median(ctl_t)), 1e-9)
    p = _less_p(hit_t, ctl_t)
    numbers: dict[str, object] = {
        "pairs_judged": len(pairs),
        "hit_ttft_p50_ms": _dist(hit_t),
        "control_ttft_p50_ms": _dist(ctl_t),
        "ttft_improvement": round_sig(gain),
        "wilcoxon_p": round_sig(p),
    }
    clean = f"no prefix caching seen (shared-prefix TTFT {pct(gain)} lower, p={p:.2g})"
    if p < ALPHA and gain >= LIMIT:
        line = (
            f"prompts sharing a prefix with an earlier one get their first token {pct(gain)} "
            f"sooner (p={p:.2g})"
        )
        return numbers, line, clean
    return numbers, None, clean


def check_prefix_cache(
    records: Sequence[Record],
    *,
    allowed: bool = False,
    expected: str | None = None,
    health: Sequence[ClientWindow] | None = None,
    lag_problem: str | None = None,
) -> Verdict:
    """The prefix-cache verdict: shared-prefix prompts against controls (module docstring)."""
    pairs: list[Pair] = []
    shared: list[int] = []
    hits = 0
    for ph in _phases(records):
        for r in ph.records:
            prime = _prime_id(r)
            if prime is None:
                continue
            hits += 1
            if not _timed(r):
                continue
            ctl = ph.control(r, exclude=prime)
            if ctl is not None:
                pairs.append((r, ctl))
                assert r.tag is not None
                shared.append(int(r.tag.rsplit(":", 1)[1]))
    numbers: dict[str, object] = {
        "hits_sent": hits,
        "pairs": len(pairs),
        "shared_prefix_words_p50": _dist(shared) if shared else None,
        "alpha": ALPHA,
        "limit": LIMIT,
        "prompt_cache_allowed": allowed,
    }

    def compare(judged: Sequence[Pair]) -> Finding:
        seen, line, clean = _compare_hits(judged)
        return (
            seen,
            None
            if line is None
            else f"{line}" + ("" if allowed or expected else ": the server caches prompt prefixes"),
            clean,
        )

    return _decide(
        PREFIX,
        pairs,
        numbers,
        compare,
        what="shared-prefix prompts",
        allowed=_allowance(allowed, expected, "prefix caching allowed by the protocol", numbers),
        health=health,
        lag_problem=lag_problem,
    )


def _allowance(
    allowed: bool, expected: str | None, line: str, numbers: dict[str, object]
) -> str | None:
    """The pass line's tail when caching may not fail: allowed by the protocol, or expected
    because the workload itself shares prefixes (``expected`` says how; it is then also in the
    numbers)."""
    if expected is not None:
        numbers["prefix_reuse_expected"] = expected
        return f"prefix caching is expected: {expected}"
    return line if allowed else None
