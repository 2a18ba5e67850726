"""Caching audit (MLPerf TEST04's idea, over HTTP) and the prefix-reuse probe.

``caching`` — two extra phases after the main run, same lengths as the workload:
  1. ``cache-unique``: ``n`` fresh salted prompts, never sent before (so a cache warmed by the
     main run cannot make this reference phase look fast);
  2. ``cache-repeat``: one other fresh prompt sent ``n`` times, identical bodies.
Both run through the load runner, closed loop at the same concurrency ``c``. An honest server
does the same work for both; a server that caches responses (or whole prefixes) serves the
repeats faster. The first ``c`` requests of each phase are left out (they open connections and,
in the repeat phase, fill any cache). Compared: median TTFT and median per-request throughput
(output tokens / time from send to last byte) — medians and times from the actual send, so a
stall of a shared client machine does not decide the verdict; phase throughput (tokens / phase
window) is reported too. Fail when either improves by ``LIMIT`` (10%) or more on repeats and
the improvement is significant (one-sided Mann-Whitney U, p < ``ALPHA`` = 0.01), so that noise
of a few milliseconds on short phases is not a finding.

``prefix-cache`` (after Gu et al. 2025, "Auditing Prompt Caching in Language Model APIs"):
``2 x pairs`` rounds, one request at a time: a priming prompt P (fresh), then at once either a
*hit* prompt sharing P's first words (all but the last ``TAIL`` words) or a *miss* prompt of the
same length sharing nothing (``pairs`` of each, in a seeded random order). Every probe follows
its own prime directly, so even a server that keeps only the last prompt's cache shows it.
One-sided two-sample Kolmogorov-Smirnov test (scipy) that hit
TTFTs are smaller; fail when p < ``ALPHA`` (0.01) and the median hit TTFT is at least ``LIMIT``
below the median miss TTFT. The measured run is not sped up by prefix caching (its prompts
start with unique salts); the finding matters for any workload that shares prompt prefixes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.probes import OnRecord, fresh_plan, send_phase
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig
from inferaudit.measure.workload import Planner, RequestPlan

CACHING = "caching"
PREFIX = "prefix-cache"
LIMIT = 0.10
ALPHA = 0.01
TAIL = 8
BLOCK_UNIQUE, BLOCK_REPEAT, BLOCK_PREFIX = 2, 3, 4
UNIQUE, REPEAT = "cache-unique", "cache-repeat"
PRIME, HIT, MISS = "prefix-prime", "prefix-hit", "prefix-miss"
CACHE_TAG = "cache:c"


def _ttft_ms(r: Record) -> float:
    assert r.first_content_ns is not None
    return (r.first_content_ns - (r.sent_ns or r.scheduled_ns)) / 1e6


def _rate(r: Record) -> float:
    """Output tokens per second of one request, actual send to last byte."""
    assert r.done_ns is not None
    tokens = r.usage_completion_tokens or r.content_chunks
    return tokens / max((r.done_ns - (r.sent_ns or r.scheduled_ns)) / 1e9, 1e-9)


def _usable(recs: Sequence[Record], skip: int) -> list[Record]:
    """The phase's completed requests after the first ``skip`` sent."""
    ordered = sorted(recs, key=lambda r: (r.sent_ns or r.scheduled_ns, r.id))[skip:]
    return [r for r in ordered if r.ok and r.first_content_ns is not None and r.done_ns is not None]


def _phase_stats(ok: Sequence[Record]) -> dict[str, float | int | None]:
    if not ok:
        return {"completed": 0}
    window = (max(r.done_ns or 0 for r in ok) - min(r.scheduled_ns for r in ok)) / 1e9
    tokens = sum(r.usage_completion_tokens or r.content_chunks for r in ok)
    return {
        "completed": len(ok),
        "ttft_p50_ms": round_sig(float(np.median([_ttft_ms(r) for r in ok]))),
        "request_tok_s_p50": round_sig(float(np.median([_rate(r) for r in ok]))),
        "phase_tok_s": round_sig(tokens / window) if window > 0 else None,
    }


