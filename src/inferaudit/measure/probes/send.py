"""Sending a separate audit phase (conformance probes before the load, the supplementary
``audit`` block after it) through the load runner, exactly as the load is sent.

Every record is appended to the run's ``records.jsonl`` under its plan's phase, so the evidence
holds every request the checks made; ``metrics`` counts only ``measure``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from inferaudit.errors import EndpointError
from inferaudit.measure.load.client import check_endpoint
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.protocol import Load, RunSpec
from inferaudit.measure.records import Record
from inferaudit.measure.workload import RequestPlan

__all__ = ["model_listed", "send_phase"]

OnRecord = Callable[[Record], None]


def model_listed(spec: RunSpec, api_key: str | None) -> str:
    """Conformance item 1: does ``GET /v1/models`` list the model? ("honoured" / "ignored: …")."""
    try:
        check_endpoint(spec.endpoint, api_key)
    except EndpointError as exc:
        return f"ignored: {exc.diagnostics()}"
    return "honoured"


def send_phase(
    spec: RunSpec,
    plans: Sequence[RequestPlan],
    *,
    api_key: str | None,
    concurrency: int,
    records_path: Path,
    on_record: OnRecord | None = None,
    health_path: Path | None = None,
) -> int:
    """Send ``plans`` in order, closed loop at ``concurrency``, through the load runner (one
    worker); their records are appended to ``records_path``, and with ``health_path`` the
    client's health windows, tagged with the plans' phase (this load's own clock origin).
    Returns the records written."""
    if not plans:
        return 0
    load = Load(concurrency=max(1, concurrency), requests=len(plans), timeout_s=spec.load.timeout_s)
    phase_spec = spec.model_copy(update={"load": load, "workers": 1})
    count = 0

    def collect(row: Record) -> None:
        nonlocal count
        count += 1
        if on_record is not None:
            on_record(row)

    run_load(
        phase_spec,
        records_path,
        api_key=api_key,
        plans=plans,
        on_record=collect,
        health_path=health_path,
        health_phase=plans[0].phase,
    )
    return count
