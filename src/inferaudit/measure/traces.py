"""Recorded arrival traces: parse them strictly, replay their instants, rebuild their prompts.

Two formats (``protocol.TraceFormat``), told apart by :func:`detect_trace_format`:

* ``mooncake``: JSONL as published with Mooncake (FAST'25), one object per line::

      {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47]}

  ``timestamp`` integer milliseconds from the trace's start, ``input_length`` prompt tokens,
  ``output_length`` output tokens, ``hash_ids`` (optional, default none) the ids of the
  prompt's consecutive 512-token blocks: two requests whose lists start alike share that
  prompt prefix. Other keys are allowed and ignored.
* ``burstgpt``: BurstGPT's CSV, header exactly
  ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``; ``Timestamp`` in
  seconds (a decimal), the token columns canonical integers with ``Total tokens`` =
  request + response. A row with ``Response tokens`` 0 is a *failed* request in BurstGPT: it is
  skipped (its timestamp still has to be in order) and counted in
  :attr:`LoadedTrace.skipped_failed`.

Strict parsing: timestamps non-decreasing, lengths positive canonical integers (at most
``MAX_LENGTH``), hash ids in ``[0, 2**64)``, every malformed line rejected. Bad content raises
``DataError``, one line naming the file, the line and the field; a missing file or a file whose
digest differs from the protocol's raises ``ConfigError``.

Replay: :func:`trace_offsets_ns` is the absolute schedule (int64 ns from the first entry,
divided by the speedup). :func:`trace_prompt` is entry ``i``'s prompt under the run's secret
seed: ``input_length`` vocabulary words (``measure.workload.VOCAB``, ~one token each), made of
the entry's blocks in order, block ``h`` being ``block_tokens`` words drawn one per byte of
SHAKE-128(``prf(seed, "trace-block", h)``), cut to fit (Mooncake's last block is partial);
words beyond the blocks are a tail unique to ``i``: ``salt(seed, i)`` then words from
SHAKE-128(``prf(seed, "trace-tail", i)``), the whole tail cut to its length. Entries sharing
leading hash ids share exactly that text (prefix caching can reuse it); nobody without the
seed can predict any of it. An entry without hash ids is all tail: a unique salted prompt.

:func:`synthetic_trace` and :func:`write_trace_samples` make deterministic traces (benches,
the shipped samples: ``python -m inferaudit.measure.traces DIR``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from inferaudit.errors import ConfigError, DataError
from inferaudit.measure.protocol import Trace, TraceFormat
from inferaudit.measure.workload import MAX_ID, VOCAB, prf, salt

__all__ = [
    "BURSTGPT_HEADER",
    "MAX_LENGTH",
    "LoadedTrace",
    "TraceEntry",
    "detect_trace_format",
    "load_protocol_trace",
    "load_trace",
    "main",
    "mean_rate",
    "synthetic_trace",
    "trace_offsets_ns",
    "trace_prompt",
    "write_burstgpt",
    "write_mooncake",
    "write_trace_samples",
]

BURSTGPT_HEADER = (
    "Timestamp",
    "Model",
    "Request tokens",
    "Response tokens",
    "Total tokens",
    "Log Type",
)
MAX_LENGTH = 1 << 24  # tokens of one prompt or output: a size cap, far above any model's context
_INT = re.compile(r"0|[1-9][0-9]*")
_SECONDS = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_REQUIRED = ("timestamp", "input_length", "output_length")


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One request of a trace."""

    timestamp_ms: float  # from the trace's start (the first entry may be > 0)
    input_length: int  # prompt tokens
    output_length: int  # output tokens (>= 1)
    hash_ids: tuple[int, ...] = ()  # Mooncake: ids of the prompt's block_tokens-token blocks


@dataclass(frozen=True, slots=True)
class LoadedTrace:
    """A parsed trace: its requests, the failed rows skipped (BurstGPT), its format and the
    SHA-256 of the file's bytes (what ``protocol.Trace.sha256`` binds)."""

    entries: tuple[TraceEntry, ...]
    skipped_failed: int
    format: TraceFormat
    sha256: str


# ---- reading ----


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"trace {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"trace {path}: cannot read ({exc.strerror})") from None


