"""What each figure of a summary means, as the summary states it (its ``definitions``).

``definitions(spec)`` is the text a summary carries for its protocol: v0.1's (``DEFINITIONS``)
for a v1 protocol with a fixed client-lag bound, the error budget's lag rule for a budget-ruled
one, and the proven-token credit for a v2 protocol. The texts are part of the evidence (``verify``
recomputes the summary, definitions included), so a v1 text never changes.
"""

from __future__ import annotations

from inferaudit.measure.protocol import RunSpec

__all__ = [
    "BUDGET_DEFINITION",
    "BUDGET_LAG_DEFINITION",
    "CREDIT_BASIS",
    "DEFINITIONS",
    "PROVEN_DEFINITIONS",
    "SLOT_WAIT_DEFINITION",
    "TURNS_DEFINITION",
    "USAGE_BASIS",
    "definitions",
]

DEFINITIONS: dict[str, str] = {
    "requests": "Measured requests (phase 'measure'); warm-up and check phases are excluded.",
    "completed": "Measured requests that ended without an error class.",
    "failed": "Measured requests that ended with an error class (see errors).",
    "duration_s": (
        "Measurement window: first measured request's scheduled send to the last measured "
        "request's done time (last byte or error)."
    ),
    "output_tokens": (
        "Output tokens of completed requests, per request the server's usage.completion_tokens "
        "when reported, else its count of content chunks; throughput uses this count."
    ),
    "output_tokens_by_source": (
        "The same tokens counted from usage and from content chunks, with per-request "
        "disagreements; client re-tokenization is not part of the summary (checks do it)."
    ),
    "request_throughput_rps": "Completed requests divided by the measurement window.",
    "output_throughput_tok_s": "Output tokens of completed requests divided by the window.",
    "output_throughput_ci": (
        "Window split into equal sub-windows, output tokens of requests completed (done time) "
        "in each divided by its length; Student-t 95% interval of the mean of these rates."
    ),
    "arrival_rate": (
        "Requested rate from the protocol; scheduled and achieved rates are (n - 1) over the "
        "span of scheduled and of actual send times."
    ),
    "ttft_ms": (
        "TTFT: scheduled send -> first chunk carrying generated content (role-only or empty "
        "chunks are not tokens), completed requests."
    ),
    "ttft_from_sent_ms": "TTFT from the actual send: first content chunk minus actual send time.",
    "tpot_ms": (
        "TPOT per request: (done - first content) / (output tokens - 1), i.e. (E2E - TTFT) / "
        "(tokens - 1); requests with one output token are excluded."
    ),
    "itl_ms": (
        "ITL: gaps between consecutive content chunks, pooled over completed requests; a chunk "
        "holding k tokens gives k samples of gap/k; tokens of the first chunk give none."
    ),
    "tokens_per_chunk": (
        "When usage exceeds the content-chunk count, usage tokens are spread over chunks in "
        "proportion to chunk characters (largest remainder, at least 1 each); else 1 per chunk."
    ),
    "e2e_ms": "E2E: scheduled send -> done time (last byte), completed requests.",
    "percentiles": (
        "Percentiles by numpy linear interpolation (as vLLM); mean is the exact sum over n."
    ),
    "goodput_rps": (
        "Completed requests meeting every SLO bound (own value <= bound; an undefined value, "
        "e.g. TPOT of a 1-token reply, meets it) per second of window; null without bounds."
    ),
    "goodput_tok_s": "Output tokens of the requests counted in goodput per second of window.",
    "slo": (
        "MLPerf early stopping (99% confidence): a pXX bound holds iff P[X <= k] <= 0.01 for "
        "X ~ Binomial(n, 1 - XX/100), n measured requests, k violations, failed ones included."
    ),
    "slo_estimate_ms": (
        "MLPerf early-stopping percentile estimate: the t-th highest per-request value, t the "
        "most violations n requests could absorb; null when n is too small or it is a failure."
    ),
    "slo_additional_requests_needed": (
        "For a bound not (yet) proven: more requests needed if every further one met the bound "
        "(MLPerf's recommendation); meaningless when the violation rate exceeds 1 - XX/100."
    ),
    "client_lag_ms": (
        "Client lag: actual send - scheduled send per measured request; the run is invalid "
        "when its p99 exceeds the protocol's max_client_lag_p99_ms."
    ),
    "errors": "Measured requests per error class.",
    "empty_chunks_before_content": (
        "Events before the first content chunk (role-only, empty deltas), summed over measured "
        "requests; they never count as the first token."
    ),
    "rounding": "Computed floats are rounded to 6 significant digits; counts are exact integers.",
}
# Budget-ruled protocols (no fixed max_client_lag_p99_ms) state the error budget instead.
BUDGET_LAG_DEFINITION = (
    "Client lag: actual send - scheduled send per measured request; the run is invalid when the "
    "lag moved a reported TTFT figure by more than the error budget allows (see error_budget)."
)
BUDGET_DEFINITION = (
    "The lag the client adds may move a reported figure by at most max(share x figure, "
    "floor_ms): for TTFT p50 and p99, the figure from the scheduled send minus the same figure "
    "from the actual send (what the send lag moved it by) must be within that allowance."
)
# v2 protocols credit the tokens the stream proves (see ``proven_tokens``).
SLOT_WAIT_DEFINITION = (
    "Open loop with max_concurrency: how long each measured request waited for a free slot "
    "(slot - scheduled). Latencies still run from the scheduled send; the client's lag runs "
    "from when the request was due (max of scheduled and slot), and the error budget compares "
    "TTFT from that instant with TTFT from the actual send."
)
TURNS_DEFINITION = (
    "Multi-turn sessions: per turn index (0 first), the measured requests, completions, "
    "credited output tokens, TTFT, TPOT and E2E, defined as the overall figures over that "
    "turn's requests. A turn is scheduled think_time_s after the previous turn's last byte."
)

PROVEN_DEFINITIONS: dict[str, str] = {
    "output_tokens": (
        "Credited output tokens of completed requests: per request the tokens the stream "
        "proves, its content events (each carries at least one token) capped by "
        "usage.completion_tokens when the server reports fewer; throughput, its interval and "
        "goodput tokens use this count. TPOT and ITL divide by usage when reported."
    ),
    "token_credit": (
        "Usage-based count beside the credited one: per request usage.completion_tokens when "
        "reported, else its content events, with its throughput over the same window; "
        "uncredited_tokens is what usage claims beyond the proven count."
    ),
}
CREDIT_BASIS = "proven: content events, capped by usage when reported (per request)"
USAGE_BASIS = "usage when reported, else content chunks (per request)"


def definitions(spec: RunSpec) -> dict[str, str]:
    """The summary's definitions: v1's for a fixed lag bound, the error budget's otherwise;
    the proven-token credit's for a v2 protocol (v1: usage credited)."""
    budget = spec.max_client_lag_p99_ms is None
    proven = spec.credits_proven
    out: dict[str, str] = {}
    for key, text in DEFINITIONS.items():
        if budget and key == "client_lag_ms":
            out[key] = BUDGET_LAG_DEFINITION
            out["error_budget"] = BUDGET_DEFINITION
        elif proven and key == "output_tokens":
            out[key] = PROVEN_DEFINITIONS[key]
        else:
            out[key] = text
        if proven and key == "output_tokens_by_source":
            out["token_credit"] = PROVEN_DEFINITIONS["token_credit"]
    if spec.load.max_concurrency is not None:
        out["slot_wait_ms"] = SLOT_WAIT_DEFINITION
    if spec.workload.sessions is not None:
        out["turns"] = TURNS_DEFINITION
    return out
