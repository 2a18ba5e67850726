"""The run directory: the one place that names its files, and reads a run back.

See ``docs/ARCHITECTURE.md`` for what each file holds. A sweep or a search is a parent directory
holding ``sweep.json`` or ``search.json`` and one run directory per point.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import RunSpec


def file_sha256(path: Path) -> str:
    """Lowercase hex SHA-256 of a file's bytes (read in 1 MiB blocks): how evidence, datasets
    and traces are bound."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


SPEC_FILE = "spec.json"
RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
META_FILE = "meta.json"
STATEMENT_FILE = "statement.json"
ENVELOPE_FILE = "envelope.dsse.json"
PROOF_FILE = "entry.tlog-proof"
VERDICTS_FILE = "verdicts.json"  # v2 runs: the verdicts, bound by the statement
SEED_FILE = "seed.json"  # the revealed seed of a run with a seed commitment (C5)
HEALTH_FILE = "health.jsonl"  # client health windows (C3)
SERVER_METRICS_FILE = "server-metrics.jsonl"  # counters the server reported (unverified)
TELEMETRY_FILE = "telemetry.jsonl"  # accelerator telemetry an agent reported (unverified)
SWEEP_FILE = "sweep.json"
SEARCH_FILE = "search.json"


def read_json(path: Path) -> Any:
    """A run directory file's JSON; a ConfigError naming the file when it is missing or not JSON."""
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing from the run directory") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None


def load_run(run_dir: Path) -> tuple[RunSpec, dict[str, Any]]:
    """A run directory's protocol and summary; a ConfigError naming the file that is wrong."""
    try:
        spec = RunSpec.model_validate_json((run_dir / SPEC_FILE).read_bytes())
        summary = orjson.loads((run_dir / SUMMARY_FILE).read_bytes())
    except FileNotFoundError as exc:
        missing = Path(exc.filename).name
        raise ConfigError(f"{run_dir}: not a run directory ({missing} missing)") from None
    except ValidationError as exc:
        why = exc.errors()[0]["msg"]
        raise ConfigError(f"{run_dir / SPEC_FILE}: not a RunSpec ({why})") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{run_dir / SUMMARY_FILE}: invalid JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{run_dir / SUMMARY_FILE}: expected a JSON object")
    return spec, summary
