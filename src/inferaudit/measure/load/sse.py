"""Incremental Server-Sent Events parser (client side), bytes in -> event data out.

Follows the WHATWG "event stream interpretation" rules for what a client needs:

* lines end with CRLF, LF or CR (a CR at the end of one chunk followed by LF at the start of the
  next is one line break);
* a line starting with ``:`` is a comment (keep-alive frames such as ``: ping``);
* ``field:value`` with one optional space after the colon; a line without a colon is a field
  with an empty value; ``data`` lines accumulate, joined with ``\\n``;
* a blank line dispatches the event if it has data; ``event``, ``id`` and ``retry`` are parsed
  and ignored (OpenAI-compatible streams carry everything in ``data``);
* an event not closed by a blank line when the stream ends is discarded (see ``pending``);
* an event (or an unfinished line) of more than :data:`MAX_EVENT_BYTES` raises
  :class:`EventTooLarge`, whether it came in one read or many: a server could otherwise make
  the client hold, and copy on every read, a line without end (completion chunks are a few
  hundred bytes; with 20 top logprobs a token, a few KB).

Chunks may be split anywhere, even inside a UTF-8 character: the parser works on bytes and
only splits on ``\\r``/``\\n``, which never occur inside a multi-byte UTF-8 sequence. Event data is
returned as ``bytes`` (``orjson.loads`` takes bytes directly, so nothing is decoded twice).
"""

from __future__ import annotations

__all__ = ["MAX_EVENT_BYTES", "EventTooLarge", "SSEParser", "parse_all"]

MAX_EVENT_BYTES = 1 << 20
_TOO_LARGE = f"an event of more than {MAX_EVENT_BYTES:,} bytes"


class EventTooLarge(ValueError):
    """An event, or an unfinished line, of more than :data:`MAX_EVENT_BYTES` bytes."""


class SSEParser:
    """Feed bytes with :meth:`feed`; each call returns the data of the events it completed."""

    __slots__ = ("_data", "_held", "_rest", "_skip_lf")

    def __init__(self) -> None:
        self._rest = b""  # an unfinished line (never contains CR or LF)
        self._data: list[bytes] = []  # data lines of the event being built
        self._held = 0  # their bytes
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF is its CRLF

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished line or event are held (a truncated stream)."""
        return bool(self._rest or self._data)

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if (
            not self._rest
            and not self._data
            and chunk[:6] == b"data: "
            and chunk[-2:] == b"\n\n"
            and len(chunk) <= MAX_EVENT_BYTES  # then so is each event in it
        ):
            # fast path, the usual shape of a read: whole "data: X" + blank-line events only.
            # Valid when every LF in the body belongs to a separator between two events.
            body = chunk[6:-2]
            whole = body.split(b"\n\ndata: ")
            if body.count(b"\n") == 2 * (len(whole) - 1) and b"\r" not in body:
                return whole
        buf = self._rest + chunk if self._rest else chunk
        if b"\r" in buf:
            self._skip_lf = buf[-1:] == b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._rest = lines.pop()
        events: list[bytes] = []
        data, held = self._data, self._held
        for line in lines:
            if not line:
                if held > MAX_EVENT_BYTES:
                    raise EventTooLarge(_TOO_LARGE)
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
                    held = 0
            elif line.startswith(b"data: "):
                data.append(line[6:])
                held += len(line)
            elif line.startswith(b"data:"):
                data.append(line[5:])
                held += len(line)
            elif line[0] == 58:  # ":" comment / keep-alive
                continue
            elif line == b"data":  # a field name with no colon: an empty data line
                data.append(b"")
            # event / id / retry / unknown fields: not used by OpenAI-compatible streams
        self._held = held
        if held + len(self._rest) > MAX_EVENT_BYTES:
            raise EventTooLarge(_TOO_LARGE)
        return events


def parse_all(stream: bytes) -> list[bytes]:
    """Parse a complete stream at once (for tests and offline use)."""
    return SSEParser().feed(stream)
