"""The ``server-counters`` check: the server's own counters against what this client received.

The server's ``/metrics`` (``server-metrics.jsonl``, ``measure.server_metrics``) is scraped
right before the load and right after it (``audit.sidecars``); what it says is *reported*,
never a measurement: it is compared with the client's records here and nothing in the summary
uses it. The rule, over the measurement window:

1. The window: from the last ok ``before`` sample ``b`` to the first ok ``after`` sample ``a``.
   The server read its values somewhere in a sample's ``[t_ns, t_ns + span_ns]``.
2. The requests on the window's clock: the load's records (every phase but the separately sent
   ``probe`` and ``audit`` phases, which have clocks of their own and are sent outside the
   scraped window). Each is
   - *inside*: sent at or after ``b.t_ns + b.span_ns`` and done at or before ``a.t_ns``
     (the server saw all of it between the two readings);
   - *outside*: done at or before ``b.t_ns``, or sent at or after ``a.t_ns + a.span_ns``;
   - *uncertain*: any other request that was sent: in flight during a reading, or inside but
     failed or cut off (the server may have counted it, or some of its tokens, or not).
3. The client's count: ``R`` = inside requests that succeeded; ``T`` = their tokens, each
   request's ``usage.completion_tokens`` where reported, else the tokens its stream proves
   (``measure.metrics.proven_tokens``: content events).
4. The server's count: the deltas ``a - b`` of ``requests_finished`` and ``generated_tokens``.
5. The bands (what an honest server that this client had alone can show):
   - requests in ``[R, R + U + W]``, ``U`` the uncertain requests, ``W`` those sent twice
     because the server closed after the first attempt was written whole (``Record.retried``
     starts with ``WRITTEN_WHOLE``: the server may have done that work too): exact otherwise;
   - tokens in ``[T - 2% T, T + max(2% T, M)]``, ``M`` the sum of the uncertain and the
     resent requests' ``max_tokens`` (unbounded when one of them set none); the 2% covers how
     servers count a stream's last token and scrape timing.
6. Verdict. Above a band: FAIL "the server counted N more generated tokens (or finished
   requests) than this client received: the run did not have the endpoint alone". Below a
   band: FAIL "the server counted N fewer ...: something other than this server answered part
   of the requests (a cache or a proxy in front of it)". Both counters inside their bands (or
   one, where the server exports only one): pass. No ok sample before or after the load, no
   request inside the window, neither counter exported, or a counter that went down (the
   server restarted): inconclusive, with the reason: never a FAIL.

Worked example: 10 requests of 32 tokens each wholly inside, none uncertain: ``T`` = 320, the
token band is [313.6, 326.4] and the request band [10, 10]; a server delta of 416 tokens and 13
requests fails "the server counted 96 more generated tokens (and 3 more finished requests) than
this client received: the run did not have the endpoint alone".

The prefix cache's counters (hits and queries: prompt tokens) go into ``numbers`` as reported,
beside the caching verdicts, which they never change. A run that scraped no ``/metrics`` (no
``server-metrics.jsonl``) gets no verdict of this check (``judge.suite``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inferaudit.judge.verdict import Outcome, Verdict
from inferaudit.measure.metrics import proven_tokens
from inferaudit.measure.probes.plan import AUDIT, PROBE
from inferaudit.measure.records import WRITTEN_WHOLE, Record
from inferaudit.measure.server_metrics import Quantities, ServerSample
from inferaudit.measure.stats import round_sig

NAME = "server-counters"
TOKEN_TOLERANCE = 0.02  # of the client's tokens, either side
SEPARATE_PHASES = (PROBE, AUDIT)  # sent on clocks of their own, outside the scraped window
MORE = "the run did not have the endpoint alone"
FEWER = (
    "something other than this server answered part of the requests "
    "(a cache or a proxy in front of it)"
)
REPORTED = "the server's own counters: recorded and compared, never a measurement"


@dataclass(frozen=True)
class Window:
    """The two readings the deltas are taken between (step 1)."""

    before: ServerSample
    after: ServerSample

    def split(self, records: Sequence[Record]) -> Split:
        """Step 2: the load's sent records as inside / uncertain (outside ones dropped)."""
        b_end = self.before.t_ns + self.before.span_ns
        a_start, a_end = self.after.t_ns, self.after.t_ns + self.after.span_ns
        inside: list[Record] = []
        uncertain: list[Record] = []
        for r in records:
            if r.phase in SEPARATE_PHASES or r.sent_ns is None:
                continue
            done = r.done_ns
            if (done is not None and done <= self.before.t_ns) or r.sent_ns >= a_end:
                continue
            if r.sent_ns >= b_end and done is not None and done <= a_start and r.ok:
                inside.append(r)
            else:
                uncertain.append(r)
        return Split(tuple(inside), tuple(uncertain))


