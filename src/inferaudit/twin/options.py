"""``TwinOptions``: the typed, JSON-serialisable description of a twin to start, and ``build``,
which turns it into the ``TwinConfig`` the server runs with (catalog look-ups, behaviour parsing,
validation). The CLI (``inferaudit twin``), the launcher (``launch.start_twin``) and the child
process (``python -m inferaudit.twin``) all go through ``build``, so they accept and refuse the
same things with the same one-line ``ConfigError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from inferaudit.errors import ConfigError
from inferaudit.twin.behaviours import parse_behaviours
from inferaudit.twin.config import TwinConfig
from inferaudit.twin.engine import EngineConfig, FixedEngine
from inferaudit.twin.text import DEFAULT_EOS_MEAN

DEFAULT_TTFT_MS = 50.0
DEFAULT_TPOT_MS = 10.0
DEFAULT_MODEL_NAME = "inferaudit-twin"


class TwinOptions(BaseModel):
    """A twin to serve: fixed mode (``ttft_ms``/``tpot_ms``) or engine mode (``accelerator`` +
    ``model`` from the catalog), plus behaviours (``NAME`` or ``NAME:key=value,...``, see
    ``behaviours.py``) and serving details. The names are the CLI flags' (``--ttft-ms`` =
    ``ttft_ms``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accelerator: str | None = None
    model: str | None = None
    served_model_name: str | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    replicas: int = 1
    tp: int = 1
    dtype: str | None = None
    max_batch: int = 256
    efficiency: float = 0.6
    mem_util: float = 0.9
    behave: tuple[str, ...] = ()
    tokens_per_chunk: int = 1
    api_key: str | None = None
    truth: Path | None = None
    seed: int = 0
    eos_mean: float = DEFAULT_EOS_MEAN
    max_model_len: int = 8192
    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True)
class Built:
    """A validated twin: its ``config`` and a one-line description of its timing ``mode``."""

    config: TwinConfig
    mode: str


def build(options: TwinOptions) -> Built:
    """Validate ``options`` into a ``TwinConfig``; raises ``ConfigError`` (one line) if wrong."""
    o = options
    engine: FixedEngine | EngineConfig
    if o.accelerator is not None:
        if o.model is None:
            raise ConfigError("--accelerator needs --model (a catalog model)")
        if o.ttft_ms is not None or o.tpot_ms is not None:
            raise ConfigError("--ttft-ms/--tpot-ms are for fixed mode; drop --accelerator")
        engine = EngineConfig.from_catalog(
            o.accelerator,
            o.model,
            o.dtype,
            replicas=o.replicas,
            tp=o.tp,
            max_batch=o.max_batch,
            efficiency=o.efficiency,
            mem_util=o.mem_util,
        )
        mode = (
            f"engine: {o.replicas} replica(s) x {o.tp} {engine.accelerator.id}, "
            f"{engine.model.id} {engine.dtype}, max batch {o.max_batch}, efficiency "
            f"{o.efficiency:g}, KV cache {engine.kv_capacity_bytes() / 1e9:.3g} GB per replica"
        )
        name = o.served_model_name or engine.model.id
    else:
        engine = FixedEngine(
            DEFAULT_TTFT_MS if o.ttft_ms is None else o.ttft_ms,
            DEFAULT_TPOT_MS if o.tpot_ms is None else o.tpot_ms,
        )
        mode = f"fixed: TTFT {engine.ttft_ms:g} ms, {engine.tpot_ms:g} ms per token"
        name = o.served_model_name or o.model or DEFAULT_MODEL_NAME
    if o.tokens_per_chunk < 1:
        raise ConfigError("--tokens-per-chunk must be >= 1")
    if o.eos_mean <= 0 or o.max_model_len < 2:
        raise ConfigError("--eos-mean must be > 0 and --max-model-len >= 2")
    config = TwinConfig(
        engine=engine,
        model_name=name,
        behaviours=parse_behaviours(list(o.behave)),
        tokens_per_chunk=o.tokens_per_chunk,
        api_key=o.api_key,
        truth_path=o.truth,
        seed=o.seed,
        eos_mean=o.eos_mean,
        max_model_len=o.max_model_len,
        host=o.host,
        port=o.port,
    )
    return Built(config, mode)
