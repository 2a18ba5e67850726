"""Operator-reported figures: energy per output token, tokens/s per device, utilisation.

Every figure here rests on what the operator's tools reported (``DeviceSample``s) and is
**operator-reported**: it is shown beside the measured figures, never raises or replaces one.
Inputs: ``(t_ns, sample)`` pairs stamped by the scraper's clock, the measurement window
``(start_ns, end_ns)`` of that same clock, the output tokens the client received in it, and the
number of devices serving (``None``: the devices seen in the telemetry).

Definitions, per device (its samples ordered by time, a quantity's missing values skipped):

1. **Covered span**: the part of the window between the device's first and last sample of the
   quantity (at least two samples needed). Values inside the window are linearly interpolated
   between neighbouring samples, so samples just outside the window bound it exactly.
2. **Energy**, from the cumulative energy counter when the device reports one: its
   interpolated value at the span's end minus at its start (``ENERGY_COUNTER``). Without a
   counter, or when the counter goes backwards (a driver reload), the trapezoid integral of
   power over the span (``POWER_TRAPEZOID``). When the span is shorter than the window, the
   energy is scaled by ``window / span`` (mean power over the span times the window) and
   ``coverage`` says by how much.
3. **Mean utilisation**: the time-weighted mean of the tool's utilisation over the span
   (trapezoid integral / span).

Over the run: energy per output token = the devices' energy summed / output tokens (only when
every device has an energy figure); tokens/s per device = output tokens / window seconds /
devices; mean utilisation = the mean of the devices' means.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from inferaudit.measure.telemetry.model import DeviceSample, Vendor

_NS_PER_S = 1e9


class EnergyMethod(StrEnum):
    ENERGY_COUNTER = "energy-counter"
    POWER_TRAPEZOID = "power-trapezoid"
    MIXED = "energy-counter+power-trapezoid"


class DeviceReported(BaseModel):
    """One device's operator-reported figures over the window (``None``: not enough samples)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str
    vendor: Vendor
    samples: int  # this device's samples used: inside the window, or bounding it
    operator_reported_energy_j: float | None
    operator_reported_energy_method: EnergyMethod | None
    operator_reported_energy_coverage: float | None  # covered span / window, in (0, 1]
    operator_reported_mean_utilisation_pct: float | None
    note: str | None = None