@dataclass(frozen=True)
class Split:
    inside: tuple[Record, ...]  # succeeded, wholly between the two readings
    uncertain: tuple[Record, ...]  # during a reading, or failed / cut off inside

    def client_tokens(self) -> tuple[int, int, int]:
        """Step 3: (tokens, requests counted from usage, from the stream's proof)."""
        from_usage = [r.usage_completion_tokens for r in self.inside]
        usage = sum(u for u in from_usage if u is not None)
        proven = sum(proven_tokens(r) for r in self.inside if r.usage_completion_tokens is None)
        with_usage = sum(u is not None for u in from_usage)
        return usage + proven, with_usage, len(self.inside) - with_usage

    @property
    def resent(self) -> tuple[Record, ...]:
        """Requests sent twice because the server closed after the first was written whole: it
        may have done that attempt's work too (``Record.retried``, ``load.pool`` defence 3)."""
        return tuple(
            r for r in (*self.inside, *self.uncertain)
            if r.retried is not None and r.retried.startswith(WRITTEN_WHOLE)
        )  # fmt: skip

    def max_tokens(self) -> int | None:
        """``M`` of step 5: the uncertain requests' and the resent first attempts' asked
        lengths; None when one of them set no ``max_tokens``."""
        asked = [r.max_tokens for r in (*self.uncertain, *self.resent)]
        return None if any(m is None for m in asked) else sum(m for m in asked if m is not None)


@dataclass(frozen=True)
class Band:
    """One counter's comparison (step 5): the client's count, the band, the server's delta."""

    what: str  # "generated tokens" | "finished requests"
    client: int
    low: float
    high: float  # math.inf: unbounded
    server: float

    def excess(self) -> float:
        """0 inside the band; outside it, the server's count minus the client's (> 0 above
        the band, < 0 below it: ``low <= client <= high``)."""
        return 0.0 if self.low <= self.server <= self.high else self.server - self.client

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "server": _num(self.server),
            "band": [_num(self.low), None if math.isinf(self.high) else _num(self.high)],
        }


