"""Accelerators and models: the one description of hardware and model shape in the code.

Accelerators come from ``data/accelerators.csv`` (published peak figures, each row with its
source and source class). A figure the sources do not give stays ``None``: ``unknown`` and ``-``
mean "not published", ``unsupported`` means "the part has no such mode" (kept apart in
``Accelerator.unsupported`` so an explanation can say which). Peaks are dense (no sparsity).

Models come from ``data/models.csv``: values from each model card's ``config.json``. MoE models
carry their active parameters; DeepSeek's MLA models carry ``mla_kv_dim`` (values cached per
token per layer, replacing ``2 * kv_heads * head_dim``); gpt-oss carries its sliding-window
layers. The roofline (``roofline.py``) and the twin read these, and nothing else.
"""

from __future__ import annotations

import csv
import difflib
import functools
import re
from dataclasses import dataclass
from importlib import resources

from inferaudit.errors import ConfigError

# Bytes per parameter of a weight format. mxfp4 is 4-bit values plus one 8-bit scale per block
# of 32 (OCP Microscaling spec): 4.25 bits.
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "mxfp4": 4.25 / 8,
}

_MISSING = frozenset({"", "-", "unknown", "n/a"})
_UNSUPPORTED = "unsupported"

# Stable slugs and aliases for the rows of accelerators.csv, keyed by (vendor, model) as written
# there. The "vendor/part" aliases are the keys the seed claims use.
_ACCELERATOR_IDS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("NVIDIA", "H100 SXM5 80GB"): ("H100-SXM", ("H100", "H100-SXM5", "nvidia/h100")),
    ("NVIDIA", "H200 SXM 141GB"): ("H200-SXM", ("H200", "nvidia/h200")),
    ("NVIDIA", "H20 (HGX)"): ("H20", ("nvidia/h20",)),
    ("NVIDIA", "B200 (HGX/DGX 1000W)"): ("B200", ("nvidia/b200",)),
    ("NVIDIA", "A100 SXM4 80GB"): ("A100-SXM-80GB", ("A100", "A100-SXM", "nvidia/a100")),
    ("NVIDIA", "L20 PCIe 48GB"): ("L20", ("nvidia/l20",)),
    ("Huawei", "Ascend 910B2"): ("Ascend-910B2", ("huawei/ascend-910b2",)),
    ("Huawei", "Ascend 910B3"): ("Ascend-910B3", ("huawei/ascend-910b3",)),
    ("Huawei", "Ascend 910B4"): ("Ascend-910B4", ("huawei/ascend-910b4",)),
    ("Huawei", "Ascend 910C"): ("Ascend-910C", ("910C", "huawei/ascend-910c")),
    ("Huawei", "Atlas 300I Duo (2x Ascend 310P)"): (
        "Atlas-300I-Duo",
        ("huawei/atlas-300i-duo",),
    ),
    ("Huawei", "Ascend 950PR (announced)"): ("Ascend-950PR", ("huawei/ascend-950pr",)),
    ("Huawei", "Ascend 950DT (announced)"): ("Ascend-950DT", ("huawei/ascend-950dt",)),
    ("Cambricon", "MLU370-X8"): ("MLU370-X8", ("cambricon/mlu370-x8",)),
    ("Cambricon", "MLU590"): ("MLU590", ("cambricon/mlu590",)),
    ("Alibaba T-Head", "Hanguang 800"): ("Hanguang-800", ("alibaba-thead/hanguang-800",)),
    ("Alibaba T-Head", "PPU (Zhenwu 810E)"): (
        "T-Head-PPU",
        ("PPU", "Zhenwu-810E", "alibaba-thead/ppu"),
    ),
    ("MetaX", "C500 (OAM)"): ("MetaX-C500", ("C500", "metax/c500")),
    ("MetaX", "C550 64GB (OAM)"): ("MetaX-C550", ("C550", "metax/c550")),
    ("MetaX", "N260"): ("MetaX-N260", ("metax/n260",)),
    ("Biren", "BR100 (OAM)"): ("Biren-BR100", ("BR100", "biren/br100")),
    ("Biren", "BR104 (PCIe)"): ("Biren-BR104", ("BR104", "biren/br104")),
    ("Biren", "BR166"): ("Biren-BR166", ("biren/br166",)),
    ("Moore Threads", "MTT S4000"): ("MTT-S4000", ("moore-threads/s4000",)),
    ("Moore Threads", "MTT S5000"): ("MTT-S5000", ("moore-threads/s5000",)),
    ("Enflame", "CloudBlazer i20"): ("Enflame-i20", ("enflame/i20",)),
    ("Enflame", "S60"): ("Enflame-S60", ("enflame/s60",)),
    ("Enflame", "L600"): ("Enflame-L600", ("enflame/l600",)),
    ("Kunlunxin (Baidu)", "P800"): ("Kunlunxin-P800", ("P800", "kunlunxin/p800")),
    ("Hygon", "DCU K100"): ("Hygon-K100", ("hygon/k100",)),
    ("Hygon", "DCU Z100"): ("Hygon-Z100", ("hygon/z100",)),
    ("Iluvatar CoreX", "TianGai 150 (BI-V150)"): ("Iluvatar-BI-V150", ("iluvatar/bi-v150",)),
    ("Sunrise (Xiwang)", "S1/S2/S3"): ("Sunrise-S3", ("sunrise/s3", "sunrise/s1-s3")),
}


