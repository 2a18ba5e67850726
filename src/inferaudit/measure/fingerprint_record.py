"""Recording a model-identity fingerprint from a trusted reference (sends traffic).

The prompts are the ones a run with the same workload flags would send (``Planner`` under a
fresh secret seed: same salt form and length distribution, or rows of the same dataset), so that
replaying them inside a run's load shows nothing a server could pick out. Every request is
greedy (``temperature 0.0``, ``top_p 1.0``, no seed: the body of a run with default sampling);
each entry asks for ``workload.output_tokens.hi`` tokens so that a replay of any drawn length can
be compared in full. A reference that aborts a stream whenever another request arrives
(llama-cpp-python's default) is named in one line with what to do
(:mod:`inferaudit.measure.probes.interrupts`). The data model, the file format and the
calibration are described in :mod:`inferaudit.measure.fingerprint`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from inferaudit.errors import ConfigError, EndpointError
from inferaudit.measure.fingerprint import (
    CALIBRATION_FACTOR,
    NEAR_TIE_NATS,
    TAG,
    TOP_LOGPROBS,
    Entry,
    Fingerprint,
    RecordedWorkload,
    agreement,
    aligned_top,
    token_ends,
)
from inferaudit.measure.likelihood import calibrate, score
from inferaudit.measure.load.client import check_endpoint, send_plans
from inferaudit.measure.planner import Planner
from inferaudit.measure.probes.interrupts import cut_by_arrivals, is_cut
from inferaudit.measure.protocol import Api, Endpoint, Load, RunSpec, Sampling, Workload
from inferaudit.measure.records import Record
from inferaudit.measure.workload import RequestPlan, commit_seed, fresh_seed

__all__ = ["record_fingerprint"]


def _prompts(endpoint: Endpoint, workload: Workload, n: int) -> list[RequestPlan]:
    spec = RunSpec(
        endpoint=endpoint,
        workload=workload,
        load=Load(concurrency=1, requests=n),
        sampling=Sampling(),
    )
    planner = Planner.from_spec(commit_seed(spec, fresh_seed()))
    rows = planner.dataset_rows
    if rows is not None and n > rows:
        raise ConfigError(f"fingerprint: --prompts {n} is more than the dataset's {rows} rows")
    out = []
    for k in range(n):
        p = planner.generated(k, phase="fingerprint")
        asked = max(p.max_tokens or 0, workload.output_tokens.hi)
        out.append(dataclasses.replace(p, max_tokens=asked, tag=f"{TAG}{k}"))
    return out


def record_fingerprint(
    endpoint: Endpoint,
    *,
    workload: Workload,
    api_key: str | None = None,
    prompts: int = 16,
    repeats: int = 3,
    timeout_s: float = 120.0,
    on_progress: Callable[[str], None] | None = None,
) -> Fingerprint:
    """Greedy outputs of a trusted reference on fresh hidden prompts, with calibration."""
    if prompts < 1 or repeats < 2:
        raise ConfigError("fingerprint: need prompts >= 1 and repeats >= 2")
    check_endpoint(endpoint, api_key)
    base = _prompts(endpoint, workload, prompts)
    greedy: dict[str, Any] = dict(base[0].extra_body)  # temperature 0.0, top_p 1.0
    asked: dict[str, Any]  # the stored round also asks for logprobs
    if endpoint.api == Api.chat:
        asked = {**greedy, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
    else:
        asked = {**greedy, "logprobs": TOP_LOGPROBS}

    def send(conc: int, body: dict[str, Any]) -> list[Record]:
        plans = [dataclasses.replace(p, extra_body=body) for p in base]
        rows = asyncio.run(
            send_plans(
                endpoint,
                plans,
                api_key=api_key,
                workload=workload.model_copy(update={"keep_output_text": True}),
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
        # a reference stream must end saying why (a finish_reason): one that stops short with a
        # bare [DONE] would make a reference of a cut-off answer
        bad = [r for r in recs if not r.ok or is_cut(r)]
        cut = cut_by_arrivals(recs) if bad and conc > 1 else None
        if cut is not None:
            raise EndpointError(f"fingerprint: {cut.line('reference streams')}")
        if bad:
            raise EndpointError(
                f"fingerprint: {len(bad)} of {prompts} reference requests failed "
                f"({bad[0].error_class or 'no finish_reason'}: "
                f"{bad[0].error_message or 'the stream ended without saying why'})"
            )
        rounds.append(recs)
    ref = rounds[0]
    tops = [aligned_top(r) for r in ref]
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
    likelihood = None
    if all(t is not None for t in tops):
        likelihood = calibrate(
            score(
                a.output_text or "",
                token_ends(a.chunk_chars),
                top,
                b.output_text or "",
                token_ends(b.chunk_chars),
            )
            for again in rounds[1:]
            for a, top, b in zip(ref, tops, again, strict=True)
            if top is not None
        )
    entries = tuple(
        Entry(
            id=str(k),
            prompt=p.prompt,
            max_tokens=p.max_tokens or 0,
            text=r.output_text or "",
            token_ends=token_ends(r.chunk_chars),
            output_sha256=r.output_sha256,
            top_logprobs=top,
            input_tokens=p.input_tokens,
        )
        for k, (p, r, top) in enumerate(zip(base, ref, tops, strict=True))
    )
    return Fingerprint(
        model=endpoint.model,
        api=endpoint.api.value,
        seed=None,
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
            + (
                ""
                if likelihood is None
                else f"; likelihood: {likelihood.partings} partings over {likelihood.tokens} "
                f"scored tokens of the repeats (deficit {likelihood.deficit:g} nats), rate bound "
                f"{likelihood.rate:g}/token, {likelihood.nats:g} nats per parting"
            )
        ),
        entries=entries,
        workload=RecordedWorkload.of(workload),
        likelihood=likelihood,
    )
