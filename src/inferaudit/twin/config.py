"""What one twin serves with (``TwinConfig``) and the labels it puts on every response."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inferaudit.twin import text
from inferaudit.twin.behaviours import Behaviours
from inferaudit.twin.engine import EngineConfig, FixedEngine

SIMULATION_HEADER = "X-Inferaudit-Twin"
OWNED_BY = "inferaudit-twin (simulation)"
SWAP_SUFFIX = "#swapped"
MAX_TOP_LOGPROBS = 20  # as vLLM's default max_logprobs


@dataclass(frozen=True)
class TwinConfig:
    """Everything the twin serves with. ``engine`` picks fixed-latency or batching mode."""

    engine: FixedEngine | EngineConfig
    model_name: str
    behaviours: Behaviours = field(default_factory=Behaviours)
    tokens_per_chunk: int = 1
    api_key: str | None = None
    truth_path: Path | None = None
    seed: int = 0  # the server's own generator, for requests without a seed
    eos_mean: float = text.DEFAULT_EOS_MEAN
    max_model_len: int = 8192
    host: str = "127.0.0.1"
    port: int = 0