def _first_line(data: bytes) -> bytes:
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def _format_of(path: Path, data: bytes) -> TraceFormat:
    first = _first_line(data)
    if first == ",".join(BURSTGPT_HEADER).encode():
        return "burstgpt"
    if path.suffix.lower() == ".csv":
        raise DataError(
            f"trace {path}:1: a .csv trace needs BurstGPT's header {','.join(BURSTGPT_HEADER)!r}"
        )
    if path.suffix.lower() in (".jsonl", ".ndjson") or first.lstrip().startswith(b"{"):
        return "mooncake"
    raise DataError(f"trace {path}:1: neither Mooncake JSONL nor a BurstGPT CSV")


def detect_trace_format(path: Path) -> TraceFormat:
    """``burstgpt`` for a file whose first line is BurstGPT's header, ``mooncake`` for a
    ``.jsonl``/``.ndjson`` file or one whose first line is a JSON object; a ``.csv`` without the
    header, or anything else, is a DataError."""
    return _format_of(path, _read(path))


def load_trace(
    path: Path, fmt: TraceFormat | None = None, sha256: str | None = None
) -> LoadedTrace:
    """Parse the trace at ``path`` (format detected when ``fmt`` is None); ``sha256``, when
    given, must be the digest of the file's bytes. Raises as the module docstring says."""
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ConfigError(f"trace {path}: content differs from the protocol's trace sha256")
    if fmt is None:
        fmt = _format_of(path, data)
    if fmt == "mooncake":
        entries, skipped = _mooncake(path, data), 0
    else:
        entries, skipped = _burstgpt(path, data)
    if not entries:
        raise DataError(f"trace {path}: no requests in it")
    return LoadedTrace(tuple(entries), skipped, fmt, digest)


