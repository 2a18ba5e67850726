"""The run directory: the one place that names its files, and reads a run back.

See ``docs/ARCHITECTURE.md`` for what each file holds. A sweep or a search is a parent directory
holding ``sweep.json`` or ``search.json`` and one run directory per point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import RunSpec

SPEC_FILE = "spec.json"
RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
META_FILE = "meta.json"
STATEMENT_FILE = "statement.json"
ENVELOPE_FILE = "envelope.dsse.json"
PROOF_FILE = "entry.tlog-proof"
SWEEP_FILE = "sweep.json"
SEARCH_FILE = "search.json"


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
