"""The log side of C2SP tlog-witness: ask each configured witness to cosign a new checkpoint.

For each witness (all asked at once, one thread each, so a slow witness delays no other):
  1. POST ``{url}/add-checkpoint`` with ``old <size>`` — the size this process last saw the
     witness hold for this log (0 at first) — and the ledger's consistency proof from there;
  2. on 409, read the size the witness holds (``text/x.tlog.size``) and try ONCE more from it;
  3. keep only cosignature lines that verify under that witness's configured key (0x04).
A witness that is down, slow, refuses or answers garbage yields a ``WitnessAnswer`` with
``ok=False`` and one line of detail; ``request_cosignatures`` never raises for a witness.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from inferaudit.errors import LedgerError
from inferaudit.seal.keys import Verifier
from inferaudit.seal.ledger.note import (
    Checkpoint,
    NoteError,
    Signature,
    parse_checkpoint,
    parse_decimal,
    split_note,
    verify_cosignature,
)
from inferaudit.seal.ledger.store import Ledger
from inferaudit.seal.ledger.witness import SIZE_CONTENT_TYPE

MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class WitnessEndpoint:
    url: str  # base URL; POST {url}/add-checkpoint
    key: Verifier  # the witness's cosignature key (alg 0x04)


@dataclass(frozen=True)
class WitnessAnswer:
    witness: str  # key name
    ok: bool
    detail: str  # one line: "cosigned at time T" / "409: witness is at size 12" / ...


@dataclass(frozen=True)
class Cosigned:
    note: str  # the checkpoint note with every VALID cosignature line added
    answers: tuple[WitnessAnswer, ...]


# The size each witness was last seen to hold, per (origin, witness URL, witness key): a hint
# only (a witness that restarted or moved on answers 409 with its size, and is asked again).
_sizes: dict[tuple[str, str, str], int] = {}
_sizes_lock = threading.Lock()


def _remembered(origin: str, w: WitnessEndpoint) -> int:
    with _sizes_lock:
        return _sizes.get((origin, w.url, w.key.text()), 0)


def _remember(origin: str, w: WitnessEndpoint, size: int) -> None:
    with _sizes_lock:
        _sizes[(origin, w.url, w.key.text())] = size


class _Refused(Exception):
    """One witness's answer that ends the exchange with it (``detail`` is the one line)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _body(ledger: Ledger, old: int, cp: Checkpoint, note: str) -> bytes:
    try:
        proof = [] if old in (0, cp.size) else ledger.consistency_proof(old, cp.size)
    except LedgerError as exc:
        raise _Refused(f"no consistency proof from size {old}: {exc}") from None
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


def _post(client: httpx.Client, url: str, body: bytes) -> tuple[int, str, str]:
    """(status, content type, text) of a POST, the answer read up to MAX_ANSWER_BYTES."""
    with client.stream("POST", url, content=body, headers={"Content-Type": "text/plain"}) as r:
        data = bytearray()
        for chunk in r.iter_bytes():
            data += chunk
            if len(data) > MAX_ANSWER_BYTES:
                raise _Refused(f"{r.status_code}: answer is over {MAX_ANSWER_BYTES} bytes")
        ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
        return r.status_code, ctype, data.decode("utf-8", errors="replace")


def _held_size(ctype: str, text: str) -> int:
    """The size a 409 answer says the witness holds (``text/x.tlog.size``: ``<size>\\n``)."""
    if ctype != SIZE_CONTENT_TYPE:
        raise _Refused(f"409 with content type {ctype[:40]!r}, not {SIZE_CONTENT_TYPE}")
    if not text.endswith("\n") or "\n" in text[:-1]:
        raise _Refused("409 without a size line")
    try:
        return parse_decimal(text[:-1], "witness size")
    except NoteError:
        raise _Refused(f"409 with a malformed size {text[:30]!r}") from None


def _cosignatures(cp_text: str, answer: str, key: Verifier) -> tuple[Signature, int]:
    """The answer's cosignature by ``key`` and its timestamp; other keys' lines are ignored."""
    try:
        _, sigs = split_note(cp_text + "\n" + answer)
    except NoteError as exc:
        raise _Refused(f"200 with malformed cosignature lines: {exc}") from None
    for sig in sigs:
        if (sig.name, sig.key_hash) != (key.name, key.key_hash):
            continue
        try:
            timestamp = verify_cosignature(cp_text, sig, key)
        except NoteError as exc:
            raise _Refused(f"200 with a malformed cosignature: {exc}") from None
        if timestamp is None:
            raise _Refused(f"200 but the cosignature by {key.keyid} does not verify")
        return sig, timestamp
    raise _Refused(f"200 without a cosignature by {key.keyid}")


def _ask(
    ledger: Ledger, cp: Checkpoint, cp_text: str, note: str, w: WitnessEndpoint, timeout_s: float
) -> tuple[WitnessAnswer, Signature | None]:
    name = w.key.name
    url = w.url.rstrip("/") + "/add-checkpoint"
    old = min(_remembered(cp.origin, w), cp.size)
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            for attempt in (1, 2):
                status, ctype, text = _post(client, url, _body(ledger, old, cp, note))
                if status == 200:
                    sig, timestamp = _cosignatures(cp_text, text, w.key)
                    _remember(cp.origin, w, cp.size)
                    return WitnessAnswer(name, True, f"cosigned at time {timestamp}"), sig
                if status != 409:
                    line = text.strip().splitlines()[0][:200] if text.strip() else ""
                    raise _Refused(f"{status}: {line}" if line else f"{status}")
                held = _held_size(ctype, text)
                _remember(cp.origin, w, held)
                detail = f"409: witness is at size {held}"
                if held > cp.size:
                    raise _Refused(f"{detail}, beyond this checkpoint's size {cp.size}")
                if held == old or attempt == 2:
                    raise _Refused(detail)
                old = held
    except _Refused as refused:
        return WitnessAnswer(name, False, refused.detail), None
    except httpx.HTTPError as exc:
        return WitnessAnswer(name, False, f"unreachable: {type(exc).__name__}: {exc}"), None
    raise AssertionError("the retry loop always returns: the code has a bug")


def request_cosignatures(
    ledger: Ledger,
    note: str,
    witnesses: Sequence[WitnessEndpoint],
    *,
    timeout_s: float = 10.0,
) -> Cosigned:
    """Ask every witness to cosign ``note`` (a checkpoint of ``ledger``); add the valid lines.

    A cosignature line by a key that already signed the note is not added twice.
    """
    cp_text, present = split_note(note)
    cp = parse_checkpoint(cp_text)
    if not witnesses:
        return Cosigned(note=note, answers=())
    with ThreadPoolExecutor(max_workers=len(witnesses), thread_name_prefix="witness") as pool:
        results = list(pool.map(lambda w: _ask(ledger, cp, cp_text, note, w, timeout_s), witnesses))
    signed = {(s.name, s.key_hash) for s in present}
    lines = []
    for _, sig in results:
        if sig is not None and (sig.name, sig.key_hash) not in signed:
            signed.add((sig.name, sig.key_hash))
            lines.append(sig.line())
    return Cosigned(note=note + "".join(lines), answers=tuple(a for a, _ in results))
