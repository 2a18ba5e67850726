"""One accelerator's state as its vendor tool reported it: the typed sample every parser returns.

A ``DeviceSample`` is *operator-reported*: it is what a tool on the operator's host printed, never
a measurement of ours. Only the device's id and vendor are required; every other field is
``None`` where the tool does not report it (an ``[N/A]``, a column the model lacks). Units are
fixed here, whatever the tool printed: watts, joules, percent, bytes, degrees Celsius, MHz.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Vendor(StrEnum):
    """The accelerator's maker (not the tool's): the vendors inferaudit is about."""

    NVIDIA = "nvidia"
    HUAWEI_ASCEND = "huawei-ascend"
    CAMBRICON = "cambricon"
    METAX = "metax"
    MOORE_THREADS = "moore-threads"
    ENFLAME = "enflame"
    BIREN = "biren"
    KUNLUNXIN = "kunlunxin"
    ILUVATAR = "iluvatar"
    HYGON = "hygon"


class DeviceSample(BaseModel):
    """One device at one moment, as reported by ``tool``.

    - ``device_id``: stable within the tool (NVIDIA: the GPU UUID; Ascend: ``npu<N>-chip<C>``).
    - ``index``: the index the runtime uses for the device (``CUDA_VISIBLE_DEVICES`` order...).
    - ``energy_j``: a cumulative counter (NVIDIA: since the driver was loaded), only where the
      tool reports one; deltas of it are energy, its absolute value means nothing.
    - ``utilisation_pct``: the tool's own busy figure (NVIDIA: share of time a kernel ran;
      Ascend: AI Core use) — not comparable across vendors.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    device_id: str = Field(min_length=1)
    vendor: Vendor
    tool: str | None = None
    index: int | None = Field(default=None, ge=0)
    uuid: str | None = None
    name: str | None = None
    power_w: float | None = Field(default=None, ge=0)
    energy_j: float | None = Field(default=None, ge=0)
    utilisation_pct: float | None = Field(default=None, ge=0, le=100)
    memory_used_bytes: int | None = Field(default=None, ge=0)
    memory_total_bytes: int | None = Field(default=None, ge=0)
    temperature_c: float | None = None
    sm_clock_mhz: float | None = Field(default=None, ge=0)
    memory_clock_mhz: float | None = Field(default=None, ge=0)
