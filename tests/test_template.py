"""Content chunks read through a template give exactly what the full JSON parse gives.

Known answers for what a template is learnt from and what it refuses; then Hypothesis streams
built to sit on a template's edge (middles holding quotes, backslashes, escapes, control
characters, broken UTF-8; chunks whose other fields change, or hold the content's text; reads
of one chunk and of many), each read twice by the client's own ``read_stream``, once with
templates and once parsing every chunk: the two must agree on everything the record is made of.
"""

from __future__ import annotations

import asyncio
from dataclasses import astuple
from itertools import pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferaudit.measure.load import template as template_module
from inferaudit.measure.load.deadline import Timeouts, Watch
from inferaudit.measure.load.stream import ContentCap, Malformed, Stream, read_stream
from inferaudit.measure.load.template import Template, texts
from test_hostile_events import Body

OPENAI = (
    b'{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"m","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"'
)
OPENAI_END = b'"},"logprobs":null,"finish_reason":null}]}'
COMPLETION = b'{"id":"cmpl-1","object":"text_completion","model":"m","choices":[{"text":"'
COMPLETION_END = b'","index":0,"finish_reason":null}]}'


def learn(event: bytes, chat: bool = True) -> Template | None:
    return Template.learn(event, orjson.loads(event), chat)


def test_a_template_is_the_bytes_around_the_content_and_reads_later_chunks() -> None:
    template = learn(OPENAI + b" Hello" + OPENAI_END)
    assert template == Template(OPENAI, OPENAI_END)
    events = [OPENAI + b" wor" + OPENAI_END, OPENAI + "ld é".encode() + OPENAI_END, b'{"x":1}']
    assert template.middles(events, 0) == [b" wor", "ld é".encode()]
    assert template.middles(events, 1) == ["ld é".encode()]
    assert template.middles(events, 2) == []
    assert texts(template.middles(events, 0)) == [" wor", "ld é"]
    assert texts(template.middles(events, 1)) == ["ld é"]
    assert learn(COMPLETION + b"a" + COMPLETION_END, chat=False) == Template(
        COMPLETION, COMPLETION_END
    )


@pytest.mark.parametrize(
    "event",
    [
        OPENAI + b"\\u0041" + OPENAI_END,  # content written with an escape
        OPENAI + b'a\\"b' + OPENAI_END,  # content holding a quote
        OPENAI + b"" + OPENAI_END,  # no content
        OPENAI + b"a" + OPENAI_END.replace(b'"finish_reason":null', b'"finish_reason":"stop"'),
        OPENAI + b"a" + OPENAI_END.replace(b'"logprobs":null', b'"logprobs":{"content":[]}'),
        OPENAI + b"a" + OPENAI_END[:-1] + b',"usage":{"completion_tokens":1}}',
        # a later duplicate key wins: the bytes that look like the content are not it
        b'{"choices":[{"delta":{"content":"b","content":"\\u0062"}}]}',
    ],
)
def test_a_chunk_that_is_not_only_its_plain_content_gives_no_template(event: bytes) -> None:
    assert learn(event) is None


def test_the_content_is_found_where_the_proof_holds_not_where_its_text_also_stands() -> None:
    # the model's value is the same text, and is the last of it in the chunk
    event = b'{"choices":[{"delta":{"content":"m"}}],"model":"m"}'
    template = learn(event)
    assert template == Template(b'{"choices":[{"delta":{"content":"', b'"}}],"model":"m"}')
    # the text stands last in a choice that is not the first
    event = b'{"choices":[{"delta":{"content":"b"}},{"delta":{"content":"b"}}]}'
    assert learn(event) == Template(event[:33], event[34:])
    # of duplicate keys the last wins: here neither the first nor the last "b" is it
    event = b'{"choices":[{"delta":{"content":"b","content":"b"}}],"x":"b"}'
    assert learn(event) is None


@pytest.mark.parametrize(
    "middle",
    [b'a"b', b"a\\nb", b"a\x01b", b"\xff", b"\xe2\x82"],
)
def test_a_middle_the_json_parser_would_read_otherwise_goes_back_to_it(middle: bytes) -> None:
    template = Template(OPENAI, OPENAI_END)
    event = OPENAI + middle + OPENAI_END
    assert template.middles([event], 0) == [middle]
    assert texts([middle]) is None
    assert texts([b"ok", middle]) is None


