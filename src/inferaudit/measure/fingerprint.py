"""Model-identity fingerprints: greedy outputs of a trusted reference on hidden prompts.

``record_fingerprint`` sends ``prompts`` hidden prompts (salted synthetic prompts from a fresh
random key, so they look like any other request of a run) at temperature 0 with a fixed seed to
a trusted reference deployment, ``repeats`` times: once one at a time, then with all prompts in
flight together (a different batch composition), and so on alternating. Greedy decoding is not
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

File format (JSON, ``inferaudit.fingerprint/v1``): model, api, seed, created, self_agreement,
threshold, calibration (text), and ``entries`` (id, prompt, max_tokens, text, token_ends,
output_sha256, top_logprobs: per token ``{text: logprob}`` or null).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

from inferaudit.errors import ConfigError, EndpointError
from inferaudit.measure.protocol import Api, Endpoint, Load, RunSpec, Workload
from inferaudit.measure.records import Record
from inferaudit.measure.workload import SALT_WORDS, Planner, RequestPlan, salt_key, synthetic_prompt

VERSION = "inferaudit.fingerprint/v1"
CALIBRATION_FACTOR = 0.9
GREEDY_SEED = 1234
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


@dataclass(frozen=True)
class Fingerprint:
    model: str
    api: str
    seed: int
    created: str
    self_agreement: float
    threshold: float
    calibration: str
    entries: tuple[Entry, ...]
    version: str = VERSION

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["entries"] = [asdict(e) for e in self.entries]
        return data

    def save(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2) + b"\n")

    def entry(self, ident: str) -> Entry | None:
        return next((e for e in self.entries if e.id == ident), None)

    def greedy_body(self) -> dict[str, Any]:
        return {"temperature": 0, "seed": self.seed}


def load_fingerprint(path: Path) -> Fingerprint:
    try:
        data = orjson.loads(path.read_bytes())
        if data.get("version") != VERSION:
            raise ConfigError(f"--fingerprint {path}: not an {VERSION} file")
        entries = tuple(
            Entry(
                id=str(e["id"]),
                prompt=str(e["prompt"]),
                max_tokens=int(e["max_tokens"]),
                text=str(e["text"]),
                token_ends=tuple(int(x) for x in e["token_ends"]),
                output_sha256=str(e["output_sha256"]),
                top_logprobs=_top(e.get("top_logprobs")),
            )
            for e in data["entries"]
        )
        fp = Fingerprint(
            model=str(data["model"]),
            api=str(data["api"]),
            seed=int(data["seed"]),
            created=str(data["created"]),
            self_agreement=float(data["self_agreement"]),
            threshold=float(data["threshold"]),
            calibration=str(data["calibration"]),
            entries=entries,
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


def _aligned_top(r: Record) -> tuple[dict[str, float], ...] | None:
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


def hidden_prompts(n: int, words: int, key: bytes) -> list[str]:
    """``n`` salted synthetic prompts of ``words`` words under a secret ``key``."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(
            int.from_bytes(hashlib.sha256(key + i.to_bytes(4, "big")).digest()[:8], "big")
        )
        out.append(synthetic_prompt(key, i, max(words, SALT_WORDS), rng))
    return out


