"""NVIDIA: ``nvidia-smi --query-gpu`` CSV and the DCGM exporter's Prometheus text.

**nvidia-smi.** The agent runs exactly ``NVIDIA_SMI_COMMAND``::

    nvidia-smi --query-gpu=index,uuid,name,power.draw,utilization.gpu,memory.used,memory.total,\
temperature.gpu,total_energy_consumption,clocks.sm,clocks.mem --format=csv,noheader,nounits

One line per GPU, the fields in that order separated by ``", "`` (``nvidia-smi
--help-query-gpu`` documents each field and its unit): ``power.draw`` W, ``utilization.gpu`` %,
``memory.*`` MiB, ``temperature.gpu`` °C, ``total_energy_consumption`` mJ since the driver was
last reloaded (Volta and newer), ``clocks.*`` MHz. A field the GPU does not support prints
``[N/A]`` or ``[Not Supported]`` and reads as ``None``. Worked example (one H100)::

    0, GPU-5f3e..., NVIDIA H100 80GB HBM3, 312.45, 97, 71234, 81559, 61, 1234567890, 1980, 2619

reads as power 312.45 W, 97 %, 71234 MiB of 81559 MiB, 61 °C, 1234567.89 J, 1980/2619 MHz.

**DCGM exporter.** ``parse_dcgm_exporter`` reads the text a ``dcgm-exporter`` serves at
``/metrics`` (default port 9400) with ``prometheus_client``'s parser. Each sample carries the
labels ``gpu`` (index), ``UUID`` and ``modelName``; the fields read are those of the exporter's
``default-counters.csv`` with their documented units (``DCGM_FI_DEV_POWER_USAGE`` W,
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` mJ, ``DCGM_FI_DEV_GPU_UTIL`` %, ``DCGM_FI_DEV_FB_USED``
MiB, ``DCGM_FI_DEV_GPU_TEMP`` °C, ``DCGM_FI_DEV_SM_CLOCK``/``MEM_CLOCK`` MHz) and
``DCGM_FI_DEV_FB_TOTAL`` MiB where configured (total memory is not derived from ``FB_FREE``:
the framebuffer also has a reserved part). Samples with a non-empty ``GPU_I_ID`` label belong to
a MIG instance, not to the device, and are not read. Other metric families are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from inferaudit.errors import DataError, validation_message
from inferaudit.measure.telemetry._text import (
    MIB,
    bad,
    integer,
    optional_decimal,
    optional_mib_bytes,
)
from inferaudit.measure.telemetry.model import DeviceSample, Vendor

NVIDIA_SMI = "nvidia-smi"
NVIDIA_SMI_FIELDS = (
    "index",
    "uuid",
    "name",
    "power.draw",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "temperature.gpu",
    "total_energy_consumption",
    "clocks.sm",
    "clocks.mem",
)
NVIDIA_SMI_COMMAND = (
    NVIDIA_SMI,
    "--query-gpu=" + ",".join(NVIDIA_SMI_FIELDS),
    "--format=csv,noheader,nounits",
)

DCGM_EXPORTER = "dcgm-exporter"
_MJ_PER_J = 1000.0


def parse_nvidia_smi_csv(text: str) -> list[DeviceSample]:
    """The GPUs in ``NVIDIA_SMI_COMMAND``'s output, in its order; blank lines are skipped."""
    samples: list[DeviceSample] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        samples.append(_nvidia_smi_line(line_no, raw))
    _unique(NVIDIA_SMI, samples)
    return samples


def _nvidia_smi_line(line_no: int, raw: str) -> DeviceSample:
    values = [v.strip() for v in raw.split(",")]
    if len(values) != len(NVIDIA_SMI_FIELDS):
        raise bad(
            NVIDIA_SMI,
            line_no,
            f"expected {len(NVIDIA_SMI_FIELDS)} fields ({','.join(NVIDIA_SMI_FIELDS)}), "
            f"got {len(values)}",
        )
    got = dict(zip(NVIDIA_SMI_FIELDS, values, strict=True))
    uuid = got["uuid"]
    if not uuid.startswith(("GPU-", "MIG-")):
        raise bad(NVIDIA_SMI, line_no, f"uuid: {uuid!r} is not a GPU UUID")

    def num(name: str, *, signed: bool = False) -> float | None:
        return optional_decimal(NVIDIA_SMI, line_no, name, got[name], signed=signed)

    energy_mj = num("total_energy_consumption")
    return DeviceSample(
        device_id=uuid,
        vendor=Vendor.NVIDIA,
        tool=NVIDIA_SMI,
        index=integer(NVIDIA_SMI, line_no, "index", got["index"]),
        uuid=uuid,
        name=got["name"] or None,
        power_w=num("power.draw"),
        energy_j=None if energy_mj is None else energy_mj / _MJ_PER_J,
        utilisation_pct=_percent(NVIDIA_SMI, line_no, "utilization.gpu", num("utilization.gpu")),
        memory_used_bytes=optional_mib_bytes(
            NVIDIA_SMI, line_no, "memory.used", got["memory.used"]
        ),
        memory_total_bytes=optional_mib_bytes(
            NVIDIA_SMI, line_no, "memory.total", got["memory.total"]
        ),
        temperature_c=num("temperature.gpu", signed=True),
        sm_clock_mhz=num("clocks.sm"),
        memory_clock_mhz=num("clocks.mem"),
    )