@dataclass(frozen=True)
class Accelerator:
    """Published dense peak figures of one accelerator (per card as sold); ``None`` = unknown."""

    id: str
    vendor: str
    name: str
    year: int | None
    bf16_tflops: float | None
    int8_tops: float | None
    fp8_tflops: float | None
    mem_gb: float | None
    mem_type: str | None
    mem_bw_gbs: float | None
    tdp_w: float | None
    source: str
    source_class: str
    aliases: tuple[str, ...] = ()
    unsupported: frozenset[str] = frozenset()  # columns the part has no mode for, e.g. fp8_tflops


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a transformer as its ``config.json`` states it. Parameters in billions."""

    id: str
    name: str
    params_b: float
    active_params_b: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    default_dtype: str
    source: str
    mla_kv_dim: int | None = None  # MLA: values cached per token per layer (one latent, no K/V)
    sliding_window: int | None = None  # tokens seen by a sliding-window layer
    sliding_layers: int = 0  # how many of ``layers`` use the sliding window
    aliases: tuple[str, ...] = ()


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _num(text: str, column: str, row: int) -> float | None:
    value = text.strip()
    if value.lower() in _MISSING or value.lower() == _UNSUPPORTED:
        return None
    try:
        return float(value)
    except ValueError:
        raise AssertionError(f"accelerators.csv row {row}: {column}={value!r}") from None


def _text(value: str) -> str | None:
    return None if value.strip().lower() in _MISSING else value.strip()


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("inferaudit.data").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


_ACC_NUMERIC = (
    "bf16_tflops_dense",
    "int8_tops",
    "fp8_tflops",
    "mem_gb",
    "mem_bw_gbs",
    "tdp_w",
)


@functools.cache
def accelerators() -> list[Accelerator]:
    """Every accelerator of the catalog, in file order."""
    out: list[Accelerator] = []
    for n, row in enumerate(_read_csv("accelerators.csv"), start=2):
        vendor, name = row["vendor"].strip(), row["model"].strip()
        slug, aliases = _ACCELERATOR_IDS.get(
            (vendor, name), (re.sub(r"[^A-Za-z0-9]+", "-", f"{vendor} {name}").strip("-"), ())
        )
        nums = {c: _num(row[c], c, n) for c in _ACC_NUMERIC}
        unsupported = frozenset(
            ("bf16_tflops" if c == "bf16_tflops_dense" else c)
            for c in _ACC_NUMERIC
            if row[c].strip().lower() == _UNSUPPORTED
        )
        year = _num(row["year"], "year", n)
        out.append(
            Accelerator(
                id=slug,
                vendor=vendor,
                name=name,
                year=None if year is None else int(year),
                bf16_tflops=nums["bf16_tflops_dense"],
                int8_tops=nums["int8_tops"],
                fp8_tflops=nums["fp8_tflops"],
                mem_gb=nums["mem_gb"],
                mem_type=_text(row["mem_type"]),
                mem_bw_gbs=nums["mem_bw_gbs"],
                tdp_w=nums["tdp_w"],
                source=row["source"].strip(),
                source_class=row["source_class"].strip(),
                aliases=aliases,
                unsupported=unsupported,
            )
        )
    return out


def _int_or_none(value: str) -> int | None:
    return int(value) if value.strip() else None


@functools.cache
def models() -> list[ModelSpec]:
    """Every model of the catalog, in file order."""
    out: list[ModelSpec] = []
    for row in _read_csv("models.csv"):
        out.append(
            ModelSpec(
                id=row["id"],
                name=row["name"],
                params_b=float(row["params_b"]),
                active_params_b=float(row["active_params_b"]),
                layers=int(row["layers"]),
                hidden=int(row["hidden"]),
                kv_heads=int(row["kv_heads"]),
                head_dim=int(row["head_dim"]),
                default_dtype=row["default_dtype"],
                source=row["source"],
                mla_kv_dim=_int_or_none(row["mla_kv_dim"]),
                sliding_window=_int_or_none(row["sliding_window"]),
                sliding_layers=int(row["sliding_layers"] or 0),
                aliases=tuple(a for a in row["aliases"].split(";") if a),
            )
        )
        spec = out[-1]
        assert spec.default_dtype in BYTES_PER_PARAM, spec
        assert 0 < spec.active_params_b <= spec.params_b, spec
        assert 0 <= spec.sliding_layers <= spec.layers, spec
    return out


def _index(items: list[Accelerator] | list[ModelSpec]) -> dict[str, Accelerator | ModelSpec]:
    index: dict[str, Accelerator | ModelSpec] = {}
    for item in items:
        names = [item.id, *item.aliases]
        if isinstance(item, Accelerator):
            names += [item.name, f"{item.vendor} {item.name}"]
        else:
            names.append(item.name)
        for name in names:
            k = _key(name)
            assert index.get(k, item) is item, f"catalog name {name!r} is ambiguous"
            index[k] = item
    return index


@functools.cache
def _acc_index() -> dict[str, Accelerator | ModelSpec]:
    return _index(accelerators())


@functools.cache
def _model_index() -> dict[str, Accelerator | ModelSpec]:
    return _index(models())


def _lookup(
    kind: str, ident: str, index: dict[str, Accelerator | ModelSpec], ids: list[str]
) -> Accelerator | ModelSpec:
    found = index.get(_key(ident))
    if found is not None:
        return found
    close = difflib.get_close_matches(ident, ids, n=3, cutoff=0.4) or difflib.get_close_matches(
        ident.lower(), [i.lower() for i in ids], n=3, cutoff=0.4
    )
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(ids)}"
    raise ConfigError(f"unknown {kind} {ident!r}{hint}")


def accelerator(ident: str) -> Accelerator:
    """Look an accelerator up by id, alias or name (case and punctuation ignored)."""
    found = _lookup("accelerator", ident, _acc_index(), [a.id for a in accelerators()])
    assert isinstance(found, Accelerator)
    return found


def model(ident: str) -> ModelSpec:
    """Look a model up by id, alias (e.g. a Hugging Face repo id) or name."""
    found = _lookup("model", ident, _model_index(), [m.id for m in models()])
    assert isinstance(found, ModelSpec)
    return found
