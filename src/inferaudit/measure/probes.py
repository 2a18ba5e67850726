"""Extra request phases of the checks (probes, cache audit): sent through the load engine.

Plans are sent with :func:`inferaudit.measure.load.client.send_plans` (closed loop, at most
``concurrency`` at once, in plan order) and every record is appended to the run's
``records.jsonl`` under its own phase name, so the evidence holds every request the checks made.
Times within one phase share one epoch (the phase's start); ``metrics`` ignores these phases.

Ids: check phases use ids from :data:`CHECK_ID_BASE` up, far above any schedule position, and
their prompts come from the run's own :class:`~inferaudit.measure.workload.Planner` at those ids, so
they are salted exactly like the measured prompts and never repeat one of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inferaudit.measure.load.client import send_plans
from inferaudit.measure.protocol import Load, RunSpec
from inferaudit.measure.records import Record, RecordWriter
from inferaudit.measure.workload import Planner, RequestPlan

CHECK_ID_BASE = 1 << 40  # ids of check requests: [2**40, 2**41)
BLOCK = 1 << 32  # each check owns a block of ids

OnRecord = Callable[[dict[str, Any]], None]


def fresh_plan(
    planner: Planner,
    block: int,
    k: int,
    *,
    phase: str,
    tag: str | None = None,
    max_tokens: int | None = None,
    extra_body: dict[str, Any] | None = None,
) -> RequestPlan:
    """A never-sent salted plan at id ``CHECK_ID_BASE + block * BLOCK + k``."""
    assert 0 <= block < 256 and 0 <= k < BLOCK, "check id out of range"
    i = CHECK_ID_BASE + block * BLOCK + k
    p = planner.plan(i)
    return dataclasses.replace(
        p,
        phase=phase,
        tag=tag,
        max_tokens=p.max_tokens if max_tokens is None else max_tokens,
        extra_body=extra_body or {},
    )


def send_phase(
    spec: RunSpec,
    plans: Sequence[RequestPlan],
    *,
    api_key: str | None,
    concurrency: int,
    records_path: Path | None,
    on_record: OnRecord | None = None,
    runner: bool = False,
) -> list[Record]:
    """Send ``plans`` and append their records; returns them in plan order.

    ``runner``: through :func:`~inferaudit.measure.load.runner.run_load` (one worker process, closed
    loop at ``concurrency``), exactly as the measured load is sent; else in this process.
    """
    if not plans:
        return []
    if runner and records_path is not None:
        return _through_runner(spec, plans, api_key, concurrency, records_path, on_record)
    rows = asyncio.run(
        send_plans(
            spec.endpoint,
            plans,
            api_key=api_key,
            workload=spec.workload,
            concurrency=max(1, concurrency),
            timeout_s=spec.load.timeout_s,
        )
    )
    records = [Record.model_validate(row) for row in rows]
    if records_path is not None:
        with RecordWriter(records_path) as writer:
            for row in rows:
                writer.write(row)
    if on_record is not None:
        for row in rows:
            on_record(row)
    return records


def _through_runner(
    spec: RunSpec,
    plans: Sequence[RequestPlan],
    api_key: str | None,
    concurrency: int,
    records_path: Path,
    on_record: OnRecord | None,
) -> list[Record]:
    from inferaudit.measure.load.runner import run_load

    load = Load(concurrency=max(1, concurrency), requests=len(plans), timeout_s=spec.load.timeout_s)
    phase_spec = spec.model_copy(update={"load": load, "workers": 1})
    rows: list[dict[str, Any]] = []

    def collect(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_record is not None:
            on_record(row)

    run_load(phase_spec, records_path, api_key=api_key, plans=plans, on_record=collect)
    order = {p.id: k for k, p in enumerate(plans)}
    return sorted((Record.model_validate(r) for r in rows), key=lambda r: order.get(r.id, -1))
