"""C2SP tlog-tiles export: a static directory any HTTP server can serve.

Layout (tlog-tiles v0.1.0, tile height 8, so 256 hashes per full tile)::

    checkpoint                     the latest signed checkpoint note
    tile/<L>/<N>[.p/<W>]           hashes of tree level 8·L, nodes 256·N .. 256·N+W-1
    tile/entries/<N>[.p/<W>]       entries 256·N .. 256·N+W-1, each as uint16-BE length || bytes

A tile index N is written in 3-digit groups with ``x`` before all but the last:
1234067 -> ``x001/x234/067``. Partial tiles (width W < 256) carry ``.p/<W>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from inferaudit.errors import LedgerError
from inferaudit.seal.ledger.note import parse_checkpoint, split_note
from inferaudit.seal.ledger.store import MAX_LEAF_BYTES, Ledger

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT


def tile_index_path(n: int) -> str:
    """1234067 -> ``x001/x234/067``."""
    if n < 0:
        raise ValueError(f"tile index {n} is negative")
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def tile_path(level: int | str, n: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>`` (full) or ``tile/<L>/<N>.p/<W>`` (partial); L may be ``entries``."""
    if not 0 < width <= TILE_WIDTH:
        raise ValueError(f"tile width {width} is outside 1..{TILE_WIDTH}")
    base = f"tile/{level}/{tile_index_path(n)}"
    return base if width == TILE_WIDTH else f"{base}.p/{width}"


def tile_widths(count: int) -> list[tuple[int, int]]:
    """(tile index, width) for a row of ``count`` hashes or entries."""
    out = [(n, TILE_WIDTH) for n in range(count // TILE_WIDTH)]
    if count % TILE_WIDTH:
        out.append((count // TILE_WIDTH, count % TILE_WIDTH))
    return out


def bundle(entries: list[bytes]) -> bytes:
    """An entry bundle: each entry prefixed by its length as a big-endian uint16."""
    out = bytearray()
    for e in entries:
        if len(e) > MAX_LEAF_BYTES:
            raise LedgerError(f"entry of {len(e)} bytes cannot go into a tile bundle")
        out += len(e).to_bytes(2, "big") + e
    return bytes(out)


def unbundle(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise LedgerError("entry bundle is truncated")
        n = int.from_bytes(data[i : i + 2], "big")
        if i + 2 + n > len(data):
            raise LedgerError("entry bundle is truncated")
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    return out


@dataclass(frozen=True)
class TileExport:
    size: int
    hash_tiles: int
    entry_tiles: int


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def export_tiles(ledger: Ledger, out: Path) -> TileExport:
    """Write the tiles of the latest signed checkpoint's tree under ``out``."""
    note = ledger.latest_checkpoint()
    if note is None:
        raise LedgerError("the log has no signed checkpoint yet (run `ledger checkpoint`)")
    size = parse_checkpoint(split_note(note)[0]).size
    hash_tiles = entry_tiles = 0
    level = 0
    while size >> (TILE_HEIGHT * level):
        count = size >> (TILE_HEIGHT * level)
        for n, width in tile_widths(count):
            start = n * TILE_WIDTH
            hashes = ledger.hashes(TILE_HEIGHT * level, start, start + width)
            _write(out / tile_path(level, n, width), b"".join(hashes))
            hash_tiles += 1
        level += 1
    for n, width in tile_widths(size):
        start = n * TILE_WIDTH
        _write(out / tile_path("entries", n, width), bundle(ledger.entries(start, start + width)))
        entry_tiles += 1
    _write(out / "checkpoint", note.encode())
    return TileExport(size=size, hash_tiles=hash_tiles, entry_tiles=entry_tiles)
