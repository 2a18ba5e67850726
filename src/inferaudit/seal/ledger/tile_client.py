"""A C2SP tlog-tiles client: a log's checkpoint, hashes, proofs and entries, read from its tiles.

``TileLog(base)`` reads a log served over HTTP(S) (``https://log.example/`` serving
``checkpoint``, ``tile/<L>/<N>[.p/<W>]``, ``tile/entries/<N>[.p/<W>]``) or a local directory
written by ``inferaudit ledger export-tiles`` (the same layout, see ``seal.ledger.tiles``).

Reading a node ``(level, k)`` of the tree of size ``size`` (tile height 8):
  * hash tile level ``L = level // 8`` holds tree level ``8·L``; the tile ``N = (k·2^r) // 256``
    with ``r = level % 8``, of width 256 when the tree fills it, else the partial width the tree
    size gives (``.p/<W>``, at the right edge only); a partial tile the server no longer has
    (404) is read from the full tile, whose first W hashes are the same;
  * a node of a level that is not a multiple of 8 is folded from its ``2^r`` children of the
    tile level below (a perfect subtree, so pairwise ``SHA-256(0x01 || l || r)``).

Nothing read is trusted: a tile or bundle of the wrong length is refused (``TileFormatError``),
and every hash that reaches a caller is only as good as the proof it is checked in against a
signed root (``merkle.verify_consistency``/``verify_inclusion``; the caller's job). The
checkpoint is fetched once per instance (one view of the log per verification); tiles are
cached in memory for the instance. Transport failures (refused connection, timeout, a 5xx) are
``LogUnreachableError``; a missing tile (404) is ``TileNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from inferaudit.errors import LedgerError
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import MAX_NOTE_BYTES, split_note
from inferaudit.seal.ledger.tiles import TILE_HEIGHT, TILE_WIDTH, tile_path, unbundle

MAX_TILE_BYTES = TILE_WIDTH * merkle.HASH_SIZE
MAX_BUNDLE_BYTES = TILE_WIDTH * (2 + 65_535)  # 256 entries of at most 64 KiB each
MAX_CACHED_TILES = 4096  # 32 MiB of hash tiles at most
DEFAULT_TIMEOUT_S = 20.0


class TileLogError(LedgerError):
    """A tile log could not be read, or what it served is malformed."""


class LogUnreachableError(TileLogError):
    """The log's server did not answer (connection refused, timeout, a 5xx)."""


class TileNotFoundError(TileLogError):
    """The log has no such file (HTTP 404, or no such file in the directory)."""


class TileFormatError(TileLogError):
    """A tile, bundle or checkpoint of impossible size or content."""


def _is_url(base: str) -> bool:
    return urlsplit(base).scheme in ("http", "https")