def _faster_p(repeat: Sequence[float], unique: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value that ``repeat`` values are smaller than ``unique``."""
    return float(stats.mannwhitneyu(repeat, unique, alternative="less").pvalue)


def run_caching(
    spec: RunSpec,
    *,
    api_key: str | None,
    records_path: Path | None,
    requests: int = 16,
    concurrency: int | None = None,
    on_record: OnRecord | None = None,
) -> Verdict:
    """Send the two phases (unique, then repeat) and judge them with :func:`check_caching`."""
    planner = Planner.from_spec(spec)
    conc = concurrency or min(spec.load.concurrency or 4, max(1, requests // 4))
    tag = f"{CACHE_TAG}{conc}"  # the concurrency travels with the records, for re-checking
    unique = [fresh_plan(planner, BLOCK_UNIQUE, k, phase=UNIQUE, tag=tag) for k in range(requests)]
    base = fresh_plan(planner, BLOCK_REPEAT, 0, phase=REPEAT, tag=tag)
    repeat = [
        dataclasses.replace(base, id=base.id + k) for k in range(requests)
    ]  # same prompt, same length, same body; distinct record ids
    sent: list[Record] = []
    for plans in (unique, repeat):
        sent += send_phase(
            spec,
            plans,
            api_key=api_key,
            concurrency=conc,
            records_path=records_path,
            on_record=on_record,
            runner=True,
        )
    return check_caching(sent)


def check_caching(records: Sequence[Record]) -> Verdict:
    """The caching verdict from the records of the ``cache-unique``/``cache-repeat`` phases."""
    phases = [r for r in records if r.phase in (UNIQUE, REPEAT)]
    if not phases:
        return Verdict(CACHING, Outcome.inconclusive, "no cache-audit requests recorded", {})
    tag = str(phases[0].tag)
    if not tag.startswith(CACHE_TAG) or not tag[len(CACHE_TAG) :].isdigit():
        return Verdict(CACHING, Outcome.inconclusive, f"cache-audit tag {tag!r} unreadable", {})
    conc = int(tag[len(CACHE_TAG) :])
    ur = _usable([r for r in phases if r.phase == UNIQUE], conc)
    rr = _usable([r for r in phases if r.phase == REPEAT], conc)
    u, r = _phase_stats(ur), _phase_stats(rr)
    numbers: dict[str, object] = {
        "requests_per_phase": sum(1 for x in phases if x.phase == UNIQUE),
        "concurrency": conc,
        "unique": u,
        "repeat": r,
        "limit": LIMIT,
        "order": "unique (fresh prompts) then repeat, after the main run",
        "excluded_first_per_phase": conc,
    }
    if not u.get("completed") or not r.get("completed"):
        return Verdict(
            CACHING, Outcome.inconclusive, "a cache-audit phase had no completions", numbers
        )
    ttft_gain = 1.0 - _num(r, "ttft_p50_ms") / _num(u, "ttft_p50_ms")
    rate_gain = _num(r, "request_tok_s_p50") / _num(u, "request_tok_s_p50") - 1.0
    ttft_p = _faster_p([_ttft_ms(x) for x in rr], [_ttft_ms(x) for x in ur])
    rate_p = _faster_p([-_rate(x) for x in rr], [-_rate(x) for x in ur])
    numbers["ttft_improvement"] = round_sig(ttft_gain)
    numbers["throughput_improvement"] = round_sig(rate_gain)
    numbers["ttft_mwu_p"] = round_sig(ttft_p)
    numbers["throughput_mwu_p"] = round_sig(rate_p)
    numbers["alpha"] = ALPHA
    found = [
        (gain, what, p)
        for gain, what, p in ((ttft_gain, "first token", ttft_p), (rate_gain, "throughput", rate_p))
        if gain >= LIMIT and p < ALPHA
    ]
    if found:
        gain, what, p = max(found)
        how = f"{1 + gain:.0f}x as fast as" if gain >= 1 else f"{pct(gain)} faster than"
        return Verdict(
            CACHING,
            Outcome.failed,
            f"repeated prompts {how} unique ({what}, p={p:.2g}; limit {pct(LIMIT)})",
            numbers,
        )
    return Verdict(
        CACHING,
        Outcome.passed,
        f"repeated prompts no faster than unique (TTFT {pct(ttft_gain)}, throughput "
        f"{pct(rate_gain)}; limit {pct(LIMIT)})",
        numbers,
    )


def run_prefix_probe(
    spec: RunSpec,
    *,
    api_key: str | None,
    records_path: Path | None,
    pairs: int = 12,
    prompt_words: int | None = None,
    max_tokens: int = 4,
    on_record: OnRecord | None = None,
) -> Verdict:
    planner = Planner.from_spec(spec)
    words = prompt_words or max(spec.workload.input_tokens.hi, 64)
    rng = np.random.default_rng((spec.seed, 0x9F1C))
    kinds = rng.permutation([HIT] * pairs + [MISS] * pairs).tolist()
    plans = []
    for j, kind in enumerate(kinds):
        prime = _sized(fresh_plan(planner, BLOCK_PREFIX, 2 * j, phase=PRIME), words)
        probe = _sized(fresh_plan(planner, BLOCK_PREFIX, 2 * j + 1, phase=kind), words)
        if kind == HIT:  # the prime's words, then a tail of its own
            head = prime.prompt.split()[: words - TAIL]
            probe = dataclasses.replace(probe, prompt=" ".join(head + probe.prompt.split()[-TAIL:]))
        for p in (prime, probe):
            plans.append(dataclasses.replace(p, max_tokens=max_tokens, tag=f"prefix:{j}"))
    recs = send_phase(
        spec, plans, api_key=api_key, concurrency=1, records_path=records_path, on_record=on_record
    )
    return check_prefix_cache(recs)


def check_prefix_cache(records: Sequence[Record]) -> Verdict:
    """The prefix-cache verdict from the records of the ``prefix-*`` phases."""
    recs = sorted((r for r in records if r.phase in (PRIME, HIT, MISS)), key=lambda r: r.id)
    if not recs:
        return Verdict(PREFIX, Outcome.inconclusive, "no prefix-probe requests recorded", {})
    hits = [_ttft_ms(r) for r in recs if r.phase == HIT and r.ok and r.first_content_ns]
    misses = [_ttft_ms(r) for r in recs if r.phase == MISS and r.ok and r.first_content_ns]
    words = [r.input_tokens for r in recs if r.phase == MISS and r.input_tokens]
    numbers: dict[str, object] = {
        "rounds": sum(1 for r in recs if r.phase == PRIME),
        "prompt_words": words[0] if words else None,
        "shared_prefix_words": words[0] - TAIL if words else None,
        "hits": len(hits),
        "misses": len(misses),
        "alpha": ALPHA,
        "limit": LIMIT,
    }
    if len(hits) < 3 or len(misses) < 3:
        return Verdict(
            PREFIX, Outcome.inconclusive, "too few prefix-probe requests completed", numbers
        )
    res = stats.ks_2samp(hits, misses, alternative="greater")
    hit_p50 = float(np.median(hits))
    miss_p50 = float(np.median(misses))
    gain = 1.0 - hit_p50 / miss_p50 if miss_p50 > 0 else 0.0
    numbers.update(
        {
            "hit_ttft_p50_ms": round_sig(hit_p50),
            "miss_ttft_p50_ms": round_sig(miss_p50),
            "ttft_improvement": round_sig(gain),
            "ks_statistic": round_sig(float(res.statistic)),
            "ks_p_value": round_sig(float(res.pvalue)),
        }
    )
    if res.pvalue < ALPHA and gain >= LIMIT:
        return Verdict(
            PREFIX,
            Outcome.failed,
            f"prompts sharing a prefix with an earlier one get their first token {pct(gain)} "
            f"sooner (KS p={float(res.pvalue):.2g}): the server caches prompt prefixes",
            numbers,
        )
    return Verdict(
        PREFIX,
        Outcome.passed,
        f"no prefix caching seen (shared-prefix TTFT {pct(gain)} lower, "
        f"KS p={float(res.pvalue):.2g})",
        numbers,
    )


def _num(stats_: dict[str, float | int | None], key: str) -> float:
    value = stats_[key]
    assert value is not None, f"{key} missing from completed phase stats"
    return float(value) if value else 1e-9


def _sized(plan: RequestPlan, words: int) -> RequestPlan:
    """``plan`` with its prompt cut or padded (by repeating its body) to ``words`` words."""
    toks = plan.prompt.split()
    while len(toks) < words:
        toks += toks[8:] or toks
    return dataclasses.replace(plan, prompt=" ".join(toks[:words]), input_tokens=words)