def load_protocol_trace(trace: Trace) -> LoadedTrace:
    """The trace a protocol names, checked against its digest and declared format."""
    return load_trace(Path(trace.path), trace.format, trace.sha256)


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _length(where: str, name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_LENGTH:
        raise DataError(
            f"{where}: field {name!r} must be an integer in [{least}, {MAX_LENGTH}], "
            f"got {_brief(value)}"
        )
    return value


def _in_order(where: str, name: str, t_ms: float, last_ms: float | None, unit_ms: float) -> None:
    if last_ms is not None and t_ms < last_ms:
        raise DataError(
            f"{where}: field {name!r} goes back in time "
            f"({t_ms / unit_ms:g} after {last_ms / unit_ms:g})"
        )


def _mooncake(path: Path, data: bytes) -> list[TraceEntry]:
    entries: list[TraceEntry] = []
    last: float | None = None
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        entry = _mooncake_line(f"trace {path}:{number}", line)
        _in_order(f"trace {path}:{number}", "timestamp", entry.timestamp_ms, last, 1.0)
        last = entry.timestamp_ms
        entries.append(entry)
    return entries


def _mooncake_line(where: str, line: bytes) -> TraceEntry:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise DataError(f"{where}: not JSON ({exc.args[0]})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in _REQUIRED:
        if key not in obj:
            raise DataError(f"{where}: field {key!r} is missing")
    ts = obj["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        raise DataError(
            f"{where}: field 'timestamp' must be a non-negative integer (ms), got {_brief(ts)}"
        )
    ids = obj.get("hash_ids", [])
    if not isinstance(ids, list):
        raise DataError(f"{where}: field 'hash_ids' must be a list, got {_brief(ids)}")
    for h in ids:
        if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < MAX_ID:
            raise DataError(
                f"{where}: field 'hash_ids' holds {_brief(h)}, not an integer in [0, 2**64)"
            )
    return TraceEntry(
        float(ts),
        _length(where, "input_length", obj["input_length"], 1),
        _length(where, "output_length", obj["output_length"], 1),
        tuple(ids),
    )


def _burstgpt(path: Path, data: bytes) -> tuple[list[TraceEntry], int]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"trace {path}: not UTF-8 (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    entries: list[TraceEntry] = []
    skipped = 0
    last: float | None = None
    try:
        header = next(reader, None)
        if header is None or tuple(header) != BURSTGPT_HEADER:
            raise DataError(f"trace {path}:1: expected BurstGPT's header {BURSTGPT_HEADER}")
        for row in reader:
            where = f"trace {path}:{reader.line_num}"
            if not row:
                continue
            t_ms, request, response = _burstgpt_row(where, row)
            _in_order(where, "Timestamp", t_ms, last, 1000.0)
            last = t_ms
            if response == 0:
                skipped += 1
            else:
                entries.append(TraceEntry(t_ms, request, response))
    except csv.Error as exc:
        raise DataError(f"trace {path}:{reader.line_num}: not CSV ({exc})") from None
    return entries, skipped


def _burstgpt_row(where: str, row: list[str]) -> tuple[float, int, int]:
    """(timestamp ms, request tokens, response tokens) of one row; response 0 = failed."""
    if len(row) != len(BURSTGPT_HEADER):
        raise DataError(f"{where}: expected {len(BURSTGPT_HEADER)} fields, got {len(row)}")
    ts, model, req, resp, total, log_type = row
    if not _SECONDS.fullmatch(ts):
        raise DataError(f"{where}: field 'Timestamp' must be decimal seconds, got {_brief(ts)}")
    seconds = float(ts)
    if not math.isfinite(seconds):
        raise DataError(f"{where}: field 'Timestamp' is out of range")
    for name, value in (("Model", model), ("Log Type", log_type)):
        if not value.strip():
            raise DataError(f"{where}: field {name!r} is empty")
    counts: list[int] = []
    for name, value in (
        ("Request tokens", req), ("Response tokens", resp), ("Total tokens", total)
    ):  # fmt: skip
        if not _INT.fullmatch(value) or len(value) > 12:  # then a range error
            raise DataError(f"{where}: field {name!r} must be a canonical integer, got {value!r}")
        counts.append(int(value))
    request, response, whole = counts
    _length(where, "Request tokens", request, 1)
    _length(where, "Response tokens", response, 0)
    if whole != request + response:
        raise DataError(
            f"{where}: field 'Total tokens' is {whole}, not Request + Response tokens "
            f"({request + response})"
        )
    return seconds * 1000, request, response


# ---- replay ----


def trace_offsets_ns(entries: Sequence[TraceEntry], speedup: float) -> np.ndarray:
    """Send offsets, int64 ns from the first entry's instant, divided by ``speedup`` (the
    first offset is 0; non-decreasing as the trace is)."""
    assert entries, "a trace has at least one entry"
    assert speedup > 0 and math.isfinite(speedup), "speedup is positive and finite"
    ms = np.fromiter((e.timestamp_ms for e in entries), dtype=np.float64, count=len(entries))
    offsets: np.ndarray = np.round((ms - ms[0]) * 1e6 / speedup).astype(np.int64)
    return offsets


def mean_rate(entries: Sequence[TraceEntry], speedup: float) -> float:
    """Mean arrival rate after speedup, requests/s: ``(n - 1) / span`` (inf for span 0)."""
    assert entries, "a trace has at least one entry"
    span_s = (entries[-1].timestamp_ms - entries[0].timestamp_ms) / 1000 / speedup
    return math.inf if span_s <= 0 else (len(entries) - 1) / span_s


def _stream(key: bytes, n: int) -> list[str]:
    return [VOCAB[b] for b in hashlib.shake_128(key).digest(n)] if n > 0 else []


def trace_prompt(seed: bytes, i: int, entry: TraceEntry, block_tokens: int) -> str:
    """The prompt of entry ``i``: ``entry.input_length`` words, shared blocks then a unique
    tail (see the module docstring)."""
    assert block_tokens >= 1, "blocks hold at least one token"
    words: list[str] = []
    left = entry.input_length
    for h in entry.hash_ids:
        if left == 0:
            break
        take = min(block_tokens, left)
        words += _stream(prf(seed, b"trace-block", h), take)
        left -= take
    if left:
        tail = salt(seed, i).split()[:left]
        tail += _stream(prf(seed, b"trace-tail", i), left - len(tail))
        words += tail
    return " ".join(words)


# ---- deterministic traces: benches and the shipped samples ----


class _Draws:
    """Deterministic draws from SHAKE-128(``"inferaudit.traces/v1\n" + label``): 64-bit
    little-endian words in order, so a trace made here has the same bytes with every Python
    and numpy version."""

    def __init__(self, label: str, count: int) -> None:
        key = b"inferaudit.traces/v1\n" + label.encode()
        self._words = struct.unpack(f"<{count}Q", hashlib.shake_128(key).digest(8 * count))
        self._next = 0

    def _word(self) -> int:
        word: int = self._words[self._next]
        self._next += 1
        return word

    def uniform(self) -> float:
        """In (0, 1)."""
        return (self._word() + 0.5) / 2**64

    def integer(self, lo: int, hi: int) -> int:
        """In [lo, hi] (modulo bias below 2**-50 for these small ranges)."""
        return lo + self._word() % (hi - lo + 1)

    def exponential(self, mean: float) -> float:
        return -mean * math.log(self.uniform())


def synthetic_trace(n: int, rate: float, seed: int, block_tokens: int = 512) -> list[TraceEntry]:
    """``n`` Mooncake-like entries: Poisson instants at ``rate`` req/s rounded to whole ms (as
    Mooncake records them), input lengths uniform in [600, 1600], outputs in [8, 32]. Each
    entry belongs to one of 3 prefix families (blocks 0-1, 2, 3-5): it shares the family's
    blocks that fit before its last block, and its other blocks get fresh ids (from 6 on).
    Deterministic in its arguments (SHAKE-128 draws, no library generator)."""
    assert n >= 1 and rate > 0, "a trace has entries and a positive rate"
    draws = _Draws(f"synthetic-trace/{seed}", 4 * n)
    families = ((0, 1), (2,), (3, 4, 5))
    fresh = 6
    t = 0.0
    out: list[TraceEntry] = []
    for k in range(n):
        if k:
            t += draws.exponential(1000.0 / rate)
        length = draws.integer(600, 1600)
        output = draws.integer(8, 32)
        family = families[draws.integer(0, len(families) - 1)]
        blocks = -(-length // block_tokens)
        shared = family[: max(blocks - 1, 0)]
        ids = (*shared, *range(fresh, fresh + blocks - len(shared)))
        fresh += blocks - len(shared)
        out.append(TraceEntry(float(round(t)), length, output, ids))
    return out


def write_mooncake(entries: Sequence[TraceEntry], path: Path) -> Path:
    """Write ``entries`` as Mooncake JSONL (timestamps must be whole ms)."""
    lines = []
    for e in entries:
        assert e.timestamp_ms == int(e.timestamp_ms), "Mooncake timestamps are whole ms"
        obj = {
            "timestamp": int(e.timestamp_ms),
            "input_length": e.input_length,
            "output_length": e.output_length,
            "hash_ids": list(e.hash_ids),
        }
        lines.append(json.dumps(obj) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_burstgpt(rows: Sequence[tuple[float, str, int, int, str]], path: Path) -> Path:
    """Write BurstGPT CSV rows ``(seconds, model, request, response, log type)``."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(BURSTGPT_HEADER)
    for seconds, model, request, response, log_type in rows:
        writer.writerow((f"{seconds:.3f}", model, request, response, request + response, log_type))
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _burstgpt_sample_rows() -> list[tuple[float, str, int, int, str]]:
    draws = _Draws("burstgpt-sample", 6 * 40)
    failed = {7, 19, 33}  # Response tokens 0: failed requests, skipped when loaded
    rows = []
    t = 0.0
    for k in range(40):
        t += draws.exponential(0.25)
        model = "GPT-4" if draws.uniform() < 0.3 else "ChatGPT"
        log_type = "API log" if draws.uniform() < 0.5 else "Conversation log"
        request = draws.integer(20, 1200)
        response = draws.integer(8, 256)
        rows.append((round(t, 3), model, request, 0 if k in failed else response, log_type))
    return rows


def write_trace_samples(directory: Path) -> list[Path]:
    """Write the shipped samples into ``directory``: ``mooncake.jsonl`` (40 entries over ~4 s,
    3 prefix families) and ``burstgpt.csv`` (40 rows, 3 of them failed). Deterministic."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        write_mooncake(synthetic_trace(40, 10.0, seed=2020), directory / "mooncake.jsonl"),
        write_burstgpt(_burstgpt_sample_rows(), directory / "burstgpt.csv"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inferaudit.measure.traces DIR``: write the trace samples into DIR."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m inferaudit.measure.traces DIR", file=sys.stderr)
        return 2
    try:
        for path in write_trace_samples(Path(args[0])):
            print(path)
    except OSError as exc:
        print(f"inferaudit: cannot write the samples into {args[0]} ({exc.strerror})",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