def read(reads: list[bytes], chat: bool, templates: bool) -> tuple[object, ...]:
    stream = Stream(status=200)

    async def go() -> str | None:
        watch = Watch(Timeouts(), 0, 0)
        try:
            await read_stream(
                Body(reads),  # type: ignore[arg-type]
                chat,
                stream,
                watch,
                0,
                None,
                ContentCap.of(None),
                templates=templates,
            )
        except Malformed as exc:
            return str(exc)
        finally:
            watch.close()
        return None

    malformed = asyncio.run(go())
    stream.chunk_ns = [0] * len(stream.chunk_ns)  # read times differ; their count may not
    for name in ("first_chunk", "first_content", "done"):
        setattr(stream, name, getattr(stream, name) is not None)
    return (malformed, *astuple(stream))


# middles: as themselves, written with escapes JSON reads otherwise (the template must refuse
# them), and not JSON at all (both reads must make the same sse_malformed of it)
PLAIN = [b"a", b" tok", "é".encode(), "字".encode(), b"Zq", b"m", b""]
ESCAPED = [b"\\n", b"\\u0041", b'\\"', b"\\\\"]
INVALID = [b'"', b"\\", b"\x01", b"\t", b"\xff", b"\xe2\x82"]
SHAPES = [
    (OPENAI, OPENAI_END, True),
    (COMPLETION, COMPLETION_END, False),
    (b'{"model":"m","choices":[{"delta":{"content":"', b'"}}]}', True),
    (b'{"choices":[{"delta":{"content":"', b'"}}],"model":"m"}', True),
    (b'{"choices":[{"delta":{"content":"', b'"},"finish_reason":"stop"}]}', True),
    (b'{"choices":[{"delta":{"content":"', b'"}}],"choices":[{"delta":{"content":"x"}}]}', True),
]


@st.composite
def stream_reads(draw: st.DrawFn) -> tuple[bool, list[bytes]]:
    prefix, suffix, chat = draw(st.sampled_from(SHAPES))
    piece = st.sampled_from(PLAIN * 4 + ESCAPED)
    count = draw(st.integers(min_value=1, max_value=30))
    invalid = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=count - 1)))
    events: list[bytes] = []
    for k in range(count):
        kind = draw(st.integers(min_value=0, max_value=19))
        middle = b"".join(draw(st.lists(piece, min_size=1, max_size=3)))
        if k == invalid:
            middle += draw(st.sampled_from(INVALID))
        if kind == 0:  # another field changes: the template misses, and is learnt again
            events.append(prefix.replace(b'"m"', b'"m2"') + middle + suffix)
        elif kind == 1:
            events.append(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}')
        elif kind == 2:
            events.append(prefix + middle + suffix.replace(b"null", b'"length"', 1))
        else:
            events.append(prefix + middle + suffix)
    lines = [b"data: " + e + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=len(lines) - 1), max_size=8)))
    return chat, [b"".join(lines[a:b]) for a, b in pairwise([0, *cuts, len(lines)])]


@settings(max_examples=600, deadline=None)
@given(case=stream_reads())
def test_reading_through_templates_gives_what_parsing_every_chunk_gives(
    case: tuple[bool, list[bytes]],
) -> None:
    chat, reads = case
    assert read(reads, chat, templates=True) == read(reads, chat, templates=False)


def test_a_plain_stream_is_read_through_its_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above is of something: a usual stream's chunks after the first are not
    parsed as JSON (every JSON parse is counted)."""
    loads: list[int] = []
    real = orjson.loads

    def counted(data: bytes | str) -> object:
        loads.append(1)
        return real(data)

    monkeypatch.setattr("inferaudit.measure.load.stream.orjson.loads", counted)
    chunks = [b"data: " + OPENAI + b"t%d" % k + OPENAI_END + b"\n\n" for k in range(50)]
    reads = [*chunks, b"data: [DONE]\n\n"]  # one chunk a read, as a real server streams
    assert read(reads, True, templates=True)[0] is None
    parsed_with = len(loads)
    loads.clear()
    read(reads, True, templates=False)
    assert parsed_with == 3 and len(loads) == 50  # the first chunk, its template's 2 (proof)


def test_a_server_that_changes_every_chunk_costs_a_bounded_learning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    learnt: list[int] = []
    real = Template.learn

    def counted(event: bytes, obj: object, chat: bool) -> Template | None:
        learnt.append(1)
        return real(event, obj, chat)

    monkeypatch.setattr(Template, "learn", staticmethod(counted))
    chunks = [
        b"data: " + OPENAI.replace(b"1700000000", b"%d" % k) + b"t" + OPENAI_END + b"\n\n"
        for k in range(40)
    ]
    assert read([*chunks, b"data: [DONE]\n\n"], True, templates=True)[0] is None
    assert len(learnt) == template_module.MAX_LEARNT
