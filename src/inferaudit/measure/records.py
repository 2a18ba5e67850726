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
  slot_ns                open loop with ``max_concurrency``: when a slot became free for it
                         (None without a cap); its wait for the slot (slot - scheduled) is the
                         protocol's, not the client's lag (lag = sent - max(scheduled, slot))
  sent_ns                when the client actually started the request (lag = sent - scheduled)
  first_chunk_ns         first SSE data event of any kind (role-only/empty included)
  first_content_ns       first event carrying generated content (this is the first token)
  chunk_ns, chunk_chars  arrival time and content length of every content-carrying event
  done_ns                end of the response (last byte), or when the error happened
  status                 HTTP status, None when no response arrived
  error_class            None on success; else the endpoint's failure ("http_429", "connect",
                         "timeout", "first_byte_timeout", "stall_timeout", "sse_malformed",
                         "stream_truncated", "empty_output", ...: see ``load.client``) or
                         "cancelled": still in flight when the run ended (its end rule, a
                         stop or a signal); its times so far are kept and it is not the
                         endpoint's failure (``Record.cancelled``)
  usage_*                what the server's ``usage`` said (None when it said nothing)
  content_chunks         number of content-carrying events (== len(chunk_ns))
  empty_chunks_before_content  events before the first content (role-only, empty deltas)
  input_tokens           prompt length the workload intended (tokens)
  max_tokens             output tokens asked for
  output_chars           characters of the whole generated text
  output_sha256          SHA-256 of the whole generated text (UTF-8), however much is kept
  output_text            the generated text, at most ``workload.max_text_bytes`` UTF-8 bytes of
                         it (cut at a character boundary; ``text_complete`` says whether it is
                         all of it); None when the protocol does not keep text
  top_logprobs           per output token, the server's top alternatives ``{text: logprob}``
                         (chosen token included); only on requests that asked for logprobs
  session, turn          multi-turn workloads: the session (its first turn's id) and the turn
                         index (0 first); None for single requests
  retried                None, or the first attempt's error (one line, "ServerDisconnectedError:
                         Server disconnected", ...) when that attempt died on a dead keep-alive
                         connection before the server had the request whole and the request was
                         sent once more on a new connection (``load.client``); every other field
                         is of the request as a whole (times from the first send, the answer of
                         the second); it starts with ``WRITTEN_WHOLE`` when the request had been
                         written whole and the server closed without answering, so it may have
                         done the first attempt's work
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from inferaudit.errors import ConfigError, RecordError, StorageError

__all__ = [
    "CANCELLED",
    "WRITTEN_WHOLE",
    "Record",
    "RecordWriter",
    "file_lines",
    "iter_records",
    "read_records",
    "whole_lines",
    "write_records",
]

# Record.retried of a request the server may have read before closing (``load.pool``, defence 3)
WRITTEN_WHOLE = "after the request was written whole: "
CANCELLED = "cancelled"  # the error class of a request the client cut off, not the endpoint


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int
    worker: int = 0
    phase: str = "measure"
    tag: str | None = None  # e.g. fingerprint prompt id, cache-probe group
    scheduled_ns: int
    slot_ns: int | None = None
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
    session: int | None = None
    turn: int | None = None
    retried: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_class is None

    @property
    def cancelled(self) -> bool:
        """The client cut it off (end rule, stop, signal): neither a success nor the endpoint's
        failure."""
        return self.error_class == CANCELLED

    @property
    def lag_ns(self) -> int | None:
        """The client's send lag: actual send minus when it was due (its scheduled time, or
        when a slot became free for it under ``max_concurrency``)."""
        if self.sent_ns is None:
            return None
        due = self.scheduled_ns if self.slot_ns is None else max(self.scheduled_ns, self.slot_ns)
        return self.sent_ns - due

    @property
    def slot_wait_ns(self) -> int:
        """How long it waited for a free slot under ``max_concurrency`` (0 without a cap)."""
        return 0 if self.slot_ns is None else max(self.slot_ns - self.scheduled_ns, 0)

    @property
    def output_tokens(self) -> int:
        """Output tokens as the metrics count them: the server's ``usage`` when it reported
        it, else the number of content chunks."""
        usage = self.usage_completion_tokens
        return usage if usage is not None else self.content_chunks

    @property
    def text_complete(self) -> bool:
        """``output_text`` holds the whole generated text (not cut, not dropped)."""
        return self.output_text is not None and len(self.output_text) == self.output_chars

    def to_line(self) -> bytes:
        """The record as one JSON line (with its newline), as ``records.jsonl`` holds it."""
        # Every field holds a plain JSON value (no nested models, enums or dates), so the
        # instance dict, in field order, serialises exactly as model_dump() would, 4x faster.
        return orjson.dumps(self.__dict__, option=orjson.OPT_APPEND_NEWLINE)


class RecordWriter:
    """Appends validated records as JSON lines, flushed to the OS after each one (a crash keeps
    them). A failed write (a full disk) truncates the file back to its last whole line and
    raises :class:`~inferaudit.errors.StorageError`: the file never ends in half a record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise StorageError(f"{path}: cannot open for writing: {_reason(exc)}") from None
        self._size = self._fh.tell()  # bytes of whole lines so far
        self.written = 0

    def write(self, record: dict[str, Any] | Record) -> Record:
        """Validate ``record`` (a dict is validated as a :class:`Record`) and append it."""
        rec = record if isinstance(record, Record) else Record.model_validate(record)
        self._append(rec.to_line())
        return rec

    def append_line(self, line: bytes) -> Record:
        """Validate one serialised record (JSON, no trailing newline) and append those bytes.

        Raises ``pydantic.ValidationError`` / ``orjson.JSONDecodeError`` for bytes that are not
        a record; nothing is written then.
        """
        rec = Record.model_validate_json(line)
        self._append(line + b"\n")
        return rec

    def _append(self, data: bytes) -> None:
        try:
            self._fh.write(data)
            self._fh.flush()
        except OSError as exc:
            self._rollback()
            raise StorageError(
                f"{self.path}: cannot write record {self.written + 1}: {_reason(exc)}; "
                f"the {self.written} records before it are kept"
            ) from None
        self._size += len(data)
        self.written += 1

    def _rollback(self) -> None:
        """Drop the part of a line that a failed write may have left (best effort: the disk may
        refuse that too, and a reader ignores a torn last line anyway)."""
        with contextlib.suppress(OSError):
            self._fh.close()  # drops what the buffer still holds, once the flush fails again
        with contextlib.suppress(OSError):
            os.truncate(self.path, self._size)

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._rollback()
            raise StorageError(f"{self.path}: cannot write: {_reason(exc)}") from None
        self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def whole_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a JSONL file's bytes with their 1-based numbers; a final line
    without its newline (a write cut short by a crash) is not one of them."""
    lines = data.split(b"\n")
    if lines and lines[-1] != b"":
        lines = lines[:-1]  # a torn last write
    for number, line in enumerate(lines, 1):
        if line.strip():
            yield number, line


def file_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``whole_lines`` of the file at ``path``, read line by line (memory: one line, not the
    file); FileNotFoundError when it is absent."""
    with path.open("rb") as fh:  # not the module's ``open``, which only the writer uses
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                return  # a torn last write
            if line.strip():
                yield number, line[:-1]


def iter_records(path: Path) -> Iterator[Record]:
    """Read and validate records, one line at a time (a run's file is never held whole); a
    malformed line is a RecordError naming its line number.

    A final line without a newline (a write cut short by a crash) is ignored.
    """
    try:
        lines = file_lines(path)
        first = next(lines, None)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such records file") from None
    if first is None:
        return
    for number, line in itertools.chain((first,), lines):
        yield parse_record(path, number, line)


def parse_record(path: Path, number: int, line: bytes) -> Record:
    """Line ``number`` of the records file ``path``, validated; a RecordError naming it."""
    try:
        return Record.model_validate(orjson.loads(line))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        message = str(exc).splitlines()[0]
        raise RecordError(f"{path}:{number}: bad record: {message}") from None


def read_records(path: Path) -> list[Record]:
    return list(iter_records(path))


def write_records(path: Path, records: Iterable[Record]) -> None:
    with RecordWriter(path) as writer:
        for record in records:
            writer.write(record)
