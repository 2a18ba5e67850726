"""SSE parser: WHATWG examples, OpenAI-style streams, and chunks split at every byte offset."""

from __future__ import annotations

import itertools

import pytest

from inferaudit.measure.load.sse import MAX_EVENT_BYTES, EventTooLarge, SSEParser, parse_all


def feed_in_pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    parser = SSEParser()
    events: list[bytes] = []
    bounds = [0, *cuts, len(stream)]
    for lo, hi in itertools.pairwise(bounds):
        events += parser.feed(stream[lo:hi])
    return events


def test_whatwg_multiline_data_joined_with_newlines() -> None:
    # https://html.spec.whatwg.org/multipage/server-sent-events.html (stock ticker example)
    assert parse_all(b"data: YHOO\ndata: +2\ndata: 10\n\n") == [b"YHOO\n+2\n10"]


def test_whatwg_comments_ids_and_one_space_stripped() -> None:
    stream = (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    assert parse_all(stream) == [b"first event", b"second event", b" third event"]


def test_whatwg_empty_data_fields_and_unterminated_last_event() -> None:
    parser = SSEParser()
    assert parser.feed(b"data\n\ndata\ndata\n\ndata:") == [b"", b"\n"]
    assert parser.pending  # the last event was never closed by a blank line


def test_event_retry_and_unknown_fields_do_not_become_data() -> None:
    stream = b"event: message\nretry: 10\nfoo: bar\ndataX: no\ndata: yes\n\n"
    assert parse_all(stream) == [b"yes"]


def test_lines_without_data_dispatch_nothing() -> None:
    assert parse_all(b"event: ping\n\n: keep-alive\n\n\n\n") == []


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"])
def test_all_line_endings(nl: bytes) -> None:
    stream = b"data: a" + nl + b"data: b" + nl + nl + b"data: [DONE]" + nl + nl
    assert parse_all(stream) == [b"a\nb", b"[DONE]"]


OPENAI_STREAM = (
    b": keep-alive\r\n\r\n"
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\r\n\r\n'
    b'data: {"choices":[{"delta":{"content":"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80"}}]}\r\n'
    b"\r\n"
    b"data: line one\r\ndata: line two\r\n\r\n"
    b": ping\r\n"
    b'data: {"choices":[],"usage":{"completion_tokens":2}}\r\n\r\n'
    b"data: [DONE]\r\n\r\n"
)
OPENAI_EVENTS = [
    b'{"choices":[{"delta":{"role":"assistant","content":""}}]}',
    b'{"choices":[{"delta":{"content":"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80"}}]}',
    b"line one\nline two",
    b'{"choices":[],"usage":{"completion_tokens":2}}',
    b"[DONE]",
]


def test_openai_style_stream_in_one_piece() -> None:
    assert parse_all(OPENAI_STREAM) == OPENAI_EVENTS


def test_split_at_every_single_offset() -> None:
    # includes cuts inside CRLF pairs and inside 2-, 3- and 4-byte UTF-8 characters
    for cut in range(1, len(OPENAI_STREAM)):
        assert feed_in_pieces(OPENAI_STREAM, [cut]) == OPENAI_EVENTS, cut


def test_split_at_every_pair_of_offsets() -> None:
    stream = b'data: {"t":"\xe2\x82\xac"}\r\n\r\n: c\r\ndata: x\r\n\r\n'
    expected = [b'{"t":"\xe2\x82\xac"}', b"x"]
    for a in range(1, len(stream)):
        for b in range(a, len(stream)):
            assert feed_in_pieces(stream, [a, b]) == expected, (a, b)


def test_one_byte_at_a_time_with_bare_cr_line_ends() -> None:
    stream = OPENAI_STREAM.replace(b"\r\n", b"\r")
    assert feed_in_pieces(stream, list(range(1, len(stream)))) == OPENAI_EVENTS


def test_cr_then_lf_in_next_chunk_is_one_line_break() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # the LF completes the CRLF: not an empty line
    assert parser.feed(b"\r\n") == [b"a"]
    assert not parser.pending


def test_empty_chunks_are_harmless() -> None:
    parser = SSEParser()
    assert parser.feed(b"") == []
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == [b"a"]


PLAIN_STREAM = (
    b"".join(b'data: {"choices":[{"text":" t%d \xc3\xa9"}]}\n\n' % k for k in range(5))
    + b"data: [DONE]\n\n"
)
PLAIN_EVENTS = [b'{"choices":[{"text":" t%d \xc3\xa9"}]}' % k for k in range(5)] + [b"[DONE]"]


def test_plain_data_stream_whole_and_split_everywhere() -> None:
    # whole reads of "data: X\n\n" events take the parser's fast path; other cuts do not
    assert parse_all(PLAIN_STREAM) == PLAIN_EVENTS
    for a in range(1, len(PLAIN_STREAM)):
        assert feed_in_pieces(PLAIN_STREAM, [a]) == PLAIN_EVENTS, a
    for a in range(1, len(PLAIN_STREAM), 7):
        for b in range(a, len(PLAIN_STREAM), 5):
            assert feed_in_pieces(PLAIN_STREAM, [a, b]) == PLAIN_EVENTS, (a, b)


@pytest.mark.parametrize(
    ("stream", "events"),
    [
        (b"data: a\ndata: b\n\n", [b"a\nb"]),  # two data lines, one event
        (b"data: a\n\n\ndata: b\n\n", [b"a", b"b"]),  # an extra blank line
        (b"data: a\n\ndata:b\n\n", [b"a", b"b"]),  # no space after the colon
        (b"data: a\n\nid: 1\n\n", [b"a"]),  # a field that is not data
        (b"data: a\n\n: c\ndata: b\n\n", [b"a", b"b"]),  # a comment
        (b"data: a\n\ndata: b\ndata: c\n\n", [b"a", b"b\nc"]),
        (b"data: a\r\n\r\ndata: b\n\n", [b"a", b"b"]),
    ],
)
def test_shapes_near_the_fast_path(stream: bytes, events: list[bytes]) -> None:
    assert parse_all(stream) == events


def test_an_event_without_end_is_refused_past_the_limit() -> None:
    """A line (or an event's data lines) with no end would be held and copied on every read;
    past MAX_EVENT_BYTES the parser refuses it, not before."""
    piece = b"x" * 65536
    parser = SSEParser()
    parser.feed(b"data: ")
    fed = 6
    while fed + len(piece) <= MAX_EVENT_BYTES:
        assert parser.feed(piece) == []
        fed += len(piece)
    with pytest.raises(EventTooLarge, match="an event of more than 1,048,576 bytes"):
        parser.feed(piece)
    lines = SSEParser()
    line = b"data: " + b"y" * 1000 + b"\n"  # data lines, never a blank line
    for _ in range(MAX_EVENT_BYTES // len(line)):
        assert lines.feed(line) == []
    with pytest.raises(EventTooLarge):
        lines.feed(line * 2)


def test_events_up_to_the_limit_and_the_limit_per_event() -> None:
    parser = SSEParser()
    big = b"z" * (MAX_EVENT_BYTES - 6)
    events = [parser.feed(b"data: " + big[:1000]), parser.feed(big[1000:]), parser.feed(b"\n\n")]
    assert events == [[], [], [big]]
    # the count starts again with each event: many events of half the limit are fine
    half = b"data: " + b"h" * (MAX_EVENT_BYTES // 2) + b"\n\n"
    assert [len(e) for e in parser.feed(half * 3)] == [MAX_EVENT_BYTES // 2] * 3
    # one read that holds a whole event over the limit is refused too
    with pytest.raises(EventTooLarge):
        SSEParser().feed(b"data: " + b"o" * MAX_EVENT_BYTES + b"\n\n")
    with pytest.raises(EventTooLarge):
        SSEParser().feed(b"data: a\n\n" + b"data: " + b"o" * MAX_EVENT_BYTES + b"\n\n")
