"""Adversarial behaviours: the ways of gaming a load test that inferaudit's checks must catch.

Each behaviour is switched on with ``--behave NAME`` (repeatable, combinable) and parameterised
inline: ``--behave NAME:key=value,key=value``. Honest is the default (no behaviour).

============================  ==================================================================
``response-cache``            a repeated request is replayed from a cache: first token after
                              ``ttft_ms`` (1), then one token every ``tpot_ms`` (0), no engine
                              work. ``key=prompt`` (default): same API, prompt and max_tokens
                              (seed and other sampling parameters ignored, as a cheat would);
                              ``key=body``: the same body apart from ``stream`` options.
``prefix-cache``              prompts sharing a prefix of whole ``block``-word blocks (16) with an
                              earlier prompt skip that part of the prefill: TTFT (fixed mode) or
                              prefill work (engine mode) shrinks to the uncached share, at least
                              ``floor`` (0.05) of it.
``early-stop``                stops after ``fraction`` (0.6) of the tokens it should send;
                              ``finish_reason`` is "stop", or the lie "length" with ``lie=true``.
``usage-inflate``             ``usage.completion_tokens`` = ceil(tokens sent × (1 + ``ratio``))
                              + ``add``; ``ratio`` 0.25, ``add`` 0 (``ratio=0,add=1``: one token
                              more on every answer, inside a 1% tolerance for long answers).
``role-first-chunk``          on arrival, at once, an empty first chunk (chat: role-only delta;
                              completions: empty text) to fake a low TTFT.
``split-first-token``         on arrival, at once, the first ``chars`` (2) characters of the first
                              token as a content chunk (a fragment), the rest of it when the real
                              first token exists (after the real TTFT): fakes a low TTFT.
``burst``                     the first token on time, then tokens are held and flushed ``every``
                              (16) at a time in one write (``every=0``: all at the end).
``model-swap``                a different "model" (another word distribution) answers requests
                              after the first ``after`` (20) requests, or while more than
                              ``above`` requests are in flight (0 = only ``after`` applies).
``shed-under-load``           while more than ``threshold`` (8) requests are in flight, new ones
                              get ``mode`` = "429" or "503", or "truncate": the stream ends after
                              half its tokens with no finish and no ``[DONE]``.
``ignore-params``             ignores ``ignore_eos``, ``min_tokens`` and ``seed`` (sampling uses
                              the server's own generator).
``replay-detect``             serves the real model only to requests that look like audit traffic
                              and a substitute (``model-swap``'s other model) to the rest. Looks
                              like audit: the first ``head`` (8) requests (probes come first); a
                              request arriving after ``idle_ms`` (50) with nothing in flight (a
                              separate phase starts); a body whose keys, value types or sampling
                              values differ from the first body seen (``keys=true``); a prompt
                              whose word count is outside the range of the first ``learn`` (32)
                              prompts (``length=true``). Every guess a vendor could take from
                              the code; replays inside the load match none of them (a closed
                              loop for a duration still sends them in a block after the load).
``prefill-cut``               prompts over ``above`` (512) words are read only from their last
                              ``keep`` (0.5) share of words: the answer is written from that tail
                              and the prefill work (TTFT) shrinks with it, while ``usage`` still
                              reports the whole prompt's tokens.
``cache-under-load``          a response cache (keyed like ``response-cache``, ``key=prompt``)
                              that stores every answer but replays only while more than
                              ``threshold`` (4) requests are in flight: first token after
                              ``ttft_ms`` (1), then one every ``tpot_ms`` (0).
``shared-traffic``            the endpoint also serves another tenant's traffic, invisible to
                              this client: every counter of ``/metrics`` shows ``floor(share x
                              own)`` more than the twin's own work (``share`` 0.3: 30% more
                              requests, prompt and generated tokens than this client's); what is
                              served is unchanged.
``cache-answers``             a response cache in front of the engine answers ``share`` (0.3) of
                              the requests: the ``n``-th request that reaches it (accepted, not
                              replayed by another cache) is answered iff ``floor(n x share) >
                              floor((n - 1) x share)`` (share 0.3: the 4th, 7th, 10th, ...), with
                              the engine's own text, first token after ``ttft_ms`` (1), then one
                              every ``tpot_ms`` (0), and never reaches ``/metrics``' counters.
============================  ==================================================================

``/metrics`` counts only what reaches the engine (``metrics.py``): replays of
``response-cache`` and ``cache-under-load`` never reach it either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from inferaudit.errors import ConfigError


class Name(StrEnum):
    response_cache = "response-cache"
    prefix_cache = "prefix-cache"
    early_stop = "early-stop"
    usage_inflate = "usage-inflate"
    role_first_chunk = "role-first-chunk"
    split_first_token = "split-first-token"
    burst = "burst"
    model_swap = "model-swap"
    shed_under_load = "shed-under-load"
    ignore_params = "ignore-params"
    replay_detect = "replay-detect"
    prefill_cut = "prefill-cut"
    cache_under_load = "cache-under-load"
    shared_traffic = "shared-traffic"
    cache_answers = "cache-answers"


def _check(ok: bool, name: Name, message: str) -> None:
    if not ok:
        raise ConfigError(f"--behave {name}: {message}")


@dataclass(frozen=True)
class ResponseCache:
    ttft_ms: float = 1.0
    tpot_ms: float = 0.0
    key: str = "prompt"  # "prompt": API + prompt + max_tokens; "body": the whole request body

    def __post_init__(self) -> None:
        _check(self.ttft_ms >= 0 and self.tpot_ms >= 0, Name.response_cache, "times must be >= 0")
        _check(self.key in ("prompt", "body"), Name.response_cache, "key must be prompt or body")


@dataclass(frozen=True)
class PrefixCache:
    block: int = 16
    floor: float = 0.05

    def __post_init__(self) -> None:
        _check(self.block >= 1, Name.prefix_cache, "block must be >= 1")
        _check(0.0 <= self.floor <= 1.0, Name.prefix_cache, "floor must be in [0, 1]")


@dataclass(frozen=True)
class EarlyStop:
    fraction: float = 0.6
    lie: bool = False

    def __post_init__(self) -> None:
        _check(0.0 < self.fraction < 1.0, Name.early_stop, "fraction must be in (0, 1)")


@dataclass(frozen=True)
class UsageInflate:
    ratio: float = 0.25
    add: int = 0

    def __post_init__(self) -> None:
        _check(self.ratio >= 0 and self.add >= 0, Name.usage_inflate, "ratio/add must be >= 0")
        _check(self.ratio > 0 or self.add > 0, Name.usage_inflate, "ratio or add must be > 0")


@dataclass(frozen=True)
class RoleFirstChunk:
    pass


@dataclass(frozen=True)
class SplitFirstToken:
    chars: int = 2

    def __post_init__(self) -> None:
        _check(self.chars >= 1, Name.split_first_token, "chars must be >= 1")


@dataclass(frozen=True)
class Burst:
    every: int = 16

    def __post_init__(self) -> None:
        _check(self.every >= 0 and self.every != 1, Name.burst, "every must be 0 or >= 2")


@dataclass(frozen=True)
class ModelSwap:
    after: int = 20
    above: int = 0

    def __post_init__(self) -> None:
        _check(self.after >= 0 and self.above >= 0, Name.model_swap, "after/above must be >= 0")


@dataclass(frozen=True)
class ShedUnderLoad:
    threshold: int = 8
    mode: str = "429"

    def __post_init__(self) -> None:
        _check(self.threshold >= 0, Name.shed_under_load, "threshold must be >= 0")
        _check(
            self.mode in ("429", "503", "truncate"),
            Name.shed_under_load,
            f"mode must be 429, 503 or truncate, got {self.mode!r}",
        )


@dataclass(frozen=True)
class IgnoreParams:
    pass


@dataclass(frozen=True)
class ReplayDetect:
    head: int = 8
    idle_ms: float = 50.0
    keys: bool = True
    length: bool = True
    learn: int = 32

    def __post_init__(self) -> None:
        _check(self.head >= 0 and self.learn >= 1, Name.replay_detect, "head >= 0, learn >= 1")
        _check(self.idle_ms >= 0, Name.replay_detect, "idle_ms must be >= 0")


@dataclass(frozen=True)
class PrefillCut:
    above: int = 512
    keep: float = 0.5

    def __post_init__(self) -> None:
        _check(self.above >= 1, Name.prefill_cut, "above must be >= 1")
        _check(0.0 < self.keep < 1.0, Name.prefill_cut, "keep must be in (0, 1)")


@dataclass(frozen=True)
class CacheUnderLoad:
    threshold: int = 4
    ttft_ms: float = 1.0
    tpot_ms: float = 0.0

    def __post_init__(self) -> None:
        _check(self.threshold >= 0, Name.cache_under_load, "threshold must be >= 0")
        _check(self.ttft_ms >= 0 and self.tpot_ms >= 0, Name.cache_under_load,
               "times must be >= 0")  # fmt: skip


@dataclass(frozen=True)
class SharedTraffic:
    share: float = 0.3  # the other tenant's use, as a share of this twin's own

    def __post_init__(self) -> None:
        _check(0.0 < self.share <= 100.0, Name.shared_traffic, "share must be in (0, 100]")


@dataclass(frozen=True)
class CacheAnswers:
    share: float = 0.3  # of the requests that reach the cache
    ttft_ms: float = 1.0
    tpot_ms: float = 0.0

    def __post_init__(self) -> None:
        _check(0.0 < self.share <= 1.0, Name.cache_answers, "share must be in (0, 1]")
        _check(self.ttft_ms >= 0 and self.tpot_ms >= 0, Name.cache_answers,
               "times must be >= 0")  # fmt: skip


_PARAMS: dict[Name, type] = {
    Name.response_cache: ResponseCache,
    Name.prefix_cache: PrefixCache,
    Name.early_stop: EarlyStop,
    Name.usage_inflate: UsageInflate,
    Name.role_first_chunk: RoleFirstChunk,
    Name.split_first_token: SplitFirstToken,
    Name.burst: Burst,
    Name.model_swap: ModelSwap,
    Name.shed_under_load: ShedUnderLoad,
    Name.ignore_params: IgnoreParams,
    Name.replay_detect: ReplayDetect,
    Name.prefill_cut: PrefillCut,
    Name.cache_under_load: CacheUnderLoad,
    Name.shared_traffic: SharedTraffic,
    Name.cache_answers: CacheAnswers,
}


@dataclass(frozen=True)
class Behaviours:
    """The behaviours switched on; ``None`` = off. All ``None`` is the honest twin."""

    response_cache: ResponseCache | None = None
    prefix_cache: PrefixCache | None = None
    early_stop: EarlyStop | None = None
    usage_inflate: UsageInflate | None = None
    role_first_chunk: RoleFirstChunk | None = None
    split_first_token: SplitFirstToken | None = None
    burst: Burst | None = None
    model_swap: ModelSwap | None = None
    shed_under_load: ShedUnderLoad | None = None
    ignore_params: IgnoreParams | None = None
    replay_detect: ReplayDetect | None = None
    prefill_cut: PrefillCut | None = None
    cache_under_load: CacheUnderLoad | None = None
    shared_traffic: SharedTraffic | None = None
    cache_answers: CacheAnswers | None = None

    def names(self) -> list[str]:
        return [
            Name[f.name].value
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        ]

    def describe(self) -> list[str]:
        """``NAME(key=value, ...)`` per active behaviour, for the banner."""
        out = []
        for f in dataclasses.fields(self):
            params = getattr(self, f.name)
            if params is not None:
                values = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(params).items())
                out.append(f"{Name[f.name].value}({values})")
        return out


def _coerce(name: Name, key: str, kind: str, text: str) -> Any:
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"--behave {name}: {key}={text!r} is not a {kind}") from None
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--behave {name}: {key}={text!r} is not true/false")
    assert kind == "str", f"unhandled parameter type {kind}"
    return text


def parse_one(spec: str) -> tuple[Name, object]:
    """``NAME`` or ``NAME:key=value,key=value`` -> (name, parameter object)."""
    head, _, tail = spec.strip().partition(":")
    try:
        name = Name(head.strip())
    except ValueError:
        known = ", ".join(n.value for n in Name)
        raise ConfigError(f"--behave {head!r}: unknown behaviour (known: {known})") from None
    cls = _PARAMS[name]
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in tail.split(","))):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key not in kinds:
            allowed = ", ".join(kinds) or "none"
            raise ConfigError(f"--behave {name}: bad parameter {item!r} (parameters: {allowed})")
        values[key] = _coerce(name, key, kinds[key], text.strip())
    return name, cls(**values)


def parse_behaviours(specs: list[str]) -> Behaviours:
    """All ``--behave`` values -> :class:`Behaviours`; a behaviour given twice is an error."""
    chosen: dict[str, Any] = {}  # each value the dataclass parse_one made for that name
    for spec in specs:
        name, params = parse_one(spec)
        if name.name in chosen:
            raise ConfigError(f"--behave {name}: given more than once")
        chosen[name.name] = params
    return Behaviours(**chosen)
