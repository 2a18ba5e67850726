"""Roofline bounds: known values and the plausibility verdicts they give."""

from __future__ import annotations

import pytest

from inferaudit.errors import ConfigError
from inferaudit.intent import catalog, roofline
from inferaudit.intent.catalog import ModelSpec
from inferaudit.intent.roofline import Plausibility, RooflineUnknownError, Technique

H100 = catalog.accelerator("H100-SXM")
LLAMA8 = catalog.model("llama-3.1-8b")
EIGHT_B = ModelSpec(
    id="8b",
    name="8B",
    params_b=8.0,
    active_params_b=8.0,
    layers=32,
    hidden=4096,
    kv_heads=8,
    head_dim=128,
    default_dtype="fp16",
    source="test",
)


def test_h100_8b_fp16_batch1_is_209_tokens_per_s() -> None:
    # 3.35e12 B/s / 16e9 B = 209.375 tokens/s
    bound = roofline.decode_tokens_per_s_bound(
        H100, EIGHT_B, batch=1, context_tokens=0, dtype="fp16"
    )
    assert bound == pytest.approx(209.375, rel=1e-12)
    # the real Llama 3.1 8B has 8.03e9 parameters: 3.35e12 / 16.06e9
    real = roofline.decode_tokens_per_s_bound(H100, LLAMA8, batch=1, context_tokens=0, dtype="fp16")
    assert real == pytest.approx(3.35e12 / 16.06e9, rel=1e-12)


def test_claim_of_240_is_implausible_and_200_plausible() -> None:
    check = roofline.check_throughput_claim(
        240, H100, EIGHT_B, dtype="fp16", batch=1, context_tokens=0
    )
    assert check.verdict is Plausibility.implausible
    assert check.ratio == pytest.approx(240 / 209.375)
    assert check.bound is not None and check.bound.limit == "memory"
    assert any("3350 GB/s" in a for a in check.bound.assumptions)
    ok = roofline.check_throughput_claim(
        200, H100, EIGHT_B, dtype="fp16", batch=1, context_tokens=0
    )
    assert ok.verdict is Plausibility.plausible


def test_declared_technique_exempts_the_claim() -> None:
    check = roofline.check_throughput_claim(
        240,
        H100,
        EIGHT_B,
        dtype="fp16",
        batch=1,
        context_tokens=0,
        techniques={Technique.speculative_decoding},
    )
    assert check.verdict is Plausibility.exceeds_declared
    assert "speculative-decoding" in check.explanation


def test_kv_bytes() -> None:
    # 2 * 32 layers * 8 heads * 128 dim * 2 bytes
    assert roofline.kv_bytes_per_token(LLAMA8) == 131072
    assert roofline.kv_bytes_per_token(LLAMA8, "fp8") == 65536
    # MLA: 61 layers * 576 values * 2 bytes
    assert roofline.kv_bytes_per_token(catalog.model("deepseek-v3")) == 70272
    assert roofline.kv_cache_bytes(LLAMA8, 1000) == 131072 * 1000
    # gpt-oss-120b: 18 full layers keep 1000 tokens, 18 sliding layers keep 128
    oss = catalog.model("gpt-oss-120b")
    per_layer = 2 * 8 * 64 * 2
    assert roofline.kv_cache_bytes(oss, 1000) == per_layer * (18 * 1000 + 18 * 128)


def test_decode_step_memory_and_compute() -> None:
    # batch 64 with 1000 tokens of context each, 2 GPUs
    step = roofline.decode_step_seconds(
        H100, EIGHT_B, batch=64, context_tokens=1000, dtype="fp16", count=2
    )
    memory = (16e9 + 64 * 1000 * 131072) / (2 * 3.35e12)
    compute = 2 * 8e9 * 64 / (2 * 989.4e12)
    assert step == pytest.approx(max(memory, compute), rel=1e-12)
    # a huge batch with no context becomes compute bound
    bound = roofline.decode_bound(H100, EIGHT_B, batch=4096, context_tokens=0, dtype="fp8")
    assert bound.limit == "compute"
    assert bound.tokens_per_s == pytest.approx(1979e12 / (2 * 8e9), rel=1e-12)


def test_moe_reads_only_active_weights() -> None:
    ds = catalog.model("deepseek-v3")
    h200 = catalog.accelerator("H200-SXM")
    bound = roofline.decode_tokens_per_s_bound(h200, ds, batch=1, context_tokens=0, dtype="fp8")
    assert bound == pytest.approx(4.8e12 / 37e9, rel=1e-12)


def test_prefill_is_compute_or_weight_read() -> None:
    t = roofline.prefill_seconds(H100, EIGHT_B, tokens=2048, dtype="bf16")
    assert t == pytest.approx(2 * 8e9 * 2048 / 989.4e12, rel=1e-12)
    one = roofline.prefill_seconds(H100, EIGHT_B, tokens=1, dtype="bf16")
    assert one == pytest.approx(16e9 / 3.35e12, rel=1e-12)


def test_missing_figures_are_never_guessed() -> None:
    ascend = catalog.accelerator("Ascend-910C")  # bandwidth known, bf16 peak unknown
    bound = roofline.decode_bound(ascend, EIGHT_B, batch=1, context_tokens=0, dtype="bf16")
    assert bound.compute_s is None
    assert bound.tokens_per_s == pytest.approx(3.2e12 / 16e9)
    assert any("not published" in a for a in bound.assumptions)
    with pytest.raises(RooflineUnknownError, match="fp8_tflops is unsupported"):
        roofline.prefill_seconds(ascend, EIGHT_B, tokens=10, dtype="fp8")
    blank = catalog.accelerator("Enflame-L600")
    with pytest.raises(RooflineUnknownError, match="bandwidth and peak unknown"):
        roofline.decode_bound(blank, EIGHT_B, batch=1, context_tokens=0, dtype="bf16")
    check = roofline.check_throughput_claim(
        1e6, blank, EIGHT_B, dtype="bf16", batch=1, context_tokens=0
    )
    assert check.verdict is Plausibility.unknown


def test_max_batch() -> None:
    # (80e9 - 16e9) // (2048 * 131072)
    assert roofline.max_batch(H100, EIGHT_B, context_tokens=2048, dtype="fp16") == 238
    assert (
        roofline.max_batch(H100, catalog.model("llama-3.1-405b"), context_tokens=1, dtype="bf16")
        == 0
    )


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="unknown precision 'fp6'"):
        roofline.weight_bytes(EIGHT_B, "fp6")
    with pytest.raises(ConfigError, match="batch must be >= 1"):
        roofline.decode_bound(H100, EIGHT_B, batch=0, context_tokens=0, dtype="fp16")


def test_four_bit_formats_use_the_eight_bit_peak() -> None:
    oss = catalog.model("gpt-oss-120b")
    peak, why = roofline.peak_flops(H100, "mxfp4")
    assert peak == 1979e12 and "fp8_tflops" in why
    assert roofline.peak_flops(H100, "int4")[0] == 1979e12
    assert roofline.peak_flops(H100, "fp32") == (None, "the catalog has no fp32 peak column")
    # weights read per step: 5.1e9 active params x 4.25 bits
    bound = roofline.decode_bound(H100, oss, batch=1, context_tokens=0, dtype="mxfp4")
    assert bound.tokens_per_s == pytest.approx(3.35e12 / (5.1e9 * 0.53125), rel=1e-12)
