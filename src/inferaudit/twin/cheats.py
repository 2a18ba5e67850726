"""The adversarial behaviours that change WHAT is served (and their state), as hooks the server
calls in order for each request. Streaming-shape behaviours (``role-first-chunk``, ``burst``)
live in ``writer.py``; the behaviours' names and parameters in ``behaviours.py``.

Hooks, in the order ``server.Twin`` calls them:
``engine`` (prefix-cache lowers the engine's prefill floor), ``shed`` (shed-under-load),
``params`` (ignore-params), ``identity`` (model-swap), ``cache_key`` / ``replay`` /
``remember`` (response-cache), ``tamper`` (early-stop, usage-inflate), ``cached_prompt``
(prefix-cache). Each hook that acts appends its name to ``Outcome.behaviours`` (the truth file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import orjson

from inferaudit.twin import text
from inferaudit.twin.behaviours import Behaviours
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

    def identity(self, out: Outcome, in_flight: int) -> str:
        """The model identity that writes this request's text (model-swap may change it)."""
        swap = self.behaviours.model_swap
        if swap is not None and (
            out.seq > swap.after or (swap.above > 0 and in_flight > swap.above)
        ):
            out.behaviours.append("model-swap")
            return self.model_name + SWAP_SUFFIX
        return self.model_name

    def cache_key(self, api: str, body: dict[str, Any], p: Params) -> bytes | None:
        """response-cache: what makes two requests "the same" (None when the cache is off)."""
        cache = self.behaviours.response_cache
        if cache is None:
            return None
        keyed: object = [p.prompt, p.max_tokens]
        if cache.key == "body":
            keyed = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        data = orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(api.encode() + b"\0" + data).digest()

    def replay(self, out: Outcome, key: bytes | None) -> tuple[Served, FixedEngine] | None:
        """response-cache: a stored reply for ``key`` and the fast engine that replays it."""
        cache = self.behaviours.response_cache
        cached = None if key is None else self.response_cache.get(key)
        if cached is None or cache is None:
            return None
        out.cache_hit = True
        out.behaviours.append("response-cache")
        served = Served(cached.words, cached.finish_reason, "cache-replay", cached.tokens_reported)
        return served, FixedEngine(cache.ttft_ms, cache.tpot_ms)

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
