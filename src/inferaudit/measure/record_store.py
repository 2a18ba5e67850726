"""A run's records for the judges, in memory bounded by a constant, not by the run's length.

``open_records(path)`` is what the verdicts read (``audit.run``, ``verify``'s step 11). A records
file up to ``IN_MEMORY_BYTES`` is read whole into
:class:`~inferaudit.measure.records.Record` objects, as before. A larger one becomes a
:class:`RecordStore`: one read validates every line (the same ``RecordError`` as
``read_records``) and keeps, per record, its byte range in the file and its scalar fields in
typed columns (8 bytes a number; phase, tag, error class, finish reason, model and retry note as
codes into the distinct values seen). The lists and texts (chunk times and sizes, output text,
top logprobs, hashes, error message) stay in the file: reading one of them re-reads that record's
line (``os.pread``, so the file's pages are the OS cache's, not this process's) and keeps the
last ``CACHE_RECORDS`` records parsed. 10^6 records take ~250 MB, whatever their length. A
number no int64 column holds exactly (a server's ``usage`` of 2^63, or of -2^63, the columns'
None) keeps its whole record in memory instead: its value is never lost or read as None.

The store is a ``Sequence[Record]`` of :class:`RecordView` objects, one per record, made once:
a view answers every attribute of its record -- fields, properties (``ok``, ``lag_ns``, ...)
and methods -- with the same values, so the judges, which read records only through their
attributes, give the same verdicts, byte for byte, from either (``tests/test_record_store.py``
checks it on the twin's records and the crafted cheats).
"""

from __future__ import annotations

import os
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast, overload

from inferaudit.errors import ConfigError
from inferaudit.measure.records import Record, parse_record, read_records

__all__ = ["CACHE_RECORDS", "IN_MEMORY_BYTES", "RecordStore", "RecordView", "open_records"]

IN_MEMORY_BYTES = 64 << 20  # a records file up to this is read whole (~3x its size in objects)
CACHE_RECORDS = 4096
NONE = -(1 << 63)  # an int column's None (a record whose field is this is kept whole)
INT64_MAX = (1 << 63) - 1
INT_FIELDS = tuple(
    name for name, f in Record.model_fields.items() if f.annotation in (int, int | None)
)
STR_FIELDS = ("phase", "tag", "error_class", "finish_reason", "model", "retried")


def open_records(path: Path, in_memory_bytes: int | None = None) -> Sequence[Record]:
    """The records of ``path``: a list when the file is at most ``in_memory_bytes`` (default
    ``IN_MEMORY_BYTES``), else a :class:`RecordStore`."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such records file") from None
    if size <= (IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes):
        return read_records(path)
    return RecordStore(path)


class RecordView:
    """One record of a :class:`RecordStore`: its attributes, from the columns or the file."""

    __slots__ = ("_i", "_store")

    def __init__(self, store: RecordStore, i: int) -> None:
        self._store = store
        self._i = i

    def __getattr__(self, name: str) -> Any:  # methods (model_copy, to_line, ...)
        if name.startswith("__"):  # copy/pickle probes: a view is not its record
            raise AttributeError(name)
        return getattr(self._store.record(self._i), name)

    def __repr__(self) -> str:
        return f"RecordView({self._store.path.name}#{self._i})"


def _int_field(name: str) -> property:
    def get(view: RecordView) -> int | None:
        store, i = view._store, view._i
        v = store._ints[name][i]
        if v != NONE:
            return v
        whole = store._whole.get(i)
        return None if whole is None else getattr(whole, name)

    return property(get)


def _str_field(name: str) -> property:
    def get(view: RecordView) -> str | None:
        c = view._store._codes[name][view._i]
        return None if c < 0 else view._store._values[c]

    return property(get)


def _file_field(name: str) -> property:
    def get(view: RecordView) -> Any:
        return getattr(view._store.record(view._i), name)

    return property(get)


# Every field is a property of the view (a class attribute: faster than ``__getattr__``), and
# Record's own properties (ok, cancelled, lag_ns, slot_wait_ns, output_tokens, text_complete)
# read fields only, so the very same property objects work on a view: one definition.
for _name in Record.model_fields:
    setattr(
        RecordView,
        _name,
        _int_field(_name)
        if _name in INT_FIELDS
        else _str_field(_name)
        if _name in STR_FIELDS
        else _file_field(_name),
    )
for _name, _attr in vars(Record).items():
    if isinstance(_attr, property):
        setattr(RecordView, _name, _attr)


class RecordStore(Sequence[Record]):
    """The records of a file, validated once, held as columns and byte ranges (module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offsets = array("q")
        self._lengths = array("l")
        self._ints = {name: array("q") for name in INT_FIELDS}
        self._codes = {name: array("l") for name in STR_FIELDS}
        self._values: list[str] = []
        self._value_code: dict[str, int] = {}
        self._whole: dict[int, Record] = {}  # records with a number no column holds exactly
        self._cache: OrderedDict[int, Record] = OrderedDict()
        self._last = -1  # the record read last (the judges read one record's fields in a row)
        self._read()
        self._views = [RecordView(self, i) for i in range(len(self._offsets))]
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def _read(self) -> None:
        offset = 0
        with self.path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                start, offset = offset, offset + len(raw)
                if not raw.endswith(b"\n"):
                    return  # a torn last write, as ``file_lines`` ignores it
                line = raw[:-1]
                if not line.strip():
                    continue
                self._keep(start, len(line), parse_record(self.path, number, line))

    def _keep(self, start: int, length: int, rec: Record) -> None:
        self._offsets.append(start)
        self._lengths.append(length)
        values = rec.__dict__
        for name, column in self._ints.items():
            v = values[name]
            if v is not None and not NONE < v <= INT64_MAX:
                self._whole[len(self._offsets) - 1] = rec
                v = None
            column.append(NONE if v is None else v)
        for name, codes in self._codes.items():
            s = values[name]
            if s is None:
                codes.append(-1)
                continue
            code = self._value_code.get(s)
            if code is None:
                code = self._value_code[s] = len(self._values)
                self._values.append(s)
            codes.append(code)

    def record(self, i: int) -> Record:
        """Record ``i`` in full (re-read from the file; the last ``CACHE_RECORDS`` are kept)."""
        if i == self._last:
            return self._cache[i]
        rec = self._cache.get(i)
        if rec is not None:
            self._cache.move_to_end(i)
            self._last = i
            return rec
        line = os.pread(self._fd, self._lengths[i], self._offsets[i])
        rec = Record.model_validate_json(line)  # validated when first read: the same values
        self._cache[i] = rec
        self._last = i
        if len(self._cache) > CACHE_RECORDS:
            self._cache.popitem(last=False)
        return rec

    def __len__(self) -> int:
        return len(self._views)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Record]: ...
    def __getitem__(self, index: int | slice) -> Record | Sequence[Record]:
        # A view stands in for its record: every attribute a judge reads is the record's.
        if isinstance(index, slice):
            return cast(list[Record], self._views[index])
        return cast(Record, self._views[index])

    def __iter__(self) -> Iterator[Record]:
        return iter(cast(list[Record], self._views))
