"""Roofline bounds for LLM serving: how fast can this model possibly run on that hardware?

Pure functions, SI units (bytes, FLOP, seconds). ``count`` accelerators serve ONE replica with
tensor parallelism: their bandwidth and compute add up (interconnect cost ignored, so the bound
stays an upper bound). For a fleet, one replica over every card is the most generous split —
more replicas read the weights more times — so it bounds any real arrangement.

Decode step (one token for each of ``batch`` sequences, each with ``context_tokens`` of context):
  memory time  = (weight bytes read + batch * KV bytes of the context) / (count * bandwidth)
  compute time = 2 * active parameters * batch / (count * dense peak)
  step time    = max(memory, compute)          tokens/s bound = batch / step time
Assumptions, stated in ``Bound.assumptions`` so a report can print them: all weights read once
per step (MoE: only the active parameters, a lower bound on bytes, so the ceiling is generous);
attention FLOPs ignored (a lower bound on compute); published dense peaks and nominal bandwidth
(real kernels reach less, so a real system sits below the bound). A figure the catalog does not
have is never guessed: the constraint that needs it is left out and the assumptions say so; when
no constraint is left, ``RooflineUnknownError`` is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from inferaudit.errors import ConfigError
from inferaudit.intent.catalog import BYTES_PER_PARAM, Accelerator, ModelSpec


class RooflineUnknownError(ConfigError):
    """The catalog lacks every figure a bound would need (never filled in by a guess)."""


def _bytes_per(dtype: str) -> float:
    try:
        return BYTES_PER_PARAM[dtype.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown precision {dtype!r}; known: {', '.join(BYTES_PER_PARAM)}"
        ) from None


def weight_bytes(model: ModelSpec, dtype: str) -> float:
    """Bytes of all weights at ``dtype``."""
    return model.params_b * 1e9 * _bytes_per(dtype)


def active_weight_bytes(model: ModelSpec, dtype: str) -> float:
    """Bytes of the weights one token touches (the active parameters of an MoE model)."""
    return model.active_params_b * 1e9 * _bytes_per(dtype)


def kv_bytes_per_token(model: ModelSpec, kv_dtype: str = "bf16") -> float:
    """KV-cache bytes one token adds over all layers: ``2 * layers * kv_heads * head_dim * b``.

    MLA models (DeepSeek-V3/R1) cache one latent of ``mla_kv_dim`` values per layer instead.
    """
    per_layer = (
        model.mla_kv_dim if model.mla_kv_dim is not None else 2 * model.kv_heads * (model.head_dim)
    )
    return model.layers * per_layer * _bytes_per(kv_dtype)


def kv_cache_bytes(model: ModelSpec, context_tokens: int, kv_dtype: str = "bf16") -> float:
    """KV bytes one sequence of ``context_tokens`` holds (and a decode step reads).

    Sliding-window layers (gpt-oss) keep at most ``sliding_window`` tokens.
    """
    if context_tokens < 0:
        raise ConfigError(f"context_tokens must be >= 0, got {context_tokens}")
    per_layer_token = kv_bytes_per_token(model, kv_dtype) / model.layers
    full_layers = model.layers - model.sliding_layers
    window = context_tokens if model.sliding_window is None else model.sliding_window
    held = full_layers * context_tokens + model.sliding_layers * min(context_tokens, window)
    return per_layer_token * held


def peak_flops(acc: Accelerator, dtype: str) -> tuple[float | None, str]:
    """Dense peak (FLOP/s or OP/s) of one accelerator for ``dtype``, or None and the reason.

    bf16/fp16 -> bf16 peak; fp8 -> fp8 peak; int8/int4 -> int8 peak; mxfp4 -> fp8 peak. A
    4-bit format is taken to compute no faster than its 8-bit counterpart: generous where 4-bit
    weights are dequantized (Hopper), but the catalog has no FP4 peak, so on parts with FP4
    tensor cores (Blackwell) the compute bound is below the hardware's. fp32 has no column.
    """
    d = dtype.lower()
    _bytes_per(d)
    column = {
        "bf16": "bf16_tflops",
        "fp16": "bf16_tflops",
        "fp8": "fp8_tflops",
        "mxfp4": "fp8_tflops",
        "int8": "int8_tops",
        "int4": "int8_tops",
    }.get(d)
    if column is None:
        return None, f"the catalog has no {d} peak column"
    value = getattr(acc, column)
    if value is None:
        why = "unsupported" if column in acc.unsupported else "not published"
        return None, f"{acc.id} {column} is {why}"
    return value * 1e12, f"{acc.id} {column} = {value:g} (dense)"


def _bandwidth(acc: Accelerator) -> float | None:
    return None if acc.mem_bw_gbs is None else acc.mem_bw_gbs * 1e9


@dataclass(frozen=True)
class Bound:
    """An upper bound on decode throughput, with the numbers and assumptions behind it."""

    tokens_per_s: float
    limit: str  # "memory" or "compute": the constraint that sets the bound
    memory_s: float | None  # per step
    compute_s: float | None  # per step
    assumptions: tuple[str, ...]


def _check(batch: int | None, count: int) -> None:
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    if count < 1:
        raise ConfigError(f"accelerator count must be >= 1, got {count}")


def decode_bound(
    acc: Accelerator,
    model: ModelSpec,
    *,
    batch: int,
    context_tokens: int,
    dtype: str,
    count: int = 1,
    kv_dtype: str = "bf16",
) -> Bound:
    """Upper bound on decode tokens/s of one replica, with its reasoning."""
    _check(batch, count)
    moe = model.active_params_b < model.params_b
    w = active_weight_bytes(model, dtype) if moe else weight_bytes(model, dtype)
    kv = batch * kv_cache_bytes(model, context_tokens, kv_dtype)
    notes = [
        f"{model.id}: {w / 1e9:.3g} GB of {dtype} weights read per step"
        + (" (MoE: active parameters only)" if moe else ""),
        f"KV cache: batch {batch} x {context_tokens} context tokens x "
        f"{kv_cache_bytes(model, 1, kv_dtype):.4g} B/token ({kv_dtype}) = {kv / 1e9:.3g} GB",
        f"{count} x {acc.id} as one tensor-parallel replica (interconnect ignored)",
    ]
    bw = _bandwidth(acc)
    memory_s: float | None = None
    if bw is None:
        notes.append(f"{acc.id} memory bandwidth not published: memory bound omitted")
    else:
        memory_s = (w + kv) / (count * bw)
        notes.append(f"memory: {acc.mem_bw_gbs:g} GB/s per accelerator -> {memory_s * 1e3:.4g} ms")
    peak, why = peak_flops(acc, dtype)
    compute_s: float | None = None
    if peak is None:
        notes.append(f"compute bound omitted: {why}")
    else:
        compute_s = 2 * model.active_params_b * 1e9 * batch / (count * peak)
        notes.append(f"compute: 2 x active params x batch / ({why}) -> {compute_s * 1e3:.4g} ms")
    if memory_s is None and compute_s is None:
        raise RooflineUnknownError(
            f"no roofline for {model.id} on {acc.id} at {dtype}: bandwidth and peak unknown"
        )
    step = max(t for t in (memory_s, compute_s) if t is not None)
    limit = "memory" if step == memory_s else "compute"
    notes.append("attention FLOPs ignored; published peaks, no efficiency factor")
    return Bound(batch / step, limit, memory_s, compute_s, tuple(notes))


def decode_step_seconds(
    acc: Accelerator,
    model: ModelSpec,
    *,
    batch: int,
    context_tokens: int,
    dtype: str,
    count: int = 1,
    kv_dtype: str = "bf16",
) -> float:
    """Shortest possible time of one decode step: max(memory time, compute time)."""
    bound = decode_bound(
        acc,
        model,
        batch=batch,
        context_tokens=context_tokens,
        dtype=dtype,
        count=count,
        kv_dtype=kv_dtype,
    )
    return batch / bound.tokens_per_s


def decode_tokens_per_s_bound(
    acc: Accelerator,
    model: ModelSpec,
    *,
    batch: int,
    context_tokens: int,
    dtype: str,
    count: int = 1,
    kv_dtype: str = "bf16",
) -> float:
    """Upper bound on decode tokens/s of one replica: batch / decode step time."""
    return decode_bound(
        acc,
        model,
        batch=batch,
        context_tokens=context_tokens,
        dtype=dtype,
        count=count,
        kv_dtype=kv_dtype,
    ).tokens_per_s


def prefill_seconds(
    acc: Accelerator, model: ModelSpec, *, tokens: int, dtype: str, count: int = 1
) -> float:
    """Shortest possible prefill of ``tokens`` prompt tokens: max(2*active*tokens/peak, weights/bw).

    Compute and the one weight read overlap (roofline), so the larger of the two is the bound.
    Needs the dense peak for ``dtype``; raises ``RooflineUnknownError`` when it is unknown.
    """
    _check(None, count)
    if tokens < 0:
        raise ConfigError(f"tokens must be >= 0, got {tokens}")
    peak, why = peak_flops(acc, dtype)
    if peak is None:
        raise RooflineUnknownError(f"no prefill bound for {model.id} on {acc.id}: {why}")
    compute = 2 * model.active_params_b * 1e9 * tokens / (count * peak)
    bw = _bandwidth(acc)
    read = 0.0 if bw is None else weight_bytes(model, dtype) / (count * bw)
    return max(compute, read)


def max_batch(
    acc: Accelerator,
    model: ModelSpec,
    *,
    context_tokens: int,
    dtype: str,
    count: int = 1,
    kv_dtype: str = "bf16",
) -> int | None:
    """Most sequences of ``context_tokens`` whose KV fits beside the weights; None if unknown.

    0 means the weights alone do not fit in ``count`` accelerators' memory.
    """
    _check(None, count)
    if context_tokens < 1:
        raise ConfigError(f"context_tokens must be >= 1 for a batch limit, got {context_tokens}")
    if acc.mem_gb is None:
        return None
    free = count * acc.mem_gb * 1e9 - weight_bytes(model, dtype)
    return max(0, int(free // kv_cache_bytes(model, context_tokens, kv_dtype)))


class Technique(StrEnum):
    """Serving techniques that change the dense roofline, so a claim above it is not judged."""

    speculative_decoding = "speculative-decoding"
    sparsity = "sparsity"
    lower_precision = "lower-precision"


class Plausibility(StrEnum):
    plausible = "plausible"
    implausible = "implausible"
    exceeds_declared = "exceeds-dense-bound-with-declared-technique"
    unknown = "unknown"


@dataclass(frozen=True)
class ThroughputCheck:
    """A tokens/s claim held against its roofline bound."""

    verdict: Plausibility
    claimed_tokens_per_s: float
    bound: Bound | None
    ratio: float | None  # claimed / bound
    explanation: str


def check_throughput_claim(
    claimed_tokens_per_s: float,
    acc: Accelerator,
    model: ModelSpec,
    *,
    dtype: str,
    count: int = 1,
    batch: int,
    context_tokens: int,
    techniques: frozenset[Technique] | set[Technique] = frozenset(),
    kv_dtype: str = "bf16",
) -> ThroughputCheck:
    """Is a claimed aggregate decode throughput within the roofline of the claimed hardware?

    ``count`` is every accelerator behind the claim, ``batch`` the total concurrency; both are
    treated as one replica, which bounds any split into replicas (see the module docstring).
    """
    if not claimed_tokens_per_s > 0:
        raise ConfigError(f"claimed tokens/s must be positive, got {claimed_tokens_per_s}")
    try:
        bound = decode_bound(
            acc,
            model,
            batch=batch,
            context_tokens=context_tokens,
            dtype=dtype,
            count=count,
            kv_dtype=kv_dtype,
        )
    except RooflineUnknownError as exc:
        return ThroughputCheck(
            Plausibility.unknown, claimed_tokens_per_s, None, None, exc.diagnostics()
        )
    ratio = claimed_tokens_per_s / bound.tokens_per_s
    head = (
        f"claimed {claimed_tokens_per_s:.4g} tok/s vs {bound.limit}-bound "
        f"{bound.tokens_per_s:.4g} tok/s ({ratio:.2f}x)"
    )
    if ratio <= 1.0:
        return ThroughputCheck(Plausibility.plausible, claimed_tokens_per_s, bound, ratio, head)
    if techniques:
        names = ", ".join(sorted(t.value for t in techniques))
        return ThroughputCheck(
            Plausibility.exceeds_declared,
            claimed_tokens_per_s,
            bound,
            ratio,
            f"{head}; above the dense bound but declares {names}, which changes it",
        )
    return ThroughputCheck(
        Plausibility.implausible,
        claimed_tokens_per_s,
        bound,
        ratio,
        f"{head}; above the physical bound with no declared technique",
    )
