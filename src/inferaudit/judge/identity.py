"""Model identity: replayed fingerprint prompts, mixed into the measured load (or, for a run
too short, or a closed loop for a duration that ended without one, into the supplementary
``audit`` block), against the reference
outputs of the claimed model (see :mod:`inferaudit.measure.fingerprint` for the agreement rate
and how its threshold is calibrated). Fails below the fingerprint's threshold.

Where the fingerprint holds a likelihood calibration (a v3 file from a reference that gave
logprobs), replays are also scored by the reference's log-likelihood of the served tokens
(:mod:`inferaudit.measure.likelihood`): the check also fails when their summed deficit exceeds
what the same model may show over the tokens scored. Either rule failing fails the check; both
numbers are in the verdict. Without a calibration (v1/v2 files) the verdict is exactly the
agreement rule's.

With a v3 fingerprint the agreement rule fails only when the replays are enough to tell: per
replay, agreement lies in [0, 1] around the reference's own mean (its self-agreement), so by
Hoeffding's inequality k honest replays average below ``self_agreement - sqrt(ln(1/ALPHA)/2k)``
with probability under ``ALPHA`` (1e-3). Below the threshold but above that bound (a few replays
of a reference that varies itself, as llama.cpp's server does when its KV cache held another
prompt), the verdict is inconclusive, with both numbers. v1/v2 fingerprints keep the plain
threshold, so evidence judged with them recomputes to the same verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence

from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.fingerprint import TAG, VERSION, Fingerprint, agreement, token_ends
from inferaudit.measure.likelihood import ALPHA, NOTHING, Scored, allowed_deficit, score
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
    lk: Scored = NOTHING
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
        top = e.top_logprobs
        if fp.likelihood is not None and top is not None and len(top) == len(e.token_ends):
            served = token_ends(r.chunk_chars)
            lk += score(e.text, e.token_ends, top, r.output_text or "", served, r.max_tokens)
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
    likely = None  # the likelihood rule's line, when the fingerprint has its calibration
    unlikely = False
    if fp.likelihood is not None and lk.tokens:
        allowed = allowed_deficit(fp.likelihood, lk.tokens)
        unlikely = lk.deficit > allowed
        numbers.update(
            {
                "likelihood_gap_nats_per_token": round_sig(lk.gap),
                "likelihood_deficit_nats": round_sig(lk.deficit),
                "likelihood_allowed_nats": round_sig(allowed),
                "likelihood_tokens_scored": lk.tokens,
                "likelihood_partings": lk.partings,
                "likelihood_bounded_partings": lk.bounded,
                "reference_parting_rate_bound": fp.likelihood.rate,
            }
        )
        likely = (
            f"the served tokens cost the reference {lk.deficit:.3g} nats of log-likelihood "
            f"over {lk.tokens} scored tokens ({lk.partings} parted; at most {allowed:.3g} "
            "for the same model)"
        )
    agreeing = f"greedy outputs agree with the {fp.model} reference on {pct(rate)} of tokens"
    below = rate < fp.threshold
    chance = None
    if below and fp.version == VERSION:
        # A v3 fingerprint: the agreement rule holds for many replays, not for a few. Per
        # replay, agreement lies in [0, 1] around the reference's own mean (its
        # self-agreement): by Hoeffding's inequality, k honest replays average below
        # ``self_agreement - sqrt(ln(1/ALPHA) / 2k)`` with probability under ALPHA.
        bound = fp.self_agreement - math.sqrt(math.log(1 / ALPHA) / (2 * len(per)))
        numbers["per_prompt_mean"] = round_sig(sum(per) / len(per))
        numbers["per_prompt_mean_bound"] = round_sig(bound)
        if sum(per) / len(per) >= bound:
            below = False
            chance = (
                f"{agreeing}, under the threshold {pct(fp.threshold)}, but over {len(per)} "
                f"replays the reference's own variation (self-agreement "
                f"{pct(fp.self_agreement)}) can give that: fail below a per-prompt mean of "
                f"{max(bound, 0.0):.3g} (p < {ALPHA:g}); replay more prompts"
            )
    if below or unlikely:
        why = [f"{agreeing} (threshold {pct(fp.threshold)})"] if below else []
        if unlikely and likely is not None:
            why.append(likely)
        return Verdict(NAME, Outcome.failed, "; ".join(why) + ": not the claimed model", numbers)
    if chance is not None:
        return Verdict(NAME, Outcome.inconclusive, chance, numbers)
    return Verdict(
        NAME,
        Outcome.passed,
        f"{agreeing} ({exact} of {len(per)} prompts exactly"
        + (f", {ties} parted on a near-tie" if ties else "")
        + f"; threshold {pct(fp.threshold)})"
        + (f"; {likely}" if likely is not None else ""),
        numbers,
    )
