"""Model identity: replayed fingerprint prompts, mixed into the measured load (or, for a run
too short or of unknown length, into the supplementary ``audit`` block), against the reference
outputs of the claimed model (see :mod:`inferaudit.measure.fingerprint` for the agreement rate
and how its threshold is calibrated). Fails below the fingerprint's threshold."""

from __future__ import annotations

from collections.abc import Sequence

from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.fingerprint import TAG, Fingerprint, agreement, token_ends
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig

NAME = "identity"
PHASES = ("measure", "audit")


def check_identity(records: Sequence[Record], fp: Fingerprint) -> Verdict:
    replays = [r for r in records if r.phase in PHASES and r.tag and r.tag.startswith(TAG)]
    done = [r for r in replays if r.ok and r.output_text is not None]
    numbers: dict[str, object] = {
        "replayed": len(replays),
        "completed": len(done),
        "threshold": fp.threshold,
        "reference_self_agreement": fp.self_agreement,
        "calibration": fp.calibration,
    }
    if not done:
        return Verdict(NAME, Outcome.inconclusive, "no fingerprint prompt completed", numbers)
    got = room = exact = ties = 0
    per: list[float] = []
    for r in done:
        e = fp.entry(r.tag[len(TAG) :]) if r.tag else None
        if e is None:
            continue
        m, n, tie = agreement(
            e.text,
            e.token_ends,
            r.output_text or "",
            r.max_tokens,
            top=e.top_logprobs,
            candidate_ends=token_ends(r.chunk_chars),
        )
        got += m
        room += n
        exact += int(m == n and not tie)
        ties += int(tie)
        per.append(m / n if n else 1.0)
    if not room:
        return Verdict(
            NAME, Outcome.inconclusive, "replayed prompts had no tokens to compare", numbers
        )
    rate = got / room
    numbers.update(
        {
            "agreement": round_sig(rate),
            "tokens_compared": room,
            "tokens_agreeing": got,
            "prompts_fully_agreeing": exact,
            "near_tie_divergences": ties,
            "per_prompt_min": round_sig(min(per)),
        }
    )
    if rate < fp.threshold:
        return Verdict(
            NAME,
            Outcome.failed,
            f"greedy outputs agree with the {fp.model} reference on {pct(rate)} of tokens "
            f"(threshold {pct(fp.threshold)}): not the claimed model",
            numbers,
        )
    return Verdict(
        NAME,
        Outcome.passed,
        f"greedy outputs agree with the {fp.model} reference on {pct(rate)} of tokens "
        f"({exact} of {len(per)} prompts exactly"
        + (f", {ties} parted on a near-tie" if ties else "")
        + f"; threshold {pct(fp.threshold)})",
        numbers,
    )
