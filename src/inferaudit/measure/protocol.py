"""The protocol of a verification run (RunSpec): everything fixed before the first request.

A RunSpec is frozen and hashed canonically (RFC 8785 JSON): the hash goes into the evidence, so
a run can be shown to have followed the protocol that was declared for it. Secrets never enter a
RunSpec's serialized form: the endpoint carries the *name* of the environment variable holding an
API key, and the run's secret seed (``secret_seed``, in memory only) is excluded from every dump;
only its commitment (``seed_commitment``) is part of the protocol.
"""

from __future__ import annotations

import hashlib
import math
import re
from enum import StrEnum
from typing import Final, Literal

import rfc8785
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from inferaudit.errors import ConfigError, validation_message

# v1: what v0.1 wrote; its summary credits the server's usage (re-verified exactly as it was).
# v2: the summary credits the output tokens the stream proves (``metrics.proven_tokens``) and
# shows the usage-based count beside them. A stored spec.json names its version; a RunSpec
# built in memory is v2.
SPEC_VERSION_V1: Final = "inferaudit.runspec/v1"
SPEC_VERSION: Final = "inferaudit.runspec/v2"
SpecVersion = Literal["inferaudit.runspec/v1", "inferaudit.runspec/v2"]


class Api(StrEnum):
    completions = "completions"
    chat = "chat"


class Arrivals(StrEnum):
    """Open-loop arrival processes (``measure.load.schedule`` draws them).

    ``gamma``: gamma-distributed gaps with shape ``load.burstiness`` and mean ``1 / rate``
    (vLLM's ``--burstiness``: 1 is Poisson, below 1 burstier, above 1 more even). ``trace``:
    the instants of ``workload.trace``, divided by its speedup.
    """

    poisson = "poisson"
    constant = "constant"
    gamma = "gamma"
    trace = "trace"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Endpoint(_Frozen):
    """How to reach the deployment under test. ``base_url`` ends at ``/v1``."""

    base_url: str
    model: str
    api: Api = Api.completions
    api_key_env: str | None = None  # name of the environment variable, never the key

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"endpoint must be an http(s) URL, got {v!r}")
        return v.rstrip("/")


LengthDist = Literal["fixed", "uniform", "normal"]


class Length(_Frozen):
    """A token length: fixed (``lo == hi``) or drawn per request from ``dist`` over [lo, hi]."""

    lo: int = Field(ge=1)
    hi: int = Field(ge=1)
    dist: LengthDist = "fixed"

    @model_validator(mode="after")
    def _order(self) -> Length:
        if self.hi < self.lo:
            raise ValueError(f"length range {self.lo}-{self.hi} is empty")
        if (self.lo == self.hi) != (self.dist == "fixed"):
            raise ValueError("a fixed length has lo == hi; a range needs uniform or normal")
        return self

    @classmethod
    def parse(cls, text: str) -> Length:
        """``128`` (fixed), ``64-256`` (uniform) or ``64-256:normal``."""
        m = re.fullmatch(r"\s*([1-9]\d*)(?:\s*-\s*([1-9]\d*))?(?::(uniform|normal))?\s*", text)
        if not m:
            raise ConfigError(f"token length {text!r}: expected N, LO-HI or LO-HI:normal")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        dist: LengthDist = "fixed" if lo == hi else "uniform"
        if m.group(3) == "normal":
            dist = "normal"
        elif m.group(3) == "uniform":
            dist = "uniform"
        try:
            return cls(lo=lo, hi=hi, dist=dist)
        except ValueError as exc:
            raise ConfigError(f"token length {text!r}: {validation_message(exc)}") from None

    def __str__(self) -> str:
        return str(self.lo) if self.dist == "fixed" else f"{self.lo}-{self.hi}:{self.dist}"


DatasetFormat = Literal["prompts", "sharegpt", "openai-chat", "hf"]
TraceFormat = Literal["mooncake", "burstgpt"]


