"""Model-identity fingerprints: the data model, its file format and the agreement rate.

Recording (which sends traffic) is in :mod:`inferaudit.measure.fingerprint_record`; this module
sends nothing, so the judges may import it.

``record_fingerprint`` sends ``prompts`` hidden prompts, drawn exactly as a run with the same
workload flags would draw them (same length distribution, salt form or dataset rows, API shape)
under a fresh secret seed, greedily (temperature 0) to a trusted reference deployment,
``repeats`` times: once one at a time, then with all prompts in flight together (a different
batch composition), and so on alternating. Greedy decoding is not
bit-exact across batch shapes on real engines, so the reference's *self-agreement* across these
repeats is measured, and the pass threshold is calibrated from it:

    threshold = CALIBRATION_FACTOR (0.9) x self-agreement

i.e. a replay must agree at least 90% as well as the reference agrees with itself. For the
simulated twin, self-agreement is 1.0 (deterministic) and a substituted model scores near 0
(tests show both); for real models we have not measured the agreement between different models
here, so the factor is a stated choice, not a measured boundary.

Agreement of a candidate text with a reference text: the reference's tokens are its stream
events (one token per event on the servers we know; ``token_ends`` keeps their end offsets);
a reference token counts as reproduced when it lies wholly inside the common character prefix
of the two texts. The agreement rate is the share of reference tokens reproduced, over the
reference tokens the replayed request asked for (its ``max_tokens``, at most the reference's).
Greedy outputs diverge for good after one different token, so this is the exact-token agreement
up to the first divergence.

Near-ties: the stored (first) round asks the reference for its top ``TOP_LOGPROBS``
alternatives per token, where the server offers logprobs (when that round fails with them, it
is asked again without). When a replay diverges on a token the reference scored within
``NEAR_TIE_NATS`` (0.25) of its best, and the reference's own choice was as close, the same
model broke a near-tie the other way: float rounding differs with batch shape and KV-cache
state, and one flipped token early in a short answer would otherwise read as a different model.
That token counts as reproduced and the rest of that answer is not compared. A different model
rarely diverges on the reference's near-ties: it picks tokens the reference ranked far lower.
Replays never ask for logprobs, so they still look like any other request.

Likelihood: where the reference gave logprobs, replays are also scored by the reference's
log-likelihood of the served tokens (:mod:`inferaudit.measure.likelihood`), against a bound
calibrated from the reference's own repeats (``likelihood``: :class:`LikelihoodCalibration`).

File format (JSON): ``inferaudit.fingerprint/v3``: model, api, seed (null: none sent), created,
self_agreement, threshold, calibration (text), ``workload`` (the input/output length flags, the
dataset digest and whether lengths were enforced: what a run must match, :func:`check_fits`),
``likelihood`` (null: no logprobs; else tokens, partings, deficit, max_deficit, rate, nats) and
``entries`` (id, prompt, max_tokens, text, token_ends, output_sha256, top_logprobs: per
token ``{text: logprob}`` or null, input_tokens: words of a synthetic prompt or null).
``inferaudit.fingerprint/v2`` files (no ``likelihood``) still load and are judged by agreement
alone, exactly as before. ``inferaudit.fingerprint/v1`` files (64-word prompts, ``temperature 0``
and a fixed seed) still load: their workload is read as fixed-length prompts of their entries'
word count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import Length, RunSpec, Workload
from inferaudit.measure.records import Record

VERSION = "inferaudit.fingerprint/v3"
VERSION_V2 = "inferaudit.fingerprint/v2"
VERSION_V1 = "inferaudit.fingerprint/v1"
CALIBRATION_FACTOR = 0.9
TOP_LOGPROBS = 5  # alternatives per token asked of the reference (OpenAI's limit for completions)
NEAR_TIE_NATS = 0.25  # tokens this close to the reference's best are a near-tie
TAG = "fingerprint:"


@dataclass(frozen=True)
class Entry:
    id: str
    prompt: str
    max_tokens: int
    text: str
    token_ends: tuple[int, ...]
    output_sha256: str
    # the reference's alternatives per token {text: logprob}; None where the server gave none
    top_logprobs: tuple[dict[str, float], ...] | None = None
    input_tokens: int | None = None  # words of a synthetic prompt; None for a dataset row


@dataclass(frozen=True)
class RecordedWorkload:
    """The workload flags a fingerprint was recorded with: a run must use the same."""

    input_tokens: str  # Length text: "256", "64-512", "64-512:normal"
    output_tokens: str
    dataset_sha256: str | None = None
    enforce_output_length: bool = True

    @classmethod
    def of(cls, workload: Workload) -> RecordedWorkload:
        return cls(
            str(workload.input_tokens),
            str(workload.output_tokens),
            workload.dataset_sha256,
            workload.enforce_output_length,
        )


@dataclass(frozen=True)
class LikelihoodCalibration:
    """The reference's own variation in the likelihood statistic, from its repeat rounds scored
    against the stored round (see :mod:`inferaudit.measure.likelihood`)."""

    tokens: int  # reference tokens scored over the repeats (common prefixes and partings)
    partings: int  # repeats that parted from the stored path within the tokens asked for
    deficit: float  # their summed deficit (nats)
    max_deficit: float  # the largest single one (nats)
    rate: float  # 95% upper bound of the reference's partings per scored token
    nats: float  # the most one same-model parting may cost: max(NEAR_TIE_NATS, max_deficit)


@dataclass(frozen=True)
class Fingerprint:
    model: str
    api: str
    seed: int | None  # the sampling seed its requests carried (v1: 1234; v2: None, none sent)
    created: str
    self_agreement: float
    threshold: float
    calibration: str
    entries: tuple[Entry, ...]
    workload: RecordedWorkload | None = None  # None: a v1 file (see :meth:`recorded_workload`)
    version: str = VERSION
    # None: a v1/v2 file, or a reference without logprobs (agreement alone is judged)
    likelihood: LikelihoodCalibration | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["entries"] = [asdict(e) for e in self.entries]
        if self.version != VERSION:  # an older file saved again keeps its own keys
            data.pop("likelihood")
        return data

    def recorded_workload(self) -> RecordedWorkload:
        """The workload it was recorded with; a v1 file's: fixed prompts of its word count."""
        if self.workload is not None:
            return self.workload
        words = sorted({len(e.prompt.split()) for e in self.entries})
        out = max(e.max_tokens for e in self.entries)
        length = str(words[0]) if len(words) == 1 else f"{words[0]}-{words[-1]}"
        return RecordedWorkload(length, str(out))

    def save(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2) + b"\n")

    def entry(self, ident: str) -> Entry | None:
        return next((e for e in self.entries if e.id == ident), None)


