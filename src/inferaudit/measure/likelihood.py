"""The reference's log-likelihood of the served tokens: a Token-DiFR-like statistic for identity.

Exact-token agreement (:func:`inferaudit.measure.fingerprint.agreement`) counts how long a replay
follows the reference's greedy path. A lower-bit substitute of a larger model follows it almost
as long: its logits move by a fraction of a nat, so it parts from the path only where the
reference's own choice was close, and agreement forgives such near-ties. What tells it apart is
*how much* the reference disliked each token it served, summed over many replays.

What the reference knows is only its own path: at each position, its token and its top-k
alternatives with their logprobs (``Entry.top_logprobs``; the servers we read list the chosen
token too). So a replay is scored on the common prefix and the first divergence, no further:

* each reproduced reference token scores 0 (the served token is the reference's own);
* at the first reference token the replay does not reproduce (a *parting*), the served token
  scores its *deficit*: the reference's logprob of its own token there minus that of the served
  one, in nats, at least 0. The served token starts where the reference's did (the replay's
  stream has an event boundary there) and is some prefix of the rest of the replay; its logprob
  is bounded above by the best stored alternative that is such a prefix, and by the lowest
  stored alternative (a token outside the top-k scores at most the k-th logprob). Using the
  bound never overstates a deficit. A replay that stopped there served an end of text: the
  alternative ``""`` when stored, else the bound;
* the tokens after a parting are not scored: the contexts differ, the reference knows nothing.

When the deficit cannot be bounded (the replay's events do not start where the reference's
token did, or the reference did not list its own token), the parting scores 0. The statistic of
a run pools its replays: ``deficit`` (nats, summed), ``tokens`` scored and ``partings``; the
gap is ``deficit / tokens`` (nats per scored token).

Calibration (:func:`calibrate`, at ``fingerprint record``): the reference's repeat rounds are
scored against its stored round the same way. Their partings give a 95% upper bound ``rate`` of
the reference's own partings per scored token (exact Poisson bound; with none seen over N
tokens, 3.0/N); a same-model parting costs at most ``nats`` = max(NEAR_TIE_NATS, the largest
deficit seen). Rule (:func:`allowed_deficit`): a run whose replays scored N tokens may show at
most ``nats`` x q, where q is the number of partings a server parting at ``rate`` exceeds with
probability below ``ALPHA`` (1e-3) over N tokens (the Poisson quantile at ``rate`` x N); more
deficit than that is not the claimed model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as sps

from inferaudit.measure.fingerprint import NEAR_TIE_NATS, LikelihoodCalibration

ALPHA = 1e-3  # chance that an honest run's partings exceed the allowance (per run)
CONFIDENCE = 0.95  # of the upper bound on the reference's own parting rate


@dataclass(frozen=True)
class Scored:
    """One replay (or a pool of them) scored against the reference's path."""

    tokens: int  # reference tokens scored: the common prefix and the parting, if any
    partings: int  # 1 when the replay parted from the path within the tokens it asked for
    deficit: float  # nats, >= 0: the served token's deficit at the parting (0 without one)
    bounded: int = 0  # partings whose served token was not listed (its logprob was bounded)

    def __add__(self, other: Scored) -> Scored:
        return Scored(
            self.tokens + other.tokens,
            self.partings + other.partings,
            self.deficit + other.deficit,
            self.bounded + other.bounded,
        )

    @property
    def gap(self) -> float:
        """Nats per scored token (0 when nothing was scored)."""
        return self.deficit / self.tokens if self.tokens else 0.0


NOTHING = Scored(0, 0, 0.0)


def score(
    ref_text: str,
    ends: Sequence[int],
    top: Sequence[Mapping[str, float]],
    candidate: str,
    candidate_ends: Sequence[int],
    limit: int | None = None,
) -> Scored:
    """Score ``candidate`` (its stream's token ends ``candidate_ends``) on the reference's path
    ``ref_text`` (token ends ``ends``, alternatives ``top``, aligned with ``ends``).

    ``limit``: the tokens the replay asked for (its ``max_tokens``); only the first ``limit``
    reference tokens are scored.
    """
    if len(top) != len(ends):
        raise ValueError("top logprobs must be aligned with the reference's tokens")
    room = len(ends) if limit is None else min(len(ends), limit)
    common = 0
    for a, b in zip(ref_text, candidate, strict=False):
        if a != b:
            break
        common += 1
    parted = next((k for k in range(room) if ends[k] > common), None)
    if parted is None:
        return Scored(room, 0, 0.0)
    start = ends[parted - 1] if parted else 0
    alternatives = top[parted]
    own = alternatives.get(ref_text[start : ends[parted]])
    others = [
        (text, lp) for text, lp in alternatives.items() if text != ref_text[start : ends[parted]]
    ]
    aligned = start == 0 or start in set(candidate_ends)
    if own is None or not others or not aligned:
        return Scored(parted + 1, 1, 0.0)
    rest = candidate[start:]
    listed = [lp for text, lp in others if (rest.startswith(text) if text else not rest)]
    bound = max([min(lp for _, lp in others), *listed])
    return Scored(parted + 1, 1, max(0.0, own - bound), 0 if listed else 1)


def upper_rate(partings: int, tokens: int) -> float:
    """The ``CONFIDENCE`` upper bound of a Poisson rate per token, ``partings`` seen in
    ``tokens`` (exact: the chi-square quantile; 2.996/tokens when none was seen)."""
    if tokens <= 0:
        raise ValueError("no tokens scored")
    return float(sps.chi2.ppf(CONFIDENCE, 2 * partings + 2)) / (2 * tokens)


def calibrate(repeats: Iterable[Scored]) -> LikelihoodCalibration | None:
    """The reference's own variation: its repeat rounds scored against its stored round
    (None when nothing was scored)."""
    pooled = NOTHING
    largest = 0.0
    for s in repeats:
        pooled = pooled + s
        largest = max(largest, s.deficit)
    if not pooled.tokens:
        return None
    return LikelihoodCalibration(
        tokens=pooled.tokens,
        partings=pooled.partings,
        deficit=round(pooled.deficit, 6),
        max_deficit=round(largest, 6),
        rate=float(f"{upper_rate(pooled.partings, pooled.tokens):.6g}"),
        nats=round(max(NEAR_TIE_NATS, largest), 6),
    )


def allowed_partings(cal: LikelihoodCalibration, tokens: int) -> int:
    """Partings a same-model server exceeds with probability below ``ALPHA`` over ``tokens``."""
    if tokens <= 0:
        return 0
    return int(sps.poisson.ppf(1.0 - ALPHA, cal.rate * tokens))


def allowed_deficit(cal: LikelihoodCalibration, tokens: int) -> float:
    """The most summed deficit (nats) a run scoring ``tokens`` may show as the claimed model."""
    return cal.nats * allowed_partings(cal, tokens)