def _percent(tool: str, line_no: int, name: str, value: float | None) -> float | None:
    if value is not None and value > 100:
        raise bad(tool, line_no, f"{name}: {value:g} is above 100 %")
    return value


# DCGM field -> the DeviceSample field it fills; the factor turns the exporter's unit into ours.
_DCGM_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_j", 1.0 / _MJ_PER_J),
    "DCGM_FI_DEV_GPU_UTIL": ("utilisation_pct", 1.0),
    "DCGM_FI_DEV_FB_USED": ("memory_used_bytes", float(MIB)),
    "DCGM_FI_DEV_FB_TOTAL": ("memory_total_bytes", float(MIB)),
    "DCGM_FI_DEV_GPU_TEMP": ("temperature_c", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_MEM_CLOCK": ("memory_clock_mhz", 1.0),
}


@dataclass
class _DcgmDevice:
    index: int
    name: str | None
    values: dict[str, float] = field(default_factory=dict)


def parse_dcgm_exporter(text: str) -> list[DeviceSample]:
    """The GPUs in a dcgm-exporter ``/metrics`` text, ordered by index."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise _dcgm_error(text, exc) from None
    devices: dict[str, _DcgmDevice] = {}
    for family in families:
        target = _DCGM_FIELDS.get(family.name)
        if target is None:
            continue
        attr, factor = target
        for sample in family.samples:
            labels = sample.labels
            if labels.get("GPU_I_ID", ""):
                continue  # a MIG instance's figure, not the device's
            uuid = labels.get("UUID", "")
            gpu = labels.get("gpu", "")
            if not uuid or not gpu.isdigit():
                raise DataError(
                    f"{DCGM_EXPORTER}: {family.name}: a sample lacks the UUID or gpu label"
                )
            device = devices.setdefault(uuid, _DcgmDevice(int(gpu), labels.get("modelName")))
            if attr in device.values:
                raise DataError(f"{DCGM_EXPORTER}: {family.name}: {uuid} appears twice")
            value = float(sample.value)
            if value != value or value in (float("inf"), float("-inf")):
                raise DataError(f"{DCGM_EXPORTER}: {family.name}: {uuid}: {value} is not finite")
            device.values[attr] = value * factor
    samples = [_dcgm_sample(uuid, device) for uuid, device in devices.items()]
    samples.sort(key=lambda s: (s.index is None, s.index))
    return samples


def _dcgm_sample(uuid: str, device: _DcgmDevice) -> DeviceSample:
    v = device.values
    used, total = v.get("memory_used_bytes"), v.get("memory_total_bytes")
    try:
        return DeviceSample(
            device_id=uuid,
            vendor=Vendor.NVIDIA,
            tool=DCGM_EXPORTER,
            index=device.index,
            uuid=uuid,
            name=device.name or None,
            power_w=v.get("power_w"),
            energy_j=v.get("energy_j"),
            utilisation_pct=v.get("utilisation_pct"),
            memory_used_bytes=None if used is None else round(used),
            memory_total_bytes=None if total is None else round(total),
            temperature_c=v.get("temperature_c"),
            sm_clock_mhz=v.get("sm_clock_mhz"),
            memory_clock_mhz=v.get("memory_clock_mhz"),
        )
    except ValueError as exc:
        raise DataError(f"{DCGM_EXPORTER}: {uuid}: {validation_message(exc)}") from None


def _dcgm_error(text: str, exc: ValueError) -> DataError:
    """Name the first line the Prometheus parser refuses on its own."""
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            list(text_string_to_metric_families(line + "\n"))
        except ValueError as line_exc:
            return bad(DCGM_EXPORTER, line_no, str(line_exc))
    return DataError(f"{DCGM_EXPORTER}: {exc}")


def _unique(tool: str, samples: list[DeviceSample]) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.device_id in seen:
            raise DataError(f"{tool}: device {sample.device_id} appears twice")
        seen.add(sample.device_id)
