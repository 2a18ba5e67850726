from pathlib import Path

import pytest

from inferaudit.errors import ConfigError
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
    with pytest.raises(ConfigError, match=r"records.jsonl:2: bad record"):
        read_records(path)
    with pytest.raises(ConfigError, match="no such records file"):
        read_records(tmp_path / "missing.jsonl")
