"""One record per request, as the client saw it, appended to ``records.jsonl`` as it finishes.

Every metric derives from these records by a pure function (``metrics.summarize``), so the file
is the ground truth of a run. Times are integer nanoseconds since the run's epoch, all read from
one monotonic clock (``time.perf_counter_ns``, CLOCK_MONOTONIC on Linux, shared by the processes
of one machine); a worker on another machine has its measured offset applied before writing.

Field meanings:
  id                     position in the run's schedule (unique within a run)
  worker                 index of the worker process that sent it
  phase                  "warmup" | "measure" | a check's phase ("probe", "cache-unique", ...)
  scheduled_ns           when the schedule said to send it (latency is measured from here)
  sent_ns                when the client actually started the request (lag = sent - scheduled)
  first_chunk_ns         first SSE data event of any kind (role-only/empty included)
  first_content_ns       first event carrying generated content (this is the first token)
  chunk_ns, chunk_chars  arrival time and content length of every content-carrying event
  done_ns                end of the response (last byte), or when the error happened
  status                 HTTP status, None when no response arrived
  error_class            None on success; else e.g. "http_429", "connect", "timeout",
                         "sse_malformed", "stream_truncated", "empty_output"
  usage_*                what the server's ``usage`` said (None when it said nothing)
  content_chunks         number of content-carrying events (== len(chunk_ns))
  empty_chunks_before_content  events before the first content (role-only, empty deltas)
  input_tokens           prompt length the workload intended (tokens)
  max_tokens             output tokens asked for
  output_text            the generated text (None when the protocol does not keep it)
  top_logprobs           per output token, the server's top alternatives ``{text: logprob}``
                         (chosen token included); only on requests that asked for logprobs
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from inferaudit.errors import ConfigError


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int
    worker: int = 0
    phase: str = "measure"
    tag: str | None = None  # e.g. fingerprint prompt id, cache-probe group
    scheduled_ns: int
    sent_ns: int | None = None
    first_chunk_ns: int | None = None
    first_content_ns: int | None = None
    chunk_ns: list[int] = []
    chunk_chars: list[int] = []
    done_ns: int | None = None
    status: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    content_chunks: int = 0
    empty_chunks_before_content: int = 0
    output_chars: int = 0
    prompt_sha256: str = ""
    output_sha256: str = ""
    input_tokens: int | None = None
    max_tokens: int | None = None
    output_text: str | None = None
    top_logprobs: list[dict[str, float]] | None = None

    @property
    def ok(self) -> bool:
        return self.error_class is None

    @property
    def lag_ns(self) -> int | None:
        return None if self.sent_ns is None else self.sent_ns - self.scheduled_ns


class RecordWriter:
    """Appends records as JSON lines, flushed to the OS after each one (a crash keeps them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed in close()

    def write(self, record: dict | Record) -> None:
        data = record.model_dump() if isinstance(record, Record) else record
        self._fh.write(orjson.dumps(data) + b"\n")
        self._fh.flush()

    def write_raw(self, line: bytes) -> None:
        """Append an already-serialised record line (no trailing newline)."""
        self._fh.write(line + b"\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(path: Path) -> Iterator[Record]:
    """Read and validate records; a malformed line is a ConfigError naming its line number.

    A final line without a newline (a write cut short by a crash) is ignored.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such records file") from None
    lines = data.split(b"\n")
    if lines and lines[-1] != b"":
        lines = lines[:-1]  # torn last write
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield Record.model_validate(orjson.loads(line))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"{path}:{number}: bad record: {first}") from None


def read_records(path: Path) -> list[Record]:
    return list(iter_records(path))


def write_records(path: Path, records: Iterable[Record]) -> None:
    with RecordWriter(path) as writer:
        for record in records:
            writer.write(record)
