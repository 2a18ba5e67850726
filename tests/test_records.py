import errno
import os
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from pydantic import ValidationError

from inferaudit.errors import ConfigError, RecordError, StorageError
from inferaudit.measure import records as records_module
from inferaudit.measure.records import Record, RecordWriter, read_records


def rec(i: int, **kw: object) -> Record:
    return Record(id=i, scheduled_ns=i * 1000, sent_ns=i * 1000 + 5, **kw)


def test_roundtrip_and_lag(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as w:
        w.write(rec(0, chunk_ns=[10, 20], chunk_chars=[3, 4], content_chunks=2))
        w.write(rec(1, error_class="http_429", status=429).model_dump())
    back = read_records(path)
    assert back == [
        rec(0, chunk_ns=[10, 20], chunk_chars=[3, 4], content_chunks=2),
        rec(1, error_class="http_429", status=429),
    ]
    assert back[0].ok and not back[1].ok
    assert back[0].lag_ns == 5


def test_each_record_is_on_disk_before_close(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    w = RecordWriter(path)
    w.write(rec(0))
    assert len(read_records(path)) == 1  # flushed, not buffered until the end
    w.close()


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as w:
        w.write(rec(0))
    with open(path, "ab") as fh:
        fh.write(b'{"id": 1, "sched')
    assert [r.id for r in read_records(path)] == [0]


def test_bad_line_named(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"id": 0, "scheduled_ns": 1}\n{"id": "x"}\n')
    with pytest.raises(RecordError, match=r"records.jsonl:2: bad record"):
        read_records(path)
    with pytest.raises(ConfigError, match="no such records file"):
        read_records(tmp_path / "missing.jsonl")


def test_properties_one_definition_each() -> None:
    assert rec(0, usage_completion_tokens=7, content_chunks=3).output_tokens == 7
    assert rec(0, content_chunks=3).output_tokens == 3  # no usage: content chunks
    assert rec(0, usage_completion_tokens=0, content_chunks=3).output_tokens == 0
    assert rec(0, error_class="cancelled").cancelled and not rec(0, error_class="cancelled").ok
    assert not rec(0, error_class="stall_timeout").cancelled
    assert rec(0, output_text="abc", output_chars=3).text_complete
    assert not rec(0, output_text="ab", output_chars=3).text_complete  # cut
    assert not rec(0, output_text=None, output_chars=3).text_complete  # not kept


def test_append_line_validates_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as w:
        back = w.append_line(rec(0).to_line().rstrip(b"\n"))
        with pytest.raises(ValidationError):
            w.append_line(b'{"id": 1, "scheduled_ns": 1, "bogus": 2}')
        w.write({"id": 2, "scheduled_ns": 5})  # a dict is validated as a Record too
        with pytest.raises(ValidationError):
            w.write({"id": 3})
    assert back == rec(0)
    assert [r.id for r in read_records(path)] == [0, 2]


class _Filling:
    """A file on a disk that fills after ``room`` bytes (the crossing write lands in part)."""

    def __init__(self, fh: IO[bytes], room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.fh.write(data[: self.room])
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def test_a_full_disk_leaves_whole_lines_and_one_line_of_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "records.jsonl"
    line = len(rec(0).to_line())
    real_open = open
    monkeypatch.setattr(
        records_module,
        "open",
        lambda p, mode: _Filling(real_open(p, mode), 3 * line + line // 2),
        raising=False,
    )
    w = RecordWriter(path)
    for i in range(3):
        w.write(rec(i))
    with pytest.raises(StorageError) as info:
        w.write(rec(3))
    assert str(info.value) == (
        f"{path}: cannot write record 4: no space left on device; the 3 records before it are kept"
    )
    w.close()  # closed already: nothing more happens
    assert path.read_bytes() == b"".join(rec(i).to_line() for i in range(3))


def test_to_line_is_the_json_of_model_dump() -> None:
    r = rec(0, chunk_ns=[1, 2], chunk_chars=[1, 2], content_chunks=2, output_text="é😀",
            top_logprobs=[{"a": -0.25, "b": -1.5}], error_class="stall_timeout")  # fmt: skip
    assert r.to_line() == orjson.dumps(r.model_dump()) + b"\n"
    assert Record.model_validate_json(r.to_line()) == r