class SharedPrefix(_Frozen):
    """Every synthetic prompt starts with one of ``groups`` shared system prompts of ``tokens``
    tokens (chosen per request from the run's seed), then a unique salted suffix: prefix
    caching is expected, and the caching checks say so instead of failing."""

    tokens: int = Field(ge=1)
    groups: int = Field(ge=1)


class Sessions(_Frozen):
    """Multi-turn: each conversation of the dataset is one session; its turns are sent in
    order, each carrying the real answers to the turns before it, ``think_time_s`` after the
    previous answer ended. The schedule (rate or concurrency) decides when sessions start."""

    think_time_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    max_turns: int | None = Field(default=None, ge=1)  # None: every turn of a conversation


class Trace(_Frozen):
    """A recorded arrival trace replayed on its own absolute schedule (``arrivals: trace``):
    ``mooncake`` JSONL (``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``:
    shared prefix blocks of ``block_tokens`` tokens) or ``burstgpt`` CSV. The file is bound by
    ``sha256``; its instants are divided by ``speedup``."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: TraceFormat
    speedup: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    block_tokens: int = Field(default=512, ge=1)


class Workload(_Frozen):
    """What is asked: seeded synthetic prompts (optionally after shared prefixes), a dataset
    bound by its digest (single prompts or multi-turn sessions), or a replayed trace."""

    input_tokens: Length = Length(lo=256, hi=256)
    output_tokens: Length = Length(lo=128, hi=128)
    dataset: str | None = None  # path as given; its content is bound by dataset_sha256
    dataset_sha256: str | None = None
    # None with a dataset: v0.1's prompt JSONL ({"prompt", "output_tokens"?} lines)
    dataset_format: DatasetFormat | None = None
    sessions: Sessions | None = None  # multi-turn sessions from the dataset's conversations
    prefix: SharedPrefix | None = None
    trace: Trace | None = None
    # With the run's tokenizer (spec.tokenizer_sha256): synthetic prompts have exactly the
    # drawn number of prompt tokens; without one, the word count approximates it.
    exact_input_tokens: bool = False
    enforce_output_length: bool = True  # send ignore_eos + min_tokens alongside max_tokens
    keep_output_text: bool = True  # records keep the generated text (checks need it)
    # Records keep at most this many UTF-8 bytes of the text (cut at a character boundary;
    # output_sha256 and output_chars are always of the whole text). None: keep all of it.
    max_text_bytes: int | None = Field(default=65_536, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _sessions_keep_text(cls, data: object) -> object:
        # a session's records keep their whole text unless the protocol says otherwise
        if isinstance(data, dict) and data.get("sessions") is not None:
            data.setdefault("max_text_bytes", None)
        return data

    @model_validator(mode="after")
    def _one_source(self) -> Workload:
        if self.dataset is not None and self.trace is not None:
            raise ValueError("a workload is a dataset or a trace, not both")
        if self.sessions is not None and self.dataset is None:
            raise ValueError("multi-turn sessions need a dataset of conversations")
        if self.prefix is not None and (self.dataset is not None or self.trace is not None):
            raise ValueError("shared prefixes apply to synthetic prompts (no dataset, no trace)")
        if self.dataset_format is not None and self.dataset is None:
            raise ValueError("dataset_format without a dataset")
        if self.sessions is not None and (not self.keep_output_text or self.max_text_bytes):
            raise ValueError(
                "multi-turn sessions send each answer in the next turn: records keep the whole "
                "text (keep_output_text true, max_text_bytes null)"
            )
        return self


class Load(_Frozen):
    """The load pattern of one measurement point."""

    concurrency: int | None = Field(default=None, ge=1)  # closed loop
    rate: float | None = Field(default=None, gt=0)  # open loop, requests/s; inf: all at t=0
    arrivals: Arrivals = Arrivals.poisson
    burstiness: float = Field(default=1.0, gt=0, allow_inf_nan=False)  # gamma arrivals' shape
    # Open loop with a cap: at most this many requests in flight; an arrival waits for a slot
    # (the wait is recorded, latency is still measured from the scheduled time).
    max_concurrency: int | None = Field(default=None, ge=1)
    # Open loop: the rate rises linearly from ramp_start_rate to rate over the first
    # ramp_up_s seconds of the schedule (warm-up included), then stays.
    ramp_up_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    ramp_start_rate: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    requests: int | None = Field(default=None, ge=1)  # measured requests (warm-up not included)
    duration_s: float | None = Field(default=None, gt=0)
    warmup: int = Field(default=0, ge=0)  # requests before the measured ones, flagged in records
    timeout_s: float = Field(default=600.0, gt=0)  # per request, scheduled send to last byte
    # The endpoint's failures (records ``first_byte_timeout`` / ``stall_timeout``): no byte of the
    # response body within first_byte_timeout_s of the actual send; no byte for stall_timeout_s
    # after one arrived. The end rule of a duration-bounded run: the window, then grace_s for the
    # requests in flight; those still running then are cancelled and recorded as ``cancelled``.
    # These govern how a run is executed only: nothing that verify recomputes depends on them.
    first_byte_timeout_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    stall_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    grace_s: float = Field(default=30.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_mode(self) -> Load:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
        if self.requests is None and self.duration_s is None:
            raise ValueError("give requests or duration_s")
        if self.duration_s is not None and not math.isfinite(self.duration_s):
            raise ValueError("duration_s must be finite: for a run bounded by count give requests")
        if self.rate is not None and math.isinf(self.rate) and self.requests is None:
            raise ValueError("rate inf sends every request at t=0: give requests, not duration_s")
        if self.rate is None and (self.max_concurrency is not None or self.ramp_up_s is not None):
            raise ValueError("max_concurrency and ramp_up_s shape an open loop: give a rate")
        if self.burstiness != 1.0 and self.arrivals != Arrivals.gamma:
            raise ValueError("burstiness is the shape of gamma arrivals: set arrivals gamma")
        if self.ramp_up_s is not None and (
            self.arrivals == Arrivals.trace or (self.rate is not None and math.isinf(self.rate))
        ):
            raise ValueError("a ramp-up needs a finite rate drawn by the schedule (not a trace)")
        if (
            self.ramp_up_s is not None
            and self.rate is not None
            and (self.ramp_start_rate >= self.rate)
        ):
            raise ValueError("ramp_start_rate must be below the rate it ramps up to")
        return self

    @field_serializer("rate", when_used="json")
    def _rate_json(self, rate: float | None) -> float | str | None:
        # JSON (and RFC 8785) has no infinity: rate inf is stored as the string "inf"
        return "inf" if rate is not None and math.isinf(rate) else rate

    def label(self) -> str:
        return f"concurrency={self.concurrency}" if self.rate is None else f"rate={self.rate:g}/s"


SLO_METRICS = ("ttft", "tpot", "itl", "e2e")
SLO_PERCENTILES = ("p50", "p90", "p95", "p99", "p99.9")


class SLO(_Frozen):
    """Latency bounds in milliseconds, keyed ``<metric>_<percentile>`` (e.g. ``ttft_p99``).

    A request meets the SLO when each of its own values is within every bound (a request-level
    bound, as in vLLM's goodput); the percentile says what share must meet it for the run's claim.
    """

    bounds_ms: dict[str, float] = Field(default_factory=dict)

    @field_validator("bounds_ms")
    @classmethod
    def _keys(cls, v: dict[str, float]) -> dict[str, float]:
        for key, value in v.items():
            metric, _, pct = key.partition("_")
            if metric not in SLO_METRICS or pct not in SLO_PERCENTILES:
                raise ValueError(
                    f"SLO bound {key!r}: expected <{'|'.join(SLO_METRICS)}>_"
                    f"<{'|'.join(SLO_PERCENTILES)}>"
                )
            if not value > 0:
                raise ValueError(f"SLO bound {key!r} must be positive")
        return dict(sorted(v.items()))

    @classmethod
    def parse(cls, text: str) -> SLO:
        """``ttft_p99=2000ms,tpot_p99=100ms`` (units ms or s; bare numbers are ms)."""
        bounds: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = re.fullmatch(r"([a-z0-9_.]+)\s*=\s*(\d+(?:\.\d+)?)\s*(ms|s)?", part)
            if not m:
                raise ConfigError(f"SLO term {part!r}: expected e.g. ttft_p99=2000ms")
            scale = 1000.0 if m.group(3) == "s" else 1.0
            bounds[m.group(1)] = float(m.group(2)) * scale
        try:
            return cls(bounds_ms=bounds)
        except ValueError as exc:
            raise ConfigError(validation_message(exc)) from None


class ErrorBudget(_Frozen):
    """How far the client may move a reported figure: at most max(share x figure, floor_ms).

    The client's lag (sent - scheduled) adds to every latency measured from the scheduled send;
    ``measure.budget`` derives the allowed client lag p99 from this budget and the run's TTFT p50,
    so a 500 ms TTFT tolerates more lag than a 20 ms one (DESIGN §10).
    """

    share: float = Field(default=0.02, gt=0, lt=1)
    floor_ms: float = Field(default=1.0, gt=0)


class Sampling(_Frozen):
    """The sampling parameters that every request of a run carries, load and audit alike.

    One body shape for all measured traffic: the planner puts ``temperature`` and ``top_p`` (as
    floats) in every request body, and ``seed`` (an int drawn per request from the run's secret
    seed) when ``seed_per_request`` is on, so a replay or a probe cannot be told from load by its
    sampling parameters. The default, greedy decoding, is what the identity check needs.
    """

    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed_per_request: bool = False


class RunSpec(_Frozen):
    """Everything fixed before a run starts. Its canonical hash is part of the evidence."""

    spec_version: SpecVersion = SPEC_VERSION
    endpoint: Endpoint
    workload: Workload = Workload()
    load: Load
    slo: SLO = SLO()
    seed: int = Field(default=0, ge=0, le=2**53 - 1)
    workers: int = Field(default=1, ge=1)
    # An explicit client-lag bound (v1 specs, or --max-lag-ms) replaces the budget-derived one.
    max_client_lag_p99_ms: float | None = Field(default=None, gt=0)
    error_budget: ErrorBudget = ErrorBudget()
    checks: tuple[str, ...] = ()
    label: str | None = None
    tokenizer_sha256: str | None = None  # the tokenizer file the checks counted with
    fingerprint_sha256: str | None = None  # the reference fingerprint the identity check used
    deployment: str | None = None  # what is under test (a claim's subject id), for reconciliation
    claim: str | None = None  # the claim this run tests, when there is one
    # Audit traffic (TRAFFIC, issue 8). None / False keep a v1 spec's meaning.
    sampling: Sampling | None = None  # None (v1): requests carry no sampling parameters
    seed_commitment: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # C5
    allow_prompt_cache: bool = False  # caching is reported either way; allowed: not a failure
    # The secret seed itself: in memory only (to the load workers), never in any serialized
    # form (``exclude``: not in spec.json nor its hash); revealed in seed.json after the run.
    secret_seed: bytes | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _trace_schedule(self) -> RunSpec:
        if (self.load.arrivals == Arrivals.trace) != (self.workload.trace is not None):
            raise ValueError("a trace workload is replayed with arrivals trace, and only it")
        if self.workload.exact_input_tokens and self.tokenizer_sha256 is None:
            raise ValueError("exact input token counts need the run's tokenizer")
        return self

    @property
    def credits_proven(self) -> bool:
        """Whether this protocol's summary credits the output tokens the stream proves (v2),
        or the server's usage (a v1 spec, re-verified as v0.1 computed it)."""
        return self.spec_version != SPEC_VERSION_V1


def canonical_bytes(model: BaseModel) -> bytes:
    """RFC 8785 (JCS) bytes of a pydantic model's JSON form."""
    return rfc8785.dumps(model.model_dump(mode="json"))


def spec_digest(spec: RunSpec) -> str:
    """Hex SHA-256 of the canonical RunSpec."""
    return hashlib.sha256(canonical_bytes(spec)).hexdigest()