class Reported(BaseModel):
    """The run's operator-reported figures; each field's name says it is operator-reported."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float
    output_tokens: int
    operator_reported_devices: int
    operator_reported_energy_j: float | None
    operator_reported_energy_per_output_token_j: float | None
    operator_reported_energy_method: EnergyMethod | None
    operator_reported_tokens_per_s_per_device: float | None
    operator_reported_mean_utilisation_pct: float | None
    per_device: tuple[DeviceReported, ...]
    note: str | None = None


Point = tuple[int, float]


def reported_figures(
    samples: Sequence[tuple[int, DeviceSample]],
    window_ns: tuple[int, int],
    output_tokens: int,
    devices: int | None = None,
) -> Reported:
    """The operator-reported figures of one measurement window (see the module docstring)."""
    start, end = window_ns
    assert end > start, "the window is the run's, which has a positive length"
    assert output_tokens >= 0 and (devices is None or devices > 0)
    by_device: dict[str, list[tuple[int, DeviceSample]]] = {}
    for t, sample in sorted(samples, key=lambda p: p[0]):
        by_device.setdefault(sample.device_id, []).append((t, sample))
    per_device = tuple(_device(points, start, end) for _, points in sorted(by_device.items()))
    per_device = tuple(d for d in per_device if d.samples > 0)
    count = devices if devices is not None else len(per_device)
    window_s = (end - start) / _NS_PER_S
    energies = [d.operator_reported_energy_j for d in per_device]
    methods = {d.operator_reported_energy_method for d in per_device}
    energy = sum(e for e in energies if e is not None) if per_device else None
    note = None
    if per_device and None in energies:
        missing = [d.device_id for d in per_device if d.operator_reported_energy_j is None]
        note = f"no energy figure for {', '.join(missing)}: energy per token not given"
        energy = None
    method = None
    if energy is not None:
        method = methods.pop() if len(methods) == 1 else EnergyMethod.MIXED
    utils = [
        d.operator_reported_mean_utilisation_pct
        for d in per_device
        if d.operator_reported_mean_utilisation_pct is not None
    ]
    return Reported(
        window_s=window_s,
        output_tokens=output_tokens,
        operator_reported_devices=count,
        operator_reported_energy_j=energy,
        operator_reported_energy_per_output_token_j=(
            energy / output_tokens if energy is not None and output_tokens > 0 else None
        ),
        operator_reported_energy_method=method,
        operator_reported_tokens_per_s_per_device=(
            output_tokens / window_s / count if count > 0 else None
        ),
        operator_reported_mean_utilisation_pct=sum(utils) / len(utils) if utils else None,
        per_device=per_device,
        note=note,
    )


def _device(points: list[tuple[int, DeviceSample]], start: int, end: int) -> DeviceReported:
    first = points[0][1]
    used = _bounding(points, start, end)
    window = end - start

    def series(get: Callable[[DeviceSample], float | None]) -> list[Point]:
        return [(t, v) for t, s in used if (v := get(s)) is not None]

    energy_series = series(lambda s: s.energy_j)
    power_series = series(lambda s: s.power_w)
    note = None
    energy: tuple[float, int] | None = None
    method: EnergyMethod | None = None
    if len(energy_series) >= 2:
        if all(b[1] >= a[1] for a, b in itertools.pairwise(energy_series)):
            energy = _counter_delta(energy_series, start, end)
            method = EnergyMethod.ENERGY_COUNTER
        else:
            note = "the energy counter went backwards (driver reload?): power integrated instead"
    if energy is None and len(power_series) >= 2:
        energy = _integral(power_series, start, end)
        method = EnergyMethod.POWER_TRAPEZOID
    if energy is None:
        method = None
    util_series = series(lambda s: s.utilisation_pct)
    util = _integral(util_series, start, end) if len(util_series) >= 2 else None
    energy_j = coverage = None
    if energy is not None and energy[1] > 0:
        energy_j, coverage = energy[0] * window / energy[1], energy[1] / window
    else:
        method = None
    return DeviceReported(
        device_id=first.device_id,
        vendor=first.vendor,
        samples=len(used),
        operator_reported_energy_j=energy_j,
        operator_reported_energy_method=method,
        operator_reported_energy_coverage=coverage,
        operator_reported_mean_utilisation_pct=(
            util[0] / (util[1] / _NS_PER_S) if util is not None and util[1] > 0 else None
        ),
        note=note,
    )


def _bounding(
    points: list[tuple[int, DeviceSample]], start: int, end: int
) -> list[tuple[int, DeviceSample]]:
    """The samples inside [start, end], plus the last one before and the first one after where
    no sample falls on that bound (they are needed to interpolate at it)."""
    inside = [p for p in points if start <= p[0] <= end]
    at_start = bool(inside) and inside[0][0] == start
    at_end = bool(inside) and inside[-1][0] == end
    before = [] if at_start else [p for p in points if p[0] < start][-1:]
    after = [] if at_end else [p for p in points if p[0] > end][:1]
    return before + inside + after


def _at(series: list[Point], t: float) -> float:
    """The piecewise-linear value at ``t`` (``t`` within the series' span)."""
    for (t0, v0), (t1, v1) in itertools.pairwise(series):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    raise AssertionError("t lies within the series' span or the caller has a bug")


def _clip(series: list[Point], start: int, end: int) -> tuple[int, int] | None:
    lo, hi = max(start, series[0][0]), min(end, series[-1][0])
    return (lo, hi) if hi > lo else None


def _counter_delta(series: list[Point], start: int, end: int) -> tuple[float, int] | None:
    """(counter increase over the covered span, the span in ns)."""
    span = _clip(series, start, end)
    if span is None:
        return None
    lo, hi = span
    return _at(series, hi) - _at(series, lo), hi - lo


def _integral(series: list[Point], start: int, end: int) -> tuple[float, int] | None:
    """(trapezoid integral in value·s over the covered span, the span in ns)."""
    span = _clip(series, start, end)
    if span is None:
        return None
    lo, hi = span
    knots = [lo, *(t for t, _ in series if lo < t < hi), hi]
    total = 0.0
    for a, b in itertools.pairwise(knots):
        total += (_at(series, a) + _at(series, b)) / 2 * (b - a) / _NS_PER_S
    return total, hi - lo
