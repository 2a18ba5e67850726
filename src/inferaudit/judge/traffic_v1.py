"""The v1 rules of the traffic checks (conformance, caching, prefix-cache), frozen.

A v1 run (``inferaudit.run``/v1 evidence, no ``verdicts.json``) sent separate phases after its
load (``cache-unique`` then ``cache-repeat``; ``prefix-prime``/``prefix-hit``/``prefix-miss`` one
at a time; 128-token conformance probes) and was judged by these functions; ``verify`` must
recompute its verdicts exactly as they were signed, so they stay here unchanged (only renamed).
New runs are judged by :mod:`inferaudit.judge.caching` and :mod:`inferaudit.judge.conformance`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from inferaudit.judge.counting import bounds
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig
from inferaudit.measure.tokenizer import Tokenizer

CACHING = "caching"
PREFIX = "prefix-cache"
LIMIT = 0.10
ALPHA = 0.01
TAIL = 8
UNIQUE, REPEAT = "cache-unique", "cache-repeat"
PRIME, HIT, MISS = "prefix-prime", "prefix-hit", "prefix-miss"
CACHE_TAG = "cache:c"
NAME = "conformance"
PHASE = "probe"
ADVISORY = {
    "seed": "replayed prompts are not reproducible",
    "include_usage": "token accounting falls back to bounds",
}


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


def check_caching_v1(records: Sequence[Record]) -> Verdict:
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


def check_prefix_cache_v1(records: Sequence[Record]) -> Verdict:
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


def check_conformance_v1(
    records: Sequence[Record],
    spec: RunSpec,
    *,
    tokenizer: Tokenizer | None = None,
    model_listed: str = "not re-checked (needs the endpoint)",
) -> Verdict:
    """The conformance verdict from the ``probe`` records (and the model-listing outcome)."""
    records = sorted((r for r in records if r.phase == PHASE), key=lambda r: r.id)
    if not records:
        return Verdict(NAME, Outcome.inconclusive, "no probe requests recorded", {})
    items: dict[str, str] = {"model_listed": model_listed}
    length_recs = [r for r in records if r.tag == "probe:length"]
    seed_recs = {r.tag: r for r in records if r.tag and r.tag.startswith("probe:seed-")}
    length = max((r.max_tokens or 0 for r in length_recs), default=0)
    items.update(_length_items(length_recs, length, tokenizer, spec.workload.enforce_output_length))
    items["seed"] = _seed_item(seed_recs)
    items["include_usage"] = _usage_item(records)
    items["stream_reassembles"] = _reassembly_item(records)
    ignored = sorted(k for k, v in items.items() if v.startswith("ignored"))
    unknown = sorted(k for k, v in items.items() if v.startswith("inconclusive"))
    notes = [f"{k} {items[k]} ({ADVISORY[k]})" for k in ignored if k in ADVISORY]
    numbers = {"probes": len(records), "items": items, "notes": notes}
    if failed := [k for k in ignored if k not in ADVISORY]:
        detail = "; ".join(f"{k} {items[k]}" for k in failed)
        return Verdict(NAME, Outcome.failed, f"parameters silently ignored: {detail}", numbers)
    if relied_unknown := [k for k in unknown if k not in ADVISORY]:
        detail = "; ".join(f"{k} {items[k]}" for k in relied_unknown)
        return Verdict(NAME, Outcome.inconclusive, f"probes could not decide: {detail}", numbers)
    honoured = [k for k, v in items.items() if v.startswith("honoured")]
    summary = f"{', '.join(honoured)} honoured"
    if notes:
        summary += "; notes: " + "; ".join(notes)
    return Verdict(NAME, Outcome.passed, summary, numbers)


def _length_items(
    recs: Sequence[Record], length: int, tokenizer: Tokenizer | None, enforced: bool
) -> dict[str, str]:
    ok = [r for r in recs if r.ok]
    if not ok:
        errors = ",".join(sorted({str(r.error_class) for r in recs})) or "none sent"
        msg = f"inconclusive: length probes failed ({errors})"
        return {"max_tokens": msg, "ignore_eos": msg}
    counted = [bounds(r, tokenizer) for r in ok]
    over = [lo for lo, _, _ in counted if lo > length]
    out = {
        "max_tokens": (
            f"ignored: asked {length}, got up to {max(over)} tokens" if over else "honoured"
        )
    }
    short = [
        (hi, r.finish_reason) for (_, hi, _), r in zip(counted, ok, strict=True) if hi < length
    ]
    if not enforced:
        out["ignore_eos"] = "not sent (protocol does not enforce lengths)"
    elif short:
        got = sorted(n for n, _ in short)
        reasons = ", ".join(sorted({str(fr) for _, fr in short}))
        out["ignore_eos"] = (
            f"ignored: asked {length} with ignore_eos+min_tokens, got {got[0]}-{got[-1]} "
            f"tokens on {len(short)} of {len(ok)} probes (finish {reasons})"
        )
    else:
        not_length = [r.finish_reason for r in ok if r.finish_reason != "length"]
        out["ignore_eos"] = (
            f"ignored: finish_reason {not_length[0]!r} at the full length"
            if not_length
            else "honoured (not contradicted)"
        )
    return out


def _seed_item(recs: dict[str, Record]) -> str:
    a, b, c = (recs.get(f"probe:seed-{t}") for t in "abc")
    if a is None or b is None or c is None or not (a.ok and b.ok and c.ok):
        return "inconclusive: a seed probe failed"
    if a.output_sha256 != b.output_sha256:
        return "ignored or not reproducible: the same seed gave different text"
    if a.output_sha256 == c.output_sha256:
        return "ignored: different seeds gave the same text at temperature 1"
    return "honoured"


def _usage_item(recs: Sequence[Record]) -> str:
    ok = [r for r in recs if r.ok]
    if not ok:
        return "inconclusive: no probe completed"
    missing = sum(1 for r in ok if r.usage_completion_tokens is None)
    return f"ignored: no usage on {missing} of {len(ok)} streams" if missing else "honoured"


def _reassembly_item(recs: Sequence[Record]) -> str:
    ok = [r for r in recs if r.ok]
    bad = sum(1 for r in ok if sum(r.chunk_chars) != r.output_chars)
    return f"ignored: {bad} streams do not reassemble" if bad else "honoured"
