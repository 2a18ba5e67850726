"""A pure-Python HTTP/1.1 response parser with httptools' interface: the fallback of
:mod:`~inferaudit.measure.load.h1` where ``httptools`` (llhttp, C) is not installed.

It calls the same callbacks of its protocol as ``httptools.HttpResponseParser`` does
(``on_message_begin``, ``on_header``, ``on_headers_complete``, ``on_body``,
``on_message_complete``) and answers ``get_status_code`` and ``should_keep_alive`` as it does;
``tests/test_h1.py`` feeds both the same responses, cut at every byte, and requires the same
calls. Strict where llhttp is strict by default: CRLF line ends, header names that are tokens,
no folded lines, one ``Content-Length`` and never with ``Transfer-Encoding``, chunk sizes in hex.
The end of a body that runs to the connection's close is the caller's to see (as with
httptools, which has no ``feed_eof``).
"""

from __future__ import annotations

import re
from typing import Protocol

__all__ = ["ParseError", "PyResponseParser", "ResponseCallbacks"]

_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)(?:;[^\r\n]*)?")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_LINE_LIMIT = 8192  # a chunk-size or trailer line longer than this is refused

# states
_HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ParseError(Exception):
    """The bytes are not an HTTP/1.1 response (as ``httptools.HttpParserError``)."""


class ResponseCallbacks(Protocol):
    def on_message_begin(self) -> None: ...
    def on_header(self, name: bytes, value: bytes) -> None: ...
    def on_headers_complete(self) -> None: ...
    def on_body(self, body: bytes) -> None: ...
    def on_message_complete(self) -> None: ...


class PyResponseParser:
    """Responses, one after another, from the bytes fed in (see the module docstring)."""

    def __init__(self, protocol: ResponseCallbacks) -> None:
        self._p = protocol
        self._buf = b""  # a chunk-size or trailer line cut across reads
        self._head: list[bytes] = []  # a head cut across reads, in pieces
        self._tail = b""  # its last 3 bytes
        self._state = _DONE
        self._status = 0
        self._keep_alive = False
        self._left = 0  # bytes left of a sized body or of the current chunk
        self._closed = False  # a response said its connection closes after it: no more

    def get_status_code(self) -> int:
        return self._status

    def should_keep_alive(self) -> bool:
        return self._keep_alive

    def feed_data(self, data: bytes) -> None:
        if self._head:  # a head cut across reads: look for its end in the new bytes only
            seen = self._tail
            if (seen + data).find(b"\r\n\r\n") < 0:
                self._check_line_ends(seen[-1:] + data if seen[-1:] == b"\r" else data)
                self._head.append(data)
                self._tail = (seen + data)[-3:]
                return
            data, self._head = b"".join(self._head) + data, []
        elif self._buf:
            data, self._buf = self._buf + data, b""
        at, n = 0, len(data)
        while at < n:
            state = self._state
            if state in (_LENGTH, _CHUNK_DATA):
                take = min(self._left, n - at)
                self._p.on_body(data if take == n else data[at : at + take])
                at += take
                self._left -= take
                if not self._left:
                    if state == _LENGTH:
                        self._complete()
                    else:
                        self._state = _CHUNK_END
            elif state == _UNTIL_CLOSE:
                self._p.on_body(data[at:] if at else data)
                return
            elif state == _DONE:
                if self._closed:
                    raise ParseError("data after a response that closes its connection")
                self._begin()
            elif state == _HEAD:  # (the caller limits a head's length)
                end = data.find(b"\r\n\r\n", at)
                head = data[at:] if end < 0 else data[at:end]
                self._check_line_ends(head)
                if end < 0:
                    self._head, self._tail = [head], head[-3:]
                    return
                self._parse_head(head)
                at = end + 4
            else:
                end = data.find(b"\r\n", at)
                if end < 0:
                    if n - at > _LINE_LIMIT:
                        raise ParseError("a line of more than 8,192 bytes")
                    self._buf = data[at:]
                    return
                self._line(data[at:end])
                at = end + 2

    def _begin(self) -> None:
        self._p.on_message_begin()
        self._state = _HEAD

    @staticmethod
    def _check_line_ends(data: bytes) -> None:
        if data.count(b"\n") != data.count(b"\r\n"):
            raise ParseError("a line of the head ends without CRLF")

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        m = _STATUS.fullmatch(lines[0])
        if m is None:
            raise ParseError(f"not a status line: {lines[0][:40]!r}")
        minor, self._status = m.group(1), int(m.group(2))
        length: int | None = None
        chunked = coded = False
        connection: list[bytes] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or _TOKEN.fullmatch(name) is None:
                raise ParseError(f"not a header line: {line[:40]!r}")
            value = value.lstrip(b" \t")  # as llhttp: the value's trailing blanks stay
            if _CONTROL.search(value) is not None:
                raise ParseError("a header value holds a control character")
            key = name.lower()
            if key == b"content-length":
                digits = value.rstrip(b" \t")
                if length is not None or not digits.isdigit():
                    raise ParseError(f"Content-Length {value[:20]!r}")
                length = int(digits)
            elif key == b"transfer-encoding":
                coded = True
                chunked = value.rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked"
            elif key == b"connection":
                connection += [t.strip(b" \t").lower() for t in value.split(b",")]
            self._p.on_header(name, value)
        if coded and length is not None:
            raise ParseError("Content-Length with Transfer-Encoding")
        if minor == b"1":
            self._keep_alive = b"close" not in connection
        else:
            self._keep_alive = b"keep-alive" in connection
        self._p.on_headers_complete()
        if 100 <= self._status < 200 or self._status in (204, 304):
            self._complete()
        elif chunked:
            self._state = _CHUNK_LINE
        elif length is not None:
            self._left = length
            self._state = _LENGTH
            if not length:
                self._complete()
        else:  # the body runs to the connection's close
            self._keep_alive = False
            self._state = _UNTIL_CLOSE

    def _line(self, line: bytes) -> None:
        if self._state == _CHUNK_LINE:
            m = _CHUNK_SIZE.fullmatch(line)
            if m is None or len(m.group(1)) > 15:
                raise ParseError(f"not a chunk size: {line[:20]!r}")
            self._left = int(m.group(1), 16)
            self._state = _CHUNK_DATA if self._left else _TRAILERS
        elif self._state == _CHUNK_END:
            if line:
                raise ParseError("no CRLF after a chunk's data")
            self._state = _CHUNK_LINE
        elif not line:  # _TRAILERS: the empty line ends them, and the message
            self._complete()
        else:
            name, colon, value = line.partition(b":")
            if not colon or _TOKEN.fullmatch(name) is None:
                raise ParseError(f"not a trailer line: {line[:40]!r}")
            self._p.on_header(name, value.lstrip(b" \t"))

    def _complete(self) -> None:
        self._state = _DONE
        # after a 101 the connection is no longer HTTP's
        self._closed = self._status == 101 or (not self._keep_alive and self._status >= 200)
        self._p.on_message_complete()
