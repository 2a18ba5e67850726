"""One JSON line per scrape of a side endpoint (server ``/metrics``, a telemetry agent).

``server-metrics.jsonl`` holds ``measure.server_metrics.ServerSample`` lines;
``telemetry.jsonl`` holds :class:`TelemetrySample` lines (``devices``: the ``DeviceSample``
list an ``inferaudit agent``'s ``GET /samples`` answered, read by ``telemetry.parse_agent``).

Every line of ``server-metrics.jsonl`` and ``telemetry.jsonl`` starts with the same envelope
(:class:`ScrapeLine`) and adds the fields of what the scrape's parser returned::

    {"t_ns": -2301000, "span_ns": 1200000, "phase": "before", "ok": true, "error": null, ...}

  t_ns     when the GET started, integer ns on the run's epoch clock (``perf_counter_ns`` minus
           ``LoadResult.epoch_ns``: the clock of ``records.jsonl``); negative before the epoch
  span_ns  how long the GET took: the server read its values somewhere in
           ``[t_ns, t_ns + span_ns]``
  phase    "before" (one sample right before the load), "during" (every interval while the
           load runs, from the "before" sample on, so some may precede the epoch while the
           workers start), "after" (one sample right after the load, before the audit block)
  ok       the GET answered 200 and its body parsed; else ``error`` holds one line saying why
           and the parser's fields keep their defaults

Lines are in the order taken, so ``t_ns`` never decreases. The values are what the other side
*reported*: recorded beside the client's measurements, never one of them. A final line without
its newline (a write cut short) is ignored, as ``records.jsonl``'s reader does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferaudit.errors import DataError
from inferaudit.measure.records import whole_lines
from inferaudit.measure.telemetry.agent_wire import parse_agent
from inferaudit.measure.telemetry.model import DeviceSample

__all__ = [
    "Phase",
    "ScrapeLine",
    "TelemetryReading",
    "TelemetrySample",
    "read_lines",
    "read_telemetry",
    "telemetry_reading",
]

Phase = Literal["before", "during", "after"]


class ScrapeLine(BaseModel):
    """The envelope every scrape line carries; subclasses add the parser's fields (with
    defaults, so a failed scrape's line reads back)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    t_ns: int
    span_ns: int = Field(ge=0)
    phase: Phase
    ok: bool
    error: str | None = None

    def to_line(self) -> bytes:
        """The line as written: compact JSON and a newline."""
        return orjson.dumps(self.model_dump(mode="json")) + b"\n"


L = TypeVar("L", bound=ScrapeLine)


def read_lines(path: Path, model: type[L]) -> list[L]:
    """Every whole line of ``path`` as ``model``; a malformed line is a ``DataError`` naming
    ``path:line``. A missing file is a ``DataError`` too (the caller knows whether one is due)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    out: list[L] = []
    for number, line in whole_lines(data):
        try:
            out.append(model.model_validate(orjson.loads(line)))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise DataError(f"{path}:{number}: bad {model.__name__} line: {first}") from None
    return out


class TelemetryReading(BaseModel):
    """What one agent scrape gave: the parser's fields of a ``TelemetrySample`` line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: tuple[DeviceSample, ...] = ()


def telemetry_reading(text: str) -> TelemetryReading:
    """An agent's ``GET /samples`` answer as a reading (``DataError`` when malformed)."""
    return TelemetryReading(devices=tuple(parse_agent(text)))


class TelemetrySample(ScrapeLine):
    """One line of ``telemetry.jsonl``: the envelope and the devices the agent reported (none
    when ``ok`` is false). Operator-reported, never measured."""

    devices: tuple[DeviceSample, ...] = ()


def read_telemetry(path: Path) -> list[TelemetrySample]:
    """Every sample of a ``telemetry.jsonl`` in order (a torn last line ignored)."""
    return read_lines(path, TelemetrySample)
