"""Catalog: accelerators from the CSV (unknown stays None), models from config.json values."""

from __future__ import annotations

import pytest

from inferaudit.errors import ConfigError
from inferaudit.intent import catalog


def test_h100_figures_as_published() -> None:
    h100 = catalog.accelerator("H100-SXM")
    assert (h100.vendor, h100.name, h100.year) == ("NVIDIA", "H100 SXM5 80GB", 2022)
    assert h100.bf16_tflops == 989.4
    assert h100.fp8_tflops == 1979.0
    assert h100.int8_tops == 1979.0
    assert h100.mem_gb == 80.0
    assert h100.mem_bw_gbs == 3350.0
    assert h100.tdp_w == 700.0
    assert h100.mem_type == "HBM3"


def test_unknown_stays_unknown_and_unsupported_is_kept_apart() -> None:
    ascend = catalog.accelerator("ascend-910c")
    assert ascend.bf16_tflops is None  # "unknown" in the CSV
    assert ascend.fp8_tflops is None  # "unsupported"
    assert "fp8_tflops" in ascend.unsupported
    assert "bf16_tflops" not in ascend.unsupported
    assert ascend.mem_bw_gbs == 3200.0
    ppu = catalog.accelerator("alibaba-thead/ppu")
    assert ppu.id == "T-Head-PPU"
    assert (ppu.mem_gb, ppu.mem_bw_gbs, ppu.bf16_tflops) == (96.0, None, None)
    blank = catalog.accelerator("Enflame-L600")
    assert (blank.year, blank.mem_gb, blank.mem_type, blank.tdp_w) == (None, None, None, None)


@pytest.mark.parametrize(
    ("name", "ident"),
    [
        ("h100", "H100-SXM"),
        ("NVIDIA H100 SXM5 80GB", "H100-SXM"),
        ("h200_sxm", "H200-SXM"),
        ("huawei/ascend-910c", "Ascend-910C"),
        ("metax/c500", "MetaX-C500"),
        ("sunrise/s3", "Sunrise-S3"),
    ],
)
def test_accelerator_aliases(name: str, ident: str) -> None:
    assert catalog.accelerator(name).id == ident


def test_every_csv_row_has_a_unique_id() -> None:
    ids = [a.id for a in catalog.accelerators()]
    assert len(ids) == 33
    assert len(set(ids)) == len(ids)
    assert all(a.source for a in catalog.accelerators())


def test_unknown_accelerator_names_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"unknown accelerator 'H10 SXM'; did you mean H100-SXM"):
        catalog.accelerator("H10 SXM")


def test_models_from_config_json() -> None:
    llama = catalog.model("meta-llama/Llama-3.1-8B-Instruct")
    assert llama.id == "llama-3.1-8b"
    assert (llama.layers, llama.hidden, llama.kv_heads, llama.head_dim) == (32, 4096, 8, 128)
    assert llama.params_b == llama.active_params_b == 8.03
    ds = catalog.model("DeepSeek-V3")
    assert (ds.params_b, ds.active_params_b, ds.layers, ds.mla_kv_dim) == (671.0, 37.0, 61, 576)
    assert ds.default_dtype == "fp8"
    oss = catalog.model("openai/gpt-oss-120b")
    assert (oss.active_params_b, oss.sliding_window, oss.sliding_layers) == (5.1, 128, 18)
    assert {m.id for m in catalog.models()} >= {
        "llama-3.1-8b",
        "llama-3.1-70b",
        "llama-3.1-405b",
        "qwen2.5-7b",
        "qwen2.5-72b",
        "qwen3-8b",
        "qwen3-235b-a22b",
        "deepseek-v3",
        "deepseek-r1",
        "gpt-oss-20b",
        "gpt-oss-120b",
    }


def test_unknown_model() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'llama-3.1-9b'; did you mean"):
        catalog.model("llama-3.1-9b")


def test_bytes_per_param() -> None:
    assert catalog.BYTES_PER_PARAM["fp16"] == 2.0
    assert catalog.BYTES_PER_PARAM["int4"] == 0.5
    assert catalog.BYTES_PER_PARAM["mxfp4"] == 0.53125