def load_fingerprint(path: Path) -> Fingerprint:
    try:
        data = orjson.loads(path.read_bytes())
        version = data.get("version")
        if version not in (VERSION, VERSION_V2, VERSION_V1):
            raise ConfigError(f"--fingerprint {path}: not an {VERSION} (or v2, v1) file")
        wl = data.get("workload") if version != VERSION_V1 else None
        lk = data["likelihood"] if version == VERSION else None
        entries = tuple(
            Entry(
                id=str(e["id"]),
                prompt=str(e["prompt"]),
                max_tokens=int(e["max_tokens"]),
                text=str(e["text"]),
                token_ends=tuple(int(x) for x in e["token_ends"]),
                output_sha256=str(e["output_sha256"]),
                top_logprobs=_top(e.get("top_logprobs")),
                input_tokens=None if e.get("input_tokens") is None else int(e["input_tokens"]),
            )
            for e in data["entries"]
        )
        fp = Fingerprint(
            model=str(data["model"]),
            api=str(data["api"]),
            seed=None if data.get("seed") is None else int(data["seed"]),
            created=str(data["created"]),
            self_agreement=float(data["self_agreement"]),
            threshold=float(data["threshold"]),
            calibration=str(data["calibration"]),
            entries=entries,
            workload=None
            if wl is None
            else RecordedWorkload(
                input_tokens=str(wl["input_tokens"]),
                output_tokens=str(wl["output_tokens"]),
                dataset_sha256=None if wl["dataset_sha256"] is None else str(wl["dataset_sha256"]),
                enforce_output_length=bool(wl["enforce_output_length"]),
            ),
            version=str(version),
            likelihood=None
            if lk is None
            else LikelihoodCalibration(
                tokens=int(lk["tokens"]),
                partings=int(lk["partings"]),
                deficit=float(lk["deficit"]),
                max_deficit=float(lk["max_deficit"]),
                rate=float(lk["rate"]),
                nats=float(lk["nats"]),
            ),
        )
    except FileNotFoundError:
        raise ConfigError(f"--fingerprint {path}: no such file") from None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"--fingerprint {path}: malformed fingerprint ({exc})") from None
    if not entries:
        raise ConfigError(f"--fingerprint {path}: holds no prompts")
    return fp


