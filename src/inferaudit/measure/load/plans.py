"""What the load engine asks of a planner: the two small interfaces a worker calls.

* :class:`PlanSource` ``plan(position)``: the request at a schedule position (for a multi-turn
  workload, the first turn of the session at that position).
* :class:`SessionSource` adds the sessions: ``turns(position)`` (1 for a single request) and
  ``turn_plan(position, turn, answers)`` for turn ``turn >= 1``, given the real answer texts of
  turns ``0 .. turn-1`` in order; the plan has id ``turn_id(position, turn)``, ``session =
  position`` and ``turn`` set.

The run's ``Planner`` (``measure.planner``) is both; tests pass small fakes. Whatever is passed
to the workers must be picklable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from inferaudit.measure.workload import RequestPlan

__all__ = ["PlanSource", "SessionSource"]


class PlanSource(Protocol):
    def plan(self, i: int) -> RequestPlan: ...


@runtime_checkable
class SessionSource(Protocol):
    def plan(self, i: int) -> RequestPlan: ...

    def turns(self, position: int) -> int: ...

    def turn_plan(self, position: int, turn: int, answers: Sequence[str]) -> RequestPlan: ...
