"""The JSON ``inferaudit agent`` serves at ``GET /samples``, and its reader ``parse_agent``.

One object (UTF-8 JSON), format ``inferaudit-agent/1``::

    {"format": "inferaudit-agent/1",
     "sequence": 7,                      # sampling rounds done; +1 per round, from 1
     "sampled_at_unix_ns": 1700000000000000000,   # the agent host's clock at the round's end
     "samples": [{"device_id": "GPU-...", "vendor": "nvidia", "tool": "nvidia-smi",
                  "power_w": 312.45, ...}],       # the latest sample of every device
     "tools": [{"tool": "nvidia-smi", "path": "/usr/bin/nvidia-smi", "error": null,
                "duplicates_dropped": []}],
     "reason": null}                     # why ``samples`` is empty, when it is

``samples`` are ``DeviceSample`` objects (see ``model``): operator-reported, never measured.
``tools`` names every tool the agent ran in that round, with the error that kept its devices
out (exit status, timeout, unparsable output) or ``null``. The round's time is the agent's
clock; a scraper stamps each answer with its own clock on receipt.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferaudit.errors import DataError, validation_message
from inferaudit.measure.telemetry.model import DeviceSample

AGENT_FORMAT = "inferaudit-agent/1"
_MAX_BYTES = 4 * 1024 * 1024


class ToolRun(BaseModel):
    """One vendor tool in one sampling round: where it was found and what went wrong."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str = Field(min_length=1)
    path: str
    error: str | None = None
    # devices this source also reported that an earlier source of the round already had: the
    # first source's sample is kept, so that no device counts twice
    duplicates_dropped: tuple[str, ...] = ()


class AgentSnapshot(BaseModel):
    """One ``GET /samples`` answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["inferaudit-agent/1"] = "inferaudit-agent/1"
    sequence: int = Field(ge=0)
    sampled_at_unix_ns: int = Field(ge=0)
    samples: tuple[DeviceSample, ...]
    tools: tuple[ToolRun, ...]
    reason: str | None = None


def render_agent(snapshot: AgentSnapshot) -> str:
    """The snapshot as the agent serves it: compact JSON, a figure the tool lacks is ``null``."""
    return snapshot.model_dump_json()


def parse_agent_snapshot(text: str | bytes) -> AgentSnapshot:
    """A whole ``GET /samples`` answer; ``DataError`` naming the field when it is malformed."""
    if len(text) > _MAX_BYTES:
        raise DataError(f"agent /samples: {len(text)} bytes, more than {_MAX_BYTES}")
    try:
        return AgentSnapshot.model_validate_json(text)
    except ValidationError as exc:
        raise DataError(f"agent /samples: {validation_message(exc)}") from None


def parse_agent(text: str | bytes) -> list[DeviceSample]:
    """The device samples of a ``GET /samples`` answer, in the agent's order."""
    return list(parse_agent_snapshot(text).samples)
