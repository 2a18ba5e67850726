"""A completion chunk's bytes around its content, so that the chunks after it parse without JSON.

The chunks of one stream are nearly always the same bytes but for their content: OpenAI's,
vLLM's and SGLang's carry the same ``id``, ``created``, ``model`` and ``system_fingerprint`` in
every chunk. Parsing each with ``orjson`` and walking the dict to ``choices[0].delta.content`` is
the largest cost of the client's hot loop after the HTTP client itself. A :class:`Template` is
learnt from a chunk the loop parsed in full, and reads the content of a later chunk that has its
exact prefix and suffix bytes with two slices and one decode (for a read of many chunks, one
decode for all of them).

It is exact, not a heuristic a server could steer: a chunk read through a template has the
value ``orjson`` would give it, or the template is not used for it. Why: a template is only
learnt from a chunk whose one effect on its request is its content (a non-empty string, no
``finish_reason``, ``logprobs`` or ``usage``; its ``model`` was seen when it was parsed), and it
is proven on that chunk before it is used: its prefix + ``"Zq"`` + suffix must parse to that
chunk with content ``"Zq"`` and nothing else changed (deep equality). ``Z`` can only stand
inside a JSON string, so the prefix ends inside a string; the proof shows that string is the
content and nothing more (its value is exactly the probe). A middle with no ``"``, ``\\`` or
control character (checked) is then read by a JSON parser as exactly its characters in that
string, and the rest of the chunk is the same bytes, so the same values. A middle that fails
the check, or bytes that are not UTF-8, send the read back to the full parse, which makes of it
what it always did (``sse_malformed`` for bad bytes). A server that varies every chunk (a
``created`` that changes) only keeps the template from being used: :data:`MAX_LEARNT` a request
bounds the learning it costs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["MAX_LEARNT", "Template", "texts"]

MAX_LEARNT = 8  # templates learnt a request at most (a server that changes every chunk)
_PROBE = "Zq"
_NOT_PLAIN = re.compile(rb'[\x00-\x1f"\\]')  # what a middle read as itself must not hold
_NOT_PLAIN_BUT_QUOTE = re.compile(rb"[\x00-\x1f\\]")


def _content(obj: Any, chat: bool) -> Any:
    """``choices[0].delta.content`` (chat) or ``choices[0].text`` of a chunk that is a plain
    content chunk; None for any other chunk (and any other shape)."""
    if not isinstance(obj, dict) or obj.get("usage"):
        return None
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    if choice.get("finish_reason") is not None or choice.get("logprobs"):
        return None
    if not chat:
        return choice.get("text")
    delta = choice.get("delta")
    return delta.get("content") if isinstance(delta, dict) else None


def _with_content(obj: Any, chat: bool, text: str) -> Any:
    choice = obj["choices"][0]
    if chat:
        choice["delta"]["content"] = text
    else:
        choice["text"] = text
    return obj


@dataclass(frozen=True, slots=True)
class Template:
    """The bytes of a content chunk before its content's characters and after them."""

    prefix: bytes
    suffix: bytes

    @classmethod
    def learn(cls, event: bytes, obj: Any, chat: bool) -> Template | None:
        """The template of ``event`` (whose parse is ``obj``), proven on it (module docstring);
        None when it is not a plain content chunk, or its content is not written as itself."""
        text = _content(obj, chat)
        if not isinstance(text, str) or not text or text == _PROBE:
            return None
        raw = text.encode()
        if _NOT_PLAIN.search(raw):
            return None
        quoted = b'"' + raw + b'"'
        last = event.rfind(quoted)
        if last < 0:
            return None  # written with escapes
        expected = _with_content(orjson.loads(event), chat, _PROBE)
        # the content is usually the chunk's last string; then its first (another field may
        # hold the same text): neither proven, and there is no template
        for at in dict.fromkeys((last, event.find(quoted))):
            template = cls(event[: at + 1], event[at + 1 + len(raw) :])
            try:
                probed = orjson.loads(template.prefix + _PROBE.encode() + template.suffix)
            except orjson.JSONDecodeError:
                continue
            if probed == expected:
                return template
        return None

    def fits(self, event: bytes) -> bool:
        """``event`` has this template's prefix and suffix around a non-empty middle."""
        return (
            len(event) > len(self.prefix) + len(self.suffix)
            and event.startswith(self.prefix)
            and event.endswith(self.suffix)
        )

    def middles(self, events: list[bytes], start: int) -> list[bytes]:
        """The middles of the run of ``events`` from ``start`` on that fit this template (its
        length is the run's); :func:`texts` reads them."""
        prefix, suffix = self.prefix, self.suffix
        head, least = len(prefix), len(prefix) + len(suffix)
        tail = -len(suffix) or None
        out: list[bytes] = []
        for event in events[start:] if start else events:
            if len(event) > least and event.startswith(prefix) and event.endswith(suffix):
                out.append(event[head:tail])
            else:
                break
        return out

    def next_fit(self, events: list[bytes], start: int) -> int:
        """The index of the first of ``events`` from ``start`` on that fits, or their count."""
        for at in range(start, len(events)):
            if self.fits(events[at]):
                return at
        return len(events)


def texts(middles: list[bytes]) -> list[str] | None:
    """The contents of a run of chunks from their middles (:meth:`Template.middles`), or None
    when one of them must be read by the full parse."""
    if len(middles) == 1:
        if _NOT_PLAIN.search(middles[0]):
            return None
        try:
            return [middles[0].decode()]
        except UnicodeDecodeError:
            return None
    joined = b'"'.join(middles)
    if joined.count(b'"') != len(middles) - 1 or _NOT_PLAIN_BUT_QUOTE.search(joined):
        return None
    try:  # '"' is ASCII: it never splits a character, so this fails iff one middle would
        return joined.decode().split('"')
    except UnicodeDecodeError:
        return None