class TileLog:
    """A tlog-tiles log at ``base`` (an http(s) URL or a local directory); see the module doc."""

    def __init__(self, base: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.location = base
        self._url: str | None = None
        self._dir: Path | None = None
        self._client: httpx.Client | None = None
        if _is_url(base):
            parts = urlsplit(base)
            if not parts.netloc or parts.query or parts.fragment:
                raise TileLogError(f"log URL {base!r}: expected http(s)://host[:port][/path]")
            self._url = base if base.endswith("/") else base + "/"
            self._timeout = httpx.Timeout(timeout_s)
        elif "://" in base:
            raise TileLogError(f"log {base!r}: only http(s) URLs or a local directory")
        else:
            self._dir = Path(base)
            if not self._dir.is_dir():
                raise TileLogError(f"log {base}: no such directory")
        self._note: str | None = None
        self._tiles: dict[str, bytes] = {}  # path -> bytes as served
        self._checked: dict[tuple[int, int, int], list[list[bytes]]] = {}  # folded tiles

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> TileLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw reads -------------------------------------------------------------------------------

    def _get(self, path: str, cap: int) -> bytes:
        if self._dir is not None:
            return self._read_file(self._dir / path, path, cap)
        assert self._url is not None, "a TileLog is a URL or a directory"
        if self._client is None:
            self._client = httpx.Client(timeout=self._timeout, follow_redirects=False)
        url = self._url + path
        try:
            with self._client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as r:
                if r.status_code == 404:
                    raise TileNotFoundError(f"{url}: 404 not found")
                if r.status_code >= 500:
                    raise LogUnreachableError(
                        f"log {self.location}: {url} answered {r.status_code}"
                    )
                if r.status_code != 200:
                    raise TileLogError(f"{url}: HTTP {r.status_code}")
                if r.headers.get("content-encoding", "identity") != "identity":
                    raise TileFormatError(f"{url}: content-encoding is not identity")
                declared = r.headers.get("content-length")
                if declared is not None and (not declared.isdigit() or int(declared) > cap):
                    raise TileFormatError(f"{url}: content-length {declared[:20]} over {cap}")
                body = bytearray()
                for chunk in r.iter_raw():
                    body += chunk
                    if len(body) > cap:
                        raise TileFormatError(f"{url}: larger than {cap} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise LogUnreachableError(f"log {self.location} is unreachable: {exc}") from None

    def _read_file(self, file: Path, path: str, cap: int) -> bytes:
        try:
            with open(file, "rb") as fh:
                data = fh.read(cap + 1)
        except (FileNotFoundError, NotADirectoryError):
            raise TileNotFoundError(f"{self.location}: no {path}") from None
        except OSError as exc:
            raise TileLogError(f"{file}: {exc.strerror or exc}") from None
        if len(data) > cap:
            raise TileFormatError(f"{file}: larger than {cap} bytes")
        return data

    def checkpoint(self) -> str:
        """The log's latest signed checkpoint note (syntax checked; signatures are the caller's
        to verify), fetched once per instance."""
        if self._note is None:
            raw = self._get("checkpoint", MAX_NOTE_BYTES)
            try:
                note = raw.decode()
            except UnicodeDecodeError:
                raise TileFormatError(f"{self.location}: checkpoint is not UTF-8") from None
            split_note(note)
            self._note = note
        return self._note

    def _tile(self, level: int | str, n: int, width: int, cap: int) -> bytes:
        """The tile's bytes; a partial one missing is read from the full tile (cut to ``width``
        by the caller)."""
        path = tile_path(level, n, width)
        cached = self._tiles.get(path)
        if cached is not None:
            return cached
        try:
            data = self._get(path, cap)
        except TileNotFoundError:
            if width == TILE_WIDTH:
                raise
            full = tile_path(level, n)
            try:
                data = self._tiles.get(full) or self._get(full, cap)
            except TileNotFoundError:
                raise TileNotFoundError(f"{self.location}: neither {path} nor {full}") from None
            self._cache(full, data)
        self._cache(path, data)
        return data

    def _cache(self, path: str, data: bytes) -> None:
        if len(self._tiles) >= MAX_CACHED_TILES:
            self._tiles.pop(next(iter(self._tiles)))
        self._tiles[path] = data

    # -- hashes ----------------------------------------------------------------------------------

    def hash_tile(self, tile_level: int, n: int, size: int) -> list[list[bytes]]:
        """Hash tile ``(tile_level, n)`` of the tree of ``size`` leaves, checked (exactly 32
        bytes per hash of its width; a full tile read for a missing partial one is cut) and
        folded: row ``r`` holds the complete nodes of tree level ``8·tile_level + r`` above it."""
        count = size >> (TILE_HEIGHT * tile_level)
        width = min(TILE_WIDTH, count - n * TILE_WIDTH)
        if width <= 0:
            raise TileLogError(f"tile {tile_level}/{n} is beyond a tree of size {size}")
        rows = self._checked.get((tile_level, n, width))
        if rows is not None:
            return rows
        data = self._tile(tile_level, n, width, MAX_TILE_BYTES)
        h = merkle.HASH_SIZE
        if len(data) != width * h and not (len(data) == MAX_TILE_BYTES and width < TILE_WIDTH):
            raise TileFormatError(
                f"{self.location}: {tile_path(tile_level, n, width)} is {len(data)} bytes, "
                f"not {width * h}"
            )
        rows = [[data[i * h : (i + 1) * h] for i in range(width)]]
        while len(rows) < TILE_HEIGHT and len(rows[-1]) > 1:
            below = rows[-1]
            rows.append(
                [merkle.hash_children(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )
        if len(self._checked) >= MAX_CACHED_TILES:
            self._checked.pop(next(iter(self._checked)))
        self._checked[(tile_level, n, width)] = rows
        return rows

    def hashes(self, level: int, start: int, end: int, size: int) -> list[bytes]:
        """Node hashes ``(level, k)`` for k in [start, end) of the tree of ``size`` leaves;
        every node must be complete in that tree. A node of level ``8·L + r`` is the fold of
        its ``2^r`` children in tile level L."""
        if not (0 <= level < 64 and 0 <= start <= end and end << level <= size):
            raise TileLogError(f"nodes {start}..{end} of level {level} are not in size {size}")
        tile_level, r = divmod(level, TILE_HEIGHT)
        per_tile = TILE_WIDTH >> r
        out: list[bytes] = []
        for k in range(start, end):
            n, offset = divmod(k, per_tile)
            row = self.hash_tile(tile_level, n, size)[r]
            assert offset < len(row), "a complete node's children lie in one tile"
            out.append(row[offset])
        return out

    def reader(self, size: int) -> merkle.NodeReader:
        """A ``merkle.NodeReader`` over the tiles of the tree of ``size`` leaves: any node
        complete in that tree (so also the nodes of every smaller tree it extends)."""

        def read(ids: Sequence[merkle.NodeId]) -> list[bytes]:
            return [self.hashes(level, k, k + 1, size)[0] for level, k in ids]

        return read

    def consistency_proof(self, size1: int, size2: int, *, tiles: int | None = None) -> list[bytes]:
        """RFC 9162 PROOF(size1, D[0:size2]) (empty for size1 0 or size1 == size2), read from
        the tiles of the tree of ``tiles`` leaves (default ``size2``; the log's checkpoint size
        when it is larger). Untrusted until verified against both signed roots."""
        tiles = size2 if tiles is None else tiles
        if not 0 <= size1 <= size2 <= tiles:
            raise TileLogError(
                f"no consistency proof from size {size1} to size {size2} in tiles of size {tiles}"
            )
        if size1 in (0, size2):
            return []
        return merkle.consistency_proof(size1, size2, self.reader(tiles))

    def inclusion_proof(self, index: int, size: int, *, tiles: int | None = None) -> list[bytes]:
        """RFC 9162 PATH(index, D[0:size]) from the tiles of the tree of ``tiles`` leaves
        (default ``size``); untrusted until verified against a signed root."""
        tiles = size if tiles is None else tiles
        if not 0 <= index < size <= tiles:
            raise TileLogError(f"no inclusion proof of {index} in size {size} (tiles {tiles})")
        return merkle.inclusion_proof(index, size, self.reader(tiles))

    def root(self, size: int) -> bytes:
        """MTH(D[0:size]) folded from the tiles (untrusted: compare with a signed root)."""
        return merkle.tree_root(size, self.reader(size))

    # -- entries ---------------------------------------------------------------------------------

    def entry(self, index: int, size: int) -> bytes:
        """Entry ``index`` from the entry bundles of the tree of ``size`` leaves (untrusted:
        compare it with a leaf whose inclusion a signed root proves)."""
        if not 0 <= index < size:
            raise TileLogError(f"entry {index} is outside a tree of size {size}")
        n, offset = divmod(index, TILE_WIDTH)
        width = min(TILE_WIDTH, size - n * TILE_WIDTH)
        data = self._tile("entries", n, width, MAX_BUNDLE_BYTES)
        try:
            entries = unbundle(data)
        except LedgerError as exc:
            raise TileFormatError(f"{self.location}: entry bundle {n}: {exc}") from None
        if len(entries) != width and not (len(entries) == TILE_WIDTH and width < TILE_WIDTH):
            raise TileFormatError(
                f"{self.location}: {tile_path('entries', n, width)} holds {len(entries)} "
                f"entries, not {width}"
            )
        return entries[offset]
