"""The adversarial behaviours that change WHAT is served (and their state), as hooks the server
calls in order for each request. Streaming-shape behaviours (``role-first-chunk``, ``burst``)
live in ``writer.py``; the behaviours' names and parameters in ``behaviours.py``.

Hooks, in the order ``server.Twin`` calls them:
``engine`` (prefix-cache lowers the engine's prefill floor), ``shed`` (shed-under-load),
``params`` (ignore-params), ``identity`` (model-swap, replay-detect), ``cache_key`` /
``replay`` / ``remember`` (response-cache, cache-under-load), ``cache_answer``
(cache-answers), ``read_prompt`` (prefill-cut), ``tamper`` (early-stop, usage-inflate),
``cached_prompt`` (prefix-cache). Each hook that acts appends its name to ``Outcome.behaviours``
(the truth file). ``other_tenant`` (shared-traffic) acts on no request: ``/metrics``
(``metrics.py``) asks it what another tenant adds to each counter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import orjson

from inferaudit.twin import text
from inferaudit.twin.behaviours import Behaviours, ReplayDetect
from inferaudit.twin.config import SWAP_SUFFIX
from inferaudit.twin.engine import BatchEngine, EngineConfig, FixedEngine
from inferaudit.twin.request import ApiError, Params
from inferaudit.twin.truth import Outcome


@dataclass(frozen=True)
class CachedReply:
    """What response-cache replays for a request "the same" as an earlier one."""

    words: tuple[str, ...]
    finish_reason: str
    tokens_reported: int


@dataclass(frozen=True)
class Served:
    """What one request will be served: words, the finish_reason sent, the truth, usage."""

    words: tuple[str, ...]
    finish_reason: str
    true_finish: str
    tokens_reported: int


class Cheats:
    """The behaviours of one twin server and the state they keep across requests."""

    def __init__(self, behaviours: Behaviours, model_name: str) -> None:
        self.behaviours = behaviours
        self.model_name = model_name
        self.response_cache: dict[bytes, CachedReply] = {}
        self.prefix_blocks: set[bytes] = set()
        self.detect = _AuditGuess(behaviours.replay_detect)
        self.cache_reached = 0  # cache-answers: requests that reached its cache so far

    def engine(self, engine: FixedEngine | EngineConfig) -> FixedEngine | BatchEngine:
        """The engine to serve with: prefix-cache lowers its prefill floor."""
        pc = self.behaviours.prefix_cache
        if isinstance(engine, EngineConfig):
            if pc is not None:
                engine = dataclasses.replace(engine, prefix_floor=pc.floor)
            return BatchEngine(engine)
        if pc is not None:
            return FixedEngine(engine.ttft_ms, engine.tpot_ms, pc.floor)
        return engine

    def shed(self, out: Outcome, stream: bool, in_flight: int) -> bool:
        """shed-under-load: raise 429/503 above the threshold, or say to truncate the stream."""
        shed = self.behaviours.shed_under_load
        if shed is None or in_flight <= shed.threshold:
            return False
        out.behaviours.append("shed-under-load")
        if shed.mode == "truncate" and stream:
            return True
        if shed.mode == "429":
            raise ApiError(429, "server overloaded, retry later", "rate_limit_error")
        raise ApiError(503, "server overloaded", "service_unavailable")

    def params(self, out: Outcome, p: Params) -> tuple[int, bool, int | None]:
        """ignore-params: the (min_tokens, ignore_eos, seed) really honoured."""
        if self.behaviours.ignore_params is not None:
            out.behaviours.append("ignore-params")
            return 0, False, None
        return p.min_tokens, p.ignore_eos, p.seed

    def identity(
        self,
        out: Outcome,
        in_flight: int,
        p: Params | None = None,
        body: dict[str, Any] | None = None,
    ) -> str:
        """The model identity that writes this request's text (model-swap may change it;
        replay-detect serves the substitute to what does not look like audit traffic)."""
        swap = self.behaviours.model_swap
        if swap is not None and (
            out.seq > swap.after or (swap.above > 0 and in_flight > swap.above)
        ):
            out.behaviours.append("model-swap")
            return self.model_name + SWAP_SUFFIX
        if (
            p is not None
            and body is not None
            and not self.detect.looks_audit(out, in_flight, p, body)
        ):
            out.behaviours.append("replay-detect")
            return self.model_name + SWAP_SUFFIX
        return self.model_name

    def read_prompt(self, out: Outcome, prompt: str) -> str:
        """prefill-cut: the part of a long prompt really read (its tail); else all of it."""
        cut = self.behaviours.prefill_cut
        words = prompt.split()
        if cut is None or len(words) <= cut.above:
            return prompt
        out.behaviours.append("prefill-cut")
        return " ".join(words[-max(1, math.ceil(len(words) * cut.keep)) :])

    def cache_key(self, api: str, body: dict[str, Any], p: Params) -> bytes | None:
        """response-cache / cache-under-load: what makes two requests "the same" (None when
        no cache is on)."""
        cache = self.behaviours.response_cache
        if cache is None and self.behaviours.cache_under_load is None:
            return None
        keyed: object = [p.prompt, p.max_tokens]
        if cache is not None and cache.key == "body":
            keyed = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        data = orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(api.encode() + b"\0" + data).digest()

    def replay(
        self, out: Outcome, key: bytes | None, in_flight: int = 0
    ) -> tuple[Served, FixedEngine] | None:
        """response-cache: a stored reply for ``key`` and the fast engine that replays it;
        cache-under-load: the same, only while more than its threshold are in flight."""
        cached = None if key is None else self.response_cache.get(key)
        if cached is None:
            return None
        cache = self.behaviours.response_cache
        under = self.behaviours.cache_under_load
        if cache is not None:
            name, engine = "response-cache", FixedEngine(cache.ttft_ms, cache.tpot_ms)
        elif under is not None and in_flight > under.threshold:
            name, engine = "cache-under-load", FixedEngine(under.ttft_ms, under.tpot_ms)
        else:
            return None
        out.cache_hit = True
        out.behaviours.append(name)
        served = Served(cached.words, cached.finish_reason, "cache-replay", cached.tokens_reported)
        return served, engine

    def cache_answer(self, out: Outcome) -> FixedEngine | None:
        """cache-answers: the fast engine that answers this request in front of the real one
        (the ``n``-th to reach it, iff ``floor(n x share) > floor((n - 1) x share)``), or None."""
        ca = self.behaviours.cache_answers
        if ca is None:
            return None
        self.cache_reached += 1
        n, share = self.cache_reached, _exact(ca.share)
        if math.floor(n * share) == math.floor((n - 1) * share):
            return None
        out.cache_hit = True
        out.behaviours.append("cache-answers")
        return FixedEngine(ca.ttft_ms, ca.tpot_ms)

    def other_tenant(self, own: int) -> int:
        """shared-traffic: what another tenant adds to a counter whose own value is ``own``
        (``floor(share x own)``; 0 when the behaviour is off)."""
        st = self.behaviours.shared_traffic
        return 0 if st is None else math.floor(own * _exact(st.share))

    def remember(self, key: bytes | None, out: Outcome, served: Served) -> None:
        """response-cache: keep a reply that was served to its end, for later replays."""
        done = out.true_finish not in ("client-closed", "truncated")
        if key is not None and done:
            self.response_cache[key] = CachedReply(
                served.words, served.finish_reason, served.tokens_reported
            )

    def tamper(self, out: Outcome, completion: text.Completion) -> Served:
        """early-stop and usage-inflate: what is sent and reported for an honest completion."""
        b = self.behaviours
        words, finish = completion.words, completion.finish_reason
        true_finish = finish
        if b.early_stop is not None and len(words) > 1:
            words = words[: max(1, math.floor(len(words) * b.early_stop.fraction))]
            finish = "length" if b.early_stop.lie else "stop"
            true_finish = "early-stop"
            out.behaviours.append("early-stop")
        reported = len(words)
        if b.usage_inflate is not None:
            reported = math.ceil(len(words) * (1.0 + b.usage_inflate.ratio))
            reported += b.usage_inflate.add
            out.behaviours.append("usage-inflate")
        return Served(words, finish, true_finish, reported)

    def cached_prompt(self, out: Outcome, prompt: str) -> int:
        """prefix-cache: prompt tokens served from the cache (0 when the behaviour is off)."""
        pc = self.behaviours.prefix_cache
        if pc is None:
            return 0
        hit = self._prefix_lookup(prompt, pc.block)
        if hit:
            out.behaviours.append("prefix-cache")
        return hit

    def _prefix_lookup(self, prompt: str, block: int) -> int:
        """Prompt tokens covered by whole blocks seen before; then remember this prompt's."""
        words = prompt.split()
        h = hashlib.sha256()
        hit, still = 0, True
        for i in range(len(words) // block):
            h.update(("\0".join(words[i * block : (i + 1) * block]) + "\1").encode())
            digest = h.copy().digest()
            if still and digest in self.prefix_blocks:
                hit = (i + 1) * block
            else:
                still = False
                self.prefix_blocks.add(digest)
        return hit


def _exact(share: float) -> Fraction:
    """A share as the exact fraction it was written as (0.3 -> 3/10, not the binary float)."""
    return Fraction(share).limit_denominator(10**6)


class _AuditGuess:
    """replay-detect's guesses at what is audit traffic (see ``behaviours.ReplayDetect``)."""

    def __init__(self, params: ReplayDetect | None) -> None:
        self.params = params
        self.seen = 0
        self.shape: tuple[object, ...] | None = None
        self.lengths: list[int] = []
        self.open: list[Outcome] = []  # requests not yet seen finished
        self.last_done_ns = 0

    def looks_audit(self, out: Outcome, in_flight: int, p: Params, body: dict[str, Any]) -> bool:
        """True: serve the real model (the request may be checked); False: substitute."""
        rd = self.params
        if rd is None:
            return True
        self.seen += 1
        still = []
        for o in self.open:
            if o.done_ns:
                self.last_done_ns = max(self.last_done_ns, o.done_ns)
            else:
                still.append(o)
        self.open = [*still, out]
        guesses = [self.seen <= rd.head]
        # in_flight counts this request: 1 means the server sat idle until it came
        idle = in_flight <= 1 and out.arrival_ns - self.last_done_ns >= rd.idle_ms * 1e6
        guesses.append(idle and self.seen > 1)
        shape = _shape(body)
        if self.shape is None:
            self.shape = shape
        elif rd.keys and shape != self.shape:
            guesses.append(True)
        words = len(p.prompt.split())
        if len(self.lengths) < rd.learn:
            self.lengths.append(words)
        elif rd.length and not min(self.lengths) <= words <= max(self.lengths):
            guesses.append(True)
        return any(guesses)


def _shape(body: dict[str, Any]) -> tuple[object, ...]:
    """Keys, value types and sampling values of a body (what a v1 replay differed in)."""
    sampling = (body.get("temperature"), body.get("top_p"), "seed" in body, "logprobs" in body)
    return tuple((k, type(v).__name__) for k, v in body.items() if k != "prompt") + sampling