def _top(value: Any) -> tuple[dict[str, float], ...] | None:
    if value is None:
        return None
    return tuple({str(k): float(v) for k, v in d.items()} for d in value)


def aligned_top(r: Record) -> tuple[dict[str, float], ...] | None:
    """The record's top logprobs when there is one entry per stream event (else unusable)."""
    if r.top_logprobs is None or len(r.top_logprobs) != len(r.chunk_chars):
        return None
    return tuple(r.top_logprobs)


def token_ends(chunk_chars: Sequence[int]) -> tuple[int, ...]:
    """End offsets of each stream event's text within the whole output."""
    return tuple(int(x) for x in np.cumsum(np.asarray(chunk_chars, dtype=np.int64)))


class Agreement(NamedTuple):
    matched: int  # reference tokens reproduced
    compared: int  # reference tokens compared
    tie: bool  # the candidate diverged on a near-tie of the reference (see ``agreement``)


def agreement(
    ref_text: str,
    ends: Sequence[int],
    candidate: str,
    limit: int | None = None,
    *,
    top: Sequence[Mapping[str, float]] | None = None,
    candidate_ends: Sequence[int] = (),
) -> Agreement:
    """How far ``candidate`` reproduces the reference's tokens.

    ``limit``: tokens the candidate request asked for (its ``max_tokens``); only the first
    ``limit`` reference tokens are compared. A candidate that stops early loses the rest.

    ``top`` (the reference's per-token alternatives, aligned with ``ends``) and
    ``candidate_ends`` (the candidate's token ends) let a divergence be judged: when both the
    reference's token and the candidate's are ones the reference scored within
    ``NEAR_TIE_NATS`` of its best, the two broke a near-tie differently (float rounding
    differs between batch shapes and cache states). That token counts as reproduced and the
    tokens after it are not compared: greedy continuations of different tokens differ by
    construction.
    """
    common = 0
    for a, b in zip(ref_text, candidate, strict=False):
        if a != b:
            break
        common += 1
    room = len(ends) if limit is None else min(len(ends), limit)
    matched = sum(1 for e in ends[:room] if e <= common)
    if matched < room and top is not None and len(top) == len(ends):
        start = ends[matched - 1] if matched else 0
        following = [e for e in candidate_ends if e > start]
        if following and (start == 0 or start in candidate_ends):
            alternatives = top[matched]
            mine = ref_text[start : ends[matched]]
            theirs = candidate[start : following[0]]
            best = max(alternatives.values(), default=0.0)
            near = [alternatives.get(t) for t in (mine, theirs)]
            if theirs != mine and all(x is not None and best - x <= NEAR_TIE_NATS for x in near):
                return Agreement(matched + 1, matched + 1, True)
    return Agreement(matched, room, False)


def check_fits(fp: Fingerprint, spec: RunSpec) -> None:
    """Refuse (one line) a fingerprint whose replays would stand out in ``spec``'s run.

    Replays are sent with the run's body shape, so the fingerprint must have been recorded over
    the same API, with the same workload flags (prompt length distribution, or the same
    dataset), and the run must sample greedily (its outputs are compared token by token).
    """
    if fp.api != spec.endpoint.api.value:
        raise ConfigError(
            f"--fingerprint was recorded over the {fp.api} API; "
            f"this run uses {spec.endpoint.api.value}"
        )
    sampling = spec.sampling
    if sampling is not None and sampling.temperature != 0:
        raise ConfigError(
            f"--checks identity needs greedy sampling (--temperature 0); this run samples at "
            f"{sampling.temperature:g}"
        )
    rec = fp.recorded_workload()
    wl = spec.workload
    if wl.dataset_sha256 is not None or rec.dataset_sha256 is not None:
        if rec.dataset_sha256 != wl.dataset_sha256:
            raise ConfigError(
                "--fingerprint was not recorded from this run's --dataset: record it with the "
                "same --dataset file, so that replays are rows of it"
            )
        return
    if Length.parse(rec.input_tokens) != wl.input_tokens:
        raise ConfigError(
            f"--fingerprint holds prompts of --input-tokens {rec.input_tokens}; this run sends "
            f"{wl.input_tokens}: record it with the run's workload flags"
        )
