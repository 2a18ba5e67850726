"""Whatever a server streams, the client makes a record that writes and reads back.

A value the client cannot hold must be the endpoint's failure (``sse_malformed``), never an
exception in the worker: an exception stops the whole run as the client's failure, so an
endpoint that knew the trick could turn a FAIL into an invalid run. Hypothesis generates
completion chunks whose every field may be of any JSON type, and raw bytes, and sends each as
the body of one request, read by the client's own reader (``read_stream``) and recorded by its
own ``_record``, as ``execute`` does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from inferaudit.measure.load.client import Target, _record
from inferaudit.measure.load.deadline import Timeouts, Watch
from inferaudit.measure.load.stream import ContentCap, Malformed, Stream, read_stream
from inferaudit.measure.records import Record
from inferaudit.measure.workload import RequestPlan

PLAN = RequestPlan(0, "measure", "hello", 4, 2)

# any JSON value, big integers and odd floats included
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
JSON = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes any JSON value, sometimes absent (the sentinel)."""
    return st.one_of(good, good, JSON, st.just(...))


def pruned(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not ...}


@st.composite
def chunk(draw: st.DrawFn, chat: bool) -> Any:
    text = field(st.text(max_size=4))
    content = pruned({"content": draw(text)}) if chat else None
    choice = pruned(
        {
            "delta": draw(field(st.just(content))) if chat else ...,
            "text": ... if chat else draw(text),
            "finish_reason": draw(field(st.sampled_from([None, "length", "stop"]))),
            "logprobs": draw(st.one_of(st.just(...), st.none(), JSON)),
        }
    )
    counts = st.integers(min_value=0, max_value=2**64)
    usage = pruned({"prompt_tokens": draw(field(counts)), "completion_tokens": draw(field(counts))})
    event = pruned(
        {
            "choices": draw(field(st.just([choice]))),
            "model": draw(field(st.just("m"))),
            "usage": draw(field(st.just(usage))),
            "error": draw(st.one_of(st.just(...), st.just(...), JSON)),
        }
    )
    return draw(st.one_of(st.just(event), st.just(event), st.just(event), JSON))


class Body:
    """The ``readany`` side of aiohttp's StreamReader over fixed reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = list(reads)

    async def readany(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""


async def record_of(reads: list[bytes], chat: bool) -> Record:
    st_ = Stream(status=200)
    watch = Watch(Timeouts(), 0, 0)
    try:
        body = Body(reads)
        await read_stream(body, chat, st_, watch, 0, None, ContentCap.of(PLAN.max_tokens))  # type: ignore[arg-type]
    except Malformed as exc:  # what execute does with it
        st_.fail("sse_malformed", f"bad event: {exc}")
    finally:
        watch.close()
    if st_.done is None:
        st_.done = 1
    target = Target(url="u", models_url="m", headers={}, model="m", chat=chat)
    return _record(st_, PLAN, target, 0, 0, 0, 0)


def assert_writable(rec: Record) -> None:
    assert Record.model_validate_json(rec.to_line()) == rec


@settings(max_examples=300, deadline=None)
@given(chat=st.booleans(), data=st.data())
def test_any_events_make_a_record_that_writes_and_reads_back(
    chat: bool, data: st.DataObject
) -> None:
    events = data.draw(st.lists(chunk(chat), min_size=1, max_size=5))
    per_read = data.draw(st.integers(min_value=1, max_value=3))
    lines = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
    reads = [b"".join(lines[i : i + per_read]) for i in range(0, len(lines), per_read)]
    rec = asyncio.run(record_of(reads, chat))
    assert_writable(rec)
    if rec.ok:  # a request counted as served holds only values of the record's types
        assert rec.output_text is not None and rec.content_chunks == len(rec.chunk_ns) > 0


@settings(max_examples=200, deadline=None)
@given(chat=st.booleans(), reads=st.lists(st.binary(max_size=40), min_size=1, max_size=4))
def test_any_bytes_make_a_record_that_writes_and_reads_back(chat: bool, reads: list[bytes]) -> None:
    assert_writable(asyncio.run(record_of([b"data: " + r for r in reads], chat)))