def record_fingerprint(
    endpoint: Endpoint,
    *,
    api_key: str | None = None,
    prompts: int = 16,
    prompt_words: int = 64,
    max_tokens: int = 32,
    repeats: int = 3,
    timeout_s: float = 120.0,
    on_progress: Callable[[str], None] | None = None,
) -> Fingerprint:
    """Greedy outputs of a trusted reference on fresh hidden prompts, with calibration."""
    import asyncio

    from inferaudit.measure.load.client import check_endpoint, send_plans

    if prompts < 1 or repeats < 2 or max_tokens < 1:
        raise ConfigError("fingerprint: need prompts >= 1, repeats >= 2 and max_tokens >= 1")
    check_endpoint(endpoint, api_key)
    key = secrets.token_bytes(32)
    texts = hidden_prompts(prompts, prompt_words, salt_key(int.from_bytes(key[:6], "big")))
    greedy: dict[str, Any] = {"temperature": 0, "seed": GREEDY_SEED}
    asked: dict[str, Any]  # the stored round also asks for logprobs
    if endpoint.api == Api.chat:
        asked = {**greedy, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
    else:
        asked = {**greedy, "logprobs": TOP_LOGPROBS}
    workload = Workload(enforce_output_length=True, keep_output_text=True)

    def send(conc: int, body: dict[str, Any]) -> list[Record]:
        plans = [
            RequestPlan(k, "fingerprint", t, max_tokens, prompt_words, f"{TAG}{k}", body)
            for k, t in enumerate(texts)
        ]
        rows = asyncio.run(
            send_plans(
                endpoint,
                plans,
                api_key=api_key,
                workload=workload,
                concurrency=conc,
                timeout_s=timeout_s,
            )
        )
        return [Record.model_validate(r) for r in rows]

    rounds: list[list[Record]] = []
    for rep in range(repeats):
        conc = 1 if rep % 2 == 0 else prompts
        if on_progress is not None:
            on_progress(f"round {rep + 1}/{repeats}: {prompts} prompts, {conc} at a time")
        recs = send(conc, greedy if rounds else asked)
        if not rounds and any(not r.ok for r in recs):
            # Servers refuse logprobs in several ways (HTTP 400, or a stream that breaks
            # off, as llama-cpp-python without logits_all does): ask again without them.
            recs = send(conc, greedy)
        bad = [r for r in recs if not r.ok]
        if bad:
            raise EndpointError(
                f"fingerprint: {len(bad)} of {prompts} reference requests failed "
                f"({bad[0].error_class}: {bad[0].error_message})"
            )
        rounds.append(recs)
    ref = rounds[0]
    tops = [_aligned_top(r) for r in ref]
    got = room = 0
    for again in rounds[1:]:
        for a, top, b in zip(ref, tops, again, strict=True):
            m, n, _ = agreement(
                a.output_text or "",
                token_ends(a.chunk_chars),
                b.output_text or "",
                top=top,
                candidate_ends=token_ends(b.chunk_chars),
            )
            got += m
            room += n
    self_agreement = got / room if room else 0.0
    threshold = round(CALIBRATION_FACTOR * self_agreement, 6)
    entries = tuple(
        Entry(
            id=str(r.id),
            prompt=texts[r.id],
            max_tokens=max_tokens,
            text=r.output_text or "",
            token_ends=token_ends(r.chunk_chars),
            output_sha256=r.output_sha256,
            top_logprobs=top,
        )
        for r, top in zip(ref, tops, strict=True)
    )
    return Fingerprint(
        model=endpoint.model,
        api=endpoint.api.value,
        seed=GREEDY_SEED,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        self_agreement=round(self_agreement, 6),
        threshold=threshold,
        calibration=(
            f"threshold = {CALIBRATION_FACTOR} x self-agreement {self_agreement:.6f} of the "
            f"reference over {repeats} rounds (alternately 1 and {prompts} requests in flight); "
            + (
                f"near-ties judged from the reference's top-{TOP_LOGPROBS} logprobs "
                f"(within {NEAR_TIE_NATS} nats)"
                if all(t is not None for t in tops)
                else "no usable logprobs from the reference: every divergence counts"
            )
        ),
        entries=entries,
    )


def replay_plans(
    fp: Fingerprint, spec: RunSpec, count: int | None = None
) -> dict[int, RequestPlan]:
    """A random subset of the fingerprint's prompts at random measured ids of ``spec``'s run.

    Up to 10% of the measured requests (at least one, at most every entry); ids and the subset
    are drawn from a generator seeded by the run's seed. Each replay keeps the workload's
    ``max_tokens`` for its id (agreement is scored over the tokens it had room for) and adds
    ``temperature 0`` and the fingerprint's seed to the body. Not hidden: the prompt length
    (fixed at record time) and the greedy sampling parameters, which a server could inspect.
    """
    if fp.api != spec.endpoint.api.value:
        raise ConfigError(
            f"--fingerprint was recorded over the {fp.api} API; "
            f"this run uses {spec.endpoint.api.value}"
        )
    measured = _measured_ids(spec.load)
    k = count if count is not None else max(1, min(len(fp.entries), measured // 10))
    k = min(k, len(fp.entries), measured)
    rng = np.random.default_rng((spec.seed, 0xF1D0))
    ids = sorted(int(x) for x in rng.choice(measured, size=k, replace=False) + spec.load.warmup)
    picks = rng.choice(len(fp.entries), size=k, replace=False)
    planner = Planner.from_spec(spec)
    plans: dict[int, RequestPlan] = {}
    for i, e_idx in zip(ids, picks, strict=True):
        e = fp.entries[int(e_idx)]
        plans[i] = RequestPlan(
            id=i,
            phase="measure",
            prompt=e.prompt,
            max_tokens=planner.plan(i).max_tokens or e.max_tokens,
            input_tokens=len(e.prompt.split()),
            tag=f"{TAG}{e.id}",
            extra_body=fp.greedy_body(),
        )
    return plans


def _measured_ids(load: Load) -> int:
    if load.requests is not None:
        return load.requests
    assert load.duration_s is not None
    if load.rate is not None:
        return max(1, int(load.rate * load.duration_s))
    return max(1, load.concurrency or 1)
