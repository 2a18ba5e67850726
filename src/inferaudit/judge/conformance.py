"""Conformance: does the endpoint do what the protocol relies on? (judged on the records)

Probes (phase ``"probe"``, before the load; planned in :mod:`inferaudit.measure.probes.plan`,
shaped exactly like load requests: the workload's own lengths and sampling keys):
  1. the model is listed by ``GET /v1/models`` (``model_listed``: the sender's finding);
  2. ``max_tokens`` + ``ignore_eos``/``min_tokens``: every length probe, and every measured
     request, must return exactly the tokens it asked for, with ``finish_reason == "length"``.
     More tokens means ``max_tokens`` is ignored; fewer with ``"stop"`` means ``ignore_eos`` /
     ``min_tokens`` are ignored (the model reached EOS). A model that happens not to reach EOS
     cannot show that, so a pass reads "not contradicted" for these two;
  3. ``seed`` (only when the protocol samples with ``temperature > 0`` and a seed per request;
     greedy runs do not depend on seeds): one prompt sent twice with the same seed must give the
     same text, and once with another seed a different text;
  4. ``stream_options.include_usage``: every probe's stream carries ``usage``;
  5. the stream reassembles: content lengths add up to the final text;
  6. concurrent requests: in no phase were streams cut off when another request arrived (a
     server that serves one request at a time and aborts the one in flight, as
     llama-cpp-python does by default: :mod:`inferaudit.measure.probes.interrupts`); the item
     says what the server did and what to do.
A parameter silently ignored is a finding, never a crash; a probe that errors makes its item
inconclusive with the error class. Items the measurement relies on (1, 2, 5) fail the check when
ignored: lengths or the model would not be what the protocol says. ``seed`` and
``include_usage`` are capabilities, not cheats: when ignored the check still passes, with a note
saying what is weaker (replays are not reproducible; token accounting falls back to bounds).
"""

from __future__ import annotations

from collections.abc import Sequence

from inferaudit.judge.counting import bounds
from inferaudit.judge.verdict import Outcome, Verdict
from inferaudit.measure.probes.interrupts import cut_by_arrivals
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record
from inferaudit.measure.tokenizer import Tokenizer

NAME = "conformance"
PHASE = "probe"
LENGTH_TAG = "probe:length"
MEASURE = "measure"
# Ignored: a note on a pass, with what it weakens. Every other item fails the check.
ADVISORY = {
    "seed": "replayed prompts are not reproducible",
    "include_usage": "token accounting falls back to bounds",
}


def check_conformance(
    records: Sequence[Record],
    spec: RunSpec,
    *,
    tokenizer: Tokenizer | None = None,
    model_listed: str = "not re-checked (needs the endpoint)",
) -> Verdict:
    """The conformance verdict from the ``probe`` records (and the model-listing outcome)."""
    measured = [r for r in records if r.phase == MEASURE and r.max_tokens is not None]
    concurrent = _concurrency_item(records)
    records = sorted((r for r in records if r.phase == PHASE), key=lambda r: r.id)
    if not records:
        return Verdict(NAME, Outcome.inconclusive, "no probe requests recorded", {})
    items: dict[str, str] = {"model_listed": model_listed}
    length_recs = [r for r in records if r.tag == LENGTH_TAG] + measured
    seed_recs = {r.tag: r for r in records if r.tag and r.tag.startswith("probe:seed-")}
    items.update(_length_items(length_recs, tokenizer, spec.workload.enforce_output_length))
    sampling = spec.sampling
    if sampling is not None and not (sampling.temperature > 0 and sampling.seed_per_request):
        items["seed"] = "not probed (the protocol's sampling does not depend on a seed)"
    else:
        items["seed"] = _seed_item(seed_recs)
    items["include_usage"] = _usage_item(records)
    items["stream_reassembles"] = _reassembly_item(records)
    items["concurrent_requests"] = concurrent
    ignored = sorted(k for k, v in items.items() if v.startswith("ignored"))
    unknown = sorted(k for k, v in items.items() if v.startswith("inconclusive"))
    notes = [f"{k} {items[k]} ({ADVISORY[k]})" for k in ignored if k in ADVISORY]
    numbers = {
        "probes": len(records),
        "measured_length_checked": len(measured),
        "items": items,
        "notes": notes,
    }
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
    recs: Sequence[Record], tokenizer: Tokenizer | None, enforced: bool
) -> dict[str, str]:
    ok = [r for r in recs if r.ok and r.max_tokens is not None]
    if not ok:
        errors = ",".join(sorted({str(r.error_class) for r in recs})) or "none sent"
        msg = f"inconclusive: length probes failed ({errors})"
        return {"max_tokens": msg, "ignore_eos": msg}
    counted = [bounds(r, tokenizer) for r in ok]
    over = [
        (lo, r.max_tokens or 0) for (lo, _, _), r in zip(counted, ok, strict=True)
        if lo > (r.max_tokens or 0)
    ]  # fmt: skip
    out = {
        "max_tokens": (
            f"ignored: asked {max(over)[1]}, got {max(over)[0]} tokens" if over else "honoured"
        )
    }
    short = [
        (hi, r.finish_reason, r.max_tokens or 0)
        for (_, hi, _), r in zip(counted, ok, strict=True)
        if hi < (r.max_tokens or 0)
    ]
    length = max((asked for _, _, asked in short), default=0)
    if not enforced:
        out["ignore_eos"] = "not sent (protocol does not enforce lengths)"
    elif short:
        got = sorted(n for n, _, _ in short)
        reasons = ", ".join(sorted({str(fr) for _, fr, _ in short}))
        out["ignore_eos"] = (
            f"ignored: asked {length} with ignore_eos+min_tokens, got {got[0]}-{got[-1]} "
            f"tokens on {len(short)} of {len(ok)} probes and measured requests (finish {reasons})"
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
        return "ignored: different seeds gave the same text at the protocol's temperature"
    return "honoured"


def _usage_item(recs: Sequence[Record]) -> str:
    ok = [r for r in recs if r.ok]
    if not ok:
        return "inconclusive: no probe completed"
    missing = sum(1 for r in ok if r.usage_completion_tokens is None)
    return f"ignored: no usage on {missing} of {len(ok)} streams" if missing else "honoured"


def _concurrency_item(recs: Sequence[Record]) -> str:
    phases = sorted({r.phase for r in recs})
    for phase in phases:
        cut = cut_by_arrivals([r for r in recs if r.phase == phase])
        if cut is not None:
            return f"ignored: in phase {phase}, {cut.line()}"
    return "honoured"


def _reassembly_item(recs: Sequence[Record]) -> str:
    ok = [r for r in recs if r.ok]
    bad = sum(1 for r in ok if sum(r.chunk_chars) != r.output_chars)
    return f"ignored: {bad} streams do not reassemble" if bad else "honoured"