def check_server_counters(records: Sequence[Record], samples: Sequence[ServerSample]) -> Verdict:
    """The verdict of the module docstring's rule from the run's records and its server
    samples (``server-metrics.jsonl``, in the order taken)."""
    # (1): the window
    before = [s for s in samples if s.phase == "before" and s.ok]
    after = [s for s in samples if s.phase == "after" and s.ok]
    if not before or not after:
        which = "before" if not before else "after"
        why = _failure(samples, which)
        return _inconclusive(f"no usable server sample {which} the load ({why})", {})
    window = Window(before[-1], after[0])
    b, a = window.before.quantities, window.after.quantities
    # (2), (3): the client's side
    split = window.split(records)
    tokens, with_usage, from_stream = split.client_tokens()
    requests = len(split.inside)
    numbers: dict[str, Any] = {
        "window_ms": [_ms(window.before.t_ns), _ms(window.after.t_ns)],
        "client": {
            "requests": requests,
            "generated_tokens": tokens,
            "tokens_from_usage": with_usage,
            "tokens_from_stream": from_stream,
        },
        "uncertain": {
            "requests": len(split.uncertain),
            "resent": len(split.resent),
            "max_tokens": split.max_tokens(),
        },
        "token_tolerance": TOKEN_TOLERANCE,
        "reported": _reported(b, a),
        "note": REPORTED,
    }
    if not requests:
        return _inconclusive("no request of this client lies wholly inside the window", numbers)
    # (4), (5): the server's side and the bands
    bands: list[Band] = []
    tolerance = TOKEN_TOLERANCE * tokens
    m = split.max_tokens()
    token_high = math.inf if m is None else tokens + max(tolerance, m)
    for what, client, lo, hi, b_value, a_value in (
        ("generated tokens", tokens, tokens - tolerance, token_high,
         b.generated_tokens, a.generated_tokens),
        ("finished requests", requests, requests,
         requests + len(split.uncertain) + len(split.resent),
         b.requests_finished, a.requests_finished),
    ):  # fmt: skip
        if b_value is None or a_value is None:
            continue
        if a_value < b_value:
            numbers["went_down"] = what
            return _inconclusive(
                f"the server's {what} counter went down over the window "
                f"({_num(b_value)} -> {_num(a_value)}: restarted?)",
                numbers,
            )
        bands.append(Band(what, client, lo, hi, a_value - b_value))
    if not bands:
        return _inconclusive(
            "the server exports neither a generated-token nor a finished-request counter",
            numbers,
        )
    numbers["counters"] = {band.what.replace(" ", "_"): band.to_json() for band in bands}
    # (6): the verdict
    more = [band for band in bands if band.excess() > 0]
    fewer = [band for band in bands if band.excess() < 0]
    if more or fewer:
        clauses = [
            f"the server counted {_clause(side, word)} than this client received: {why}"
            for side, word, why in ((more, "more", MORE), (fewer, "fewer", FEWER))
            if side
        ]
        return Verdict(NAME, Outcome.failed, "; ".join(clauses), numbers)
    matched = ", ".join(f"{band.client} {band.what}" for band in bands)
    return Verdict(
        NAME,
        Outcome.passed,
        f"the server's counters match what this client received ({matched} in the window)",
        numbers,
    )


def _clause(bands: Sequence[Band], direction: str) -> str:
    """``N more generated tokens (and M more finished requests)``."""
    parts = [f"{_num(abs(band.server - band.client))} {direction} {band.what}" for band in bands]
    return parts[0] + (f" (and {parts[1]})" if len(parts) > 1 else "")


def _reported(b: Quantities, a: Quantities) -> dict[str, Any]:
    """The deltas of the other counters and the prefix cache's hit share, as reported."""
    out: dict[str, Any] = {}
    for key in ("prompt_tokens", "prefix_cache_hits", "prefix_cache_queries"):
        lo, hi = getattr(b, key), getattr(a, key)
        out[key] = None if lo is None or hi is None else _num(hi - lo)
    hits, queries = out["prefix_cache_hits"], out["prefix_cache_queries"]
    share = hits / queries if hits is not None and queries else None
    out["prefix_cache_hit_share"] = round_sig(share)
    return out


def _failure(samples: Sequence[ServerSample], phase: str) -> str:
    errors = [s.error for s in samples if s.phase == phase and not s.ok]
    if errors:
        return f"the scrape failed: {errors[-1]}"
    return "none was taken"


def _inconclusive(summary: str, numbers: dict[str, Any]) -> Verdict:
    return Verdict(NAME, Outcome.inconclusive, summary, numbers)


def _ms(t_ns: int) -> float | None:
    return round_sig(t_ns / 1e6)


def _num(value: float) -> int | float | None:
    """A counter value as JSON: an int when whole (counters count), else 6 significant
    digits."""
    return int(value) if float(value).is_integer() else round_sig(value)
