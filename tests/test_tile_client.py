"""The C2SP tlog-tiles client (a local export directory, and the same over HTTP from
`python -m http.server`): every proof equals the ledger's; impossible tiles are refused; and
`inferaudit verify RUN --log URL` proves a run against the log's current checkpoint, printing
both notes when the served log forks from the run's."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest_ledger import make_run_dir
from inferaudit.seal.keys import load_or_create_signer
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import parse_tlog_proof
from inferaudit.seal.ledger.store import Ledger, open_ledger
from inferaudit.seal.ledger.tile_client import (
    LogUnreachableError,
    TileFormatError,
    TileLog,
    TileNotFoundError,
)
from inferaudit.seal.ledger.tiles import export_tiles
from inferaudit.seal.publish import seal_run

SIZE = 300


@contextmanager
def served(directory: Path) -> Iterator[str]:
    """``python -m http.server`` on 127.0.0.1 (port 0: the kernel picks) serving ``directory``."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
         "--directory", str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"port (\d+)", line)
        assert match, line
        yield f"http://127.0.0.1:{match[1]}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def _nodes(ledger: Ledger, size: int) -> merkle.NodeReader:
    """A reader over every node the ledger stores for ``size`` leaves (read once)."""
    nodes: dict[merkle.NodeId, bytes] = {}
    level = 0
    while size >> level:
        for k, h in enumerate(ledger.hashes(level, 0, size >> level)):
            nodes[(level, k)] = h
        level += 1
    return lambda ids: [nodes[i] for i in ids]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, Path, Path]]:
    """(the ledger, tiles exported after every append 1..300, tiles exported once at 300)."""
    base = tmp_path_factory.mktemp("tiles")
    home = base / "home"
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        for i in range(SIZE):
            ledger.append([f"entry {i}".encode() * (i % 5 + 1)])
            ledger.sign_checkpoint()
            export_tiles(ledger, base / "grown")
        export_tiles(ledger, base / "once")
        yield ledger, base / "grown", base / "once"


def _all_proofs_match(tiles: TileLog, ledger: Ledger, *, at_latest: bool) -> None:
    reader = _nodes(ledger, SIZE)
    for n in range(1, SIZE + 1):
        t = SIZE if at_latest else None
        assert merkle.tree_root(n, tiles.reader(t or n)) == ledger.root(n)
        for i in range(n):
            assert tiles.inclusion_proof(i, n, tiles=t) == merkle.inclusion_proof(i, n, reader)
        for m in range(1, n + 1):
            assert tiles.consistency_proof(m, n, tiles=t) == merkle.consistency_proof(m, n, reader)
    # The ledger's own proof methods, at the sizes around the tile edge and the largest.
    for n in (1, 2, 255, 256, 257, SIZE):
        t = SIZE if at_latest else None
        for i in range(n):
            assert tiles.inclusion_proof(i, n, tiles=t) == ledger.inclusion_proof(i, n), (i, n)
        for m in range(n + 1):
            assert tiles.consistency_proof(m, n, tiles=t) == ledger.consistency_proof(m, n)


def test_every_proof_from_a_directory_equals_the_ledgers(log: tuple[Ledger, Path, Path]) -> None:
    ledger, grown, _ = log
    tiles = TileLog(str(grown))  # the tiles of every size: partial ones of every width
    _all_proofs_match(tiles, ledger, at_latest=False)
    for n in (1, 255, 256, 257, SIZE):
        assert tiles.root(n) == ledger.root(n)
    assert [tiles.entry(i, SIZE) for i in range(SIZE)] == ledger.entries(0, SIZE)
    assert tiles.checkpoint() == ledger.latest_checkpoint()


def test_every_proof_over_http_equals_the_ledgers(log: tuple[Ledger, Path, Path]) -> None:
    ledger, _, once = log
    with served(once) as url, TileLog(url) as tiles:  # only the tiles of size 300
        assert tiles.checkpoint() == ledger.latest_checkpoint()
        _all_proofs_match(tiles, ledger, at_latest=True)
        assert tiles.root(SIZE) == ledger.root(SIZE)
        assert [tiles.entry(i, SIZE) for i in range(SIZE)] == ledger.entries(0, SIZE)
        # A smaller tree's partial tile is not served: its first hashes come from the full one.
        assert tiles.inclusion_proof(7, 100) == ledger.inclusion_proof(7, 100)
        with pytest.raises(TileNotFoundError, match=r": neither tile/0/001\.p/14 nor tile/0/001$"):
            tiles.inclusion_proof(7, 270)  # tile 1 is partial (44) at 300: no full one to cut


def test_tiles_are_cached_per_instance(log: tuple[Ledger, Path, Path], tmp_path: Path) -> None:
    ledger, _, once = log
    copy = tmp_path / "tiles"
    shutil.copytree(once, copy)
    tiles = TileLog(str(copy))
    first = tiles.consistency_proof(10, SIZE)
    shutil.rmtree(copy / "tile")
    assert tiles.consistency_proof(10, SIZE) == first == ledger.consistency_proof(10, SIZE)
    with pytest.raises(TileNotFoundError, match=r": neither tile/0/000\.p/3 nor tile/0/000$"):
        TileLog(str(copy)).inclusion_proof(0, 3)


def test_a_truncated_or_padded_tile_is_refused(
    log: tuple[Ledger, Path, Path], tmp_path: Path
) -> None:
    _, _, once = log
    copy = tmp_path / "tiles"
    shutil.copytree(once, copy)
    full = copy / "tile" / "0" / "000"
    full.write_bytes(full.read_bytes()[:-1])
    with pytest.raises(TileFormatError) as info:
        TileLog(str(copy)).inclusion_proof(3, SIZE)
    assert str(info.value) == f"{copy}: tile/0/000 is 8191 bytes, not 8192"
    partial = copy / "tile" / "0" / "001.p" / "44"
    partial.write_bytes(partial.read_bytes() + b"\0")
    with served(copy) as url, TileLog(url) as tiles:
        with pytest.raises(TileFormatError) as info:
            tiles.inclusion_proof(299, SIZE)
        assert str(info.value) == f"{url}: tile/0/001.p/44 is 1409 bytes, not 1408"
        with pytest.raises(TileFormatError, match=r"tile/0/000 is 8191 bytes, not 8192$"):
            tiles.consistency_proof(1, SIZE)
    bundle = copy / "tile" / "entries" / "001.p" / "44"
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) - 3])
    with pytest.raises(TileFormatError, match=r"entry bundle 1: entry bundle is truncated$"):
        TileLog(str(copy)).entry(260, SIZE)
    bundle.write_bytes(data + b"\0\0")  # one empty entry too many
    with pytest.raises(TileFormatError, match=r"001\.p/44 holds 45 entries, not 44$"):
        TileLog(str(copy)).entry(260, SIZE)


def test_trees_around_65536_leaves(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        ledger.append([i.to_bytes(4, "big") for i in range(65536)])
        ledger.sign_checkpoint()
        export_tiles(ledger, tmp_path / "tiles")
        ledger.append([b"one more"])
        ledger.sign_checkpoint()
        export_tiles(ledger, tmp_path / "tiles")
        tiles = TileLog(str(tmp_path / "tiles"))
        assert (tmp_path / "tiles" / "tile" / "2" / "000.p" / "1").stat().st_size == 32
        for n in (65535, 65536, 65537):
            at = 65537 if n == 65535 else None  # no export of size 65535: read the later tiles
            for i in (0, 255, 256, 65279, 65535, 65536):
                if i < n:
                    assert tiles.inclusion_proof(i, n, tiles=at) == ledger.inclusion_proof(i, n)
            for m in (1, 255, 256, 257, 65535, 65536, 65537):
                if m <= n:
                    got = tiles.consistency_proof(m, n, tiles=at)
                    assert got == ledger.consistency_proof(m, n), (m, n)
        assert tiles.root(65536) == ledger.root(65536)
        assert tiles.entry(65536, 65537) == b"one more"


def test_an_unreachable_log(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(LogUnreachableError, match=rf"^log http://127.0.0.1:{port} is unr"):
            TileLog(f"http://127.0.0.1:{port}", timeout_s=10).checkpoint()
    with served(tmp_path) as url, pytest.raises(TileNotFoundError, match="checkpoint: 404"):
        TileLog(url).checkpoint()


# -- inferaudit verify RUN --log URL --------------------------------------------------------------


def _ledger(home: Path) -> Ledger:
    return open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home)


def _verify(*args: str | Path) -> tuple[int, str]:
    from inferaudit.cli import app

    result = CliRunner().invoke(app, ["verify", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def _line(output: str, prefix: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(prefix))


def test_verify_log_end_to_end(tmp_path: Path) -> None:
    from inferaudit.cli import app

    home, tiles = tmp_path / "home", tmp_path / "tiles"
    run = make_run_dir(tmp_path / "run", n=10)
    with _ledger(home) as ledger:
        ledger.append([b"an earlier entry"])
        seal_run(run, load_or_create_signer(home, "inferaudit-runner"), ledger)  # entry 1 of 2
        export_tiles(ledger, tiles)
        first_note = ledger.checkpoint_at(2)
        assert ledger.signer is not None
        log_key = ledger.signer.verifier().keyid
    trust = tmp_path / "trust.txt"
    result = CliRunner().invoke(app, ["keys", "trust", "-o", str(trust), "--data-dir", str(home)])
    assert result.exit_code == 0, result.output
    verifier = tmp_path / "verifier"  # a third party: no ledger, nothing remembered
    remembered = verifier / "checkpoints" / log_key
    with served(tiles) as url:
        args = (run, "--trust", trust, "--data-dir", verifier, "--log", url)
        code, out = _verify(*args)
        assert code == 0, out
        assert _line(out, "ok   log checkpoint: ") == (
            f"ok   log checkpoint: the log at {url}: inferaudit-ledger size 2 signed by "
            f"{log_key}; no witness required by the policy"
        )
        assert _line(out, "ok   checkpoint consistency: ") == (
            f"ok   checkpoint consistency: the log at {url} (size 2): first checkpoint of "
            f"{log_key} seen here (size 2); this run's (size 2): same as the checkpoint of the "
            f"log at {url} at size 2; remembered in {remembered}"
        )
        assert _line(out, "ok   log entry: ") == (
            f"ok   log entry: the log at {url} serves this envelope at index 1 of 2"
        )
        assert out.rstrip().endswith(f"{run}: verified")

        # The log grows; the run's checkpoint and the remembered one are proven from its tiles.
        with _ledger(home) as ledger:
            ledger.append([b"later 1", b"later 2"])
            ledger.sign_checkpoint()
            export_tiles(ledger, tiles)
        code, out = _verify(*args)
        assert code == 0, out
        assert _line(out, "ok   checkpoint consistency: ") == (
            f"ok   checkpoint consistency: the log at {url} (size 4): consistent with the "
            f"remembered checkpoint at size 2 (RFC 9162 proof from the tiles of the log at "
            f"{url}); this run's (size 2): same as the remembered checkpoint at size 2; "
            f"consistent with the checkpoint of the log at {url} at size 4 (RFC 9162 proof "
            f"from the tiles of the log at {url}); remembered in {remembered}"
        )
        assert "log entry: the log at" in out and "index 1 of 4" in out
        assert remembered.read_text().startswith("inferaudit-ledger\n4\n")

    # A forged log: the same log key signs a size-2 tree whose first entry is another one.
    forged_home, forged_tiles = tmp_path / "forged", tmp_path / "forged-tiles"
    (forged_home / "keys").mkdir(parents=True, mode=0o700)
    for name in ("inferaudit-ledger.key", "inferaudit-ledger.pub"):
        shutil.copy2(home / "keys" / name, forged_home / "keys" / name)
    with _ledger(forged_home) as forged:
        forged.append([b"a different earlier entry", (run / "envelope.dsse.json").read_bytes()])
        forged_note = forged.sign_checkpoint()
        export_tiles(forged, forged_tiles)
    assert forged_note != first_note and first_note is not None
    fresh = tmp_path / "fresh-verifier"
    with served(forged_tiles) as url:
        code, out = _verify(run, "--trust", trust, "--data-dir", fresh, "--log", url)
    assert code == 1, out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("FAIL")] == [
        "FAIL checkpoint consistency"
    ]
    assert _line(out, "FAIL checkpoint consistency: ").startswith(
        f"FAIL checkpoint consistency: FORK: two checkpoints of size 2 signed by {log_key} "
        "with different roots (both notes printed below; both kept in "
    )
    assert (
        "fork proof: two signed checkpoints of inferaudit-ledger at size 2 (the one shown by "
        f"this run, then the one served by the log at {url}):"
    ) in out
    assert parse_tlog_proof((run / "entry.tlog-proof").read_text()).checkpoint == first_note
    assert f"\n{first_note}\n{forged_note}" in out  # both notes, the run's first
    assert not (fresh / "checkpoints" / log_key).exists()  # nothing remembered from a fork

    # The verifier that follows the real log (remembered size 4) meets a forged size-4 log.
    with _ledger(forged_home) as forged:
        forged.append([b"later 1", b"later 2"])
        forged_four = forged.sign_checkpoint()
        export_tiles(forged, forged_tiles)
    with served(forged_tiles) as url:
        code, out = _verify(*args[:-1], url)
    assert code == 1, out
    assert _line(out, "FAIL checkpoint consistency: ").startswith(
        f"FAIL checkpoint consistency: the log at {url}: FORK: two checkpoints of size 4 "
    )
    assert f"(the one served by the log at {url}, then the one known here):" in out
    assert f"\n{forged_four}\n{remembered.read_text()}" in out


def test_verify_log_unreachable_is_one_line_exit_2(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=4)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        env = {**os.environ, "INFERAUDIT_HOME": str(tmp_path / "home"), "COLUMNS": "60"}
        done = subprocess.run(
            [sys.executable, "-m", "inferaudit", "verify", str(run), "--log", url],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: log {url} is unreachable: ")
    assert done.stderr.count("\n") == 1


def test_verify_log_refuses_a_log_that_serves_another_entry_or_rolls_back(tmp_path: Path) -> None:
    home, tiles = tmp_path / "home", tmp_path / "tiles"
    run = make_run_dir(tmp_path / "run", n=6)
    with _ledger(home) as ledger:
        seal_run(run, load_or_create_signer(home, "inferaudit-runner"), ledger)  # entry 0 of 1
        export_tiles(ledger, tiles)
        small = tmp_path / "small"
        shutil.copytree(tiles, small)
        ledger.append([b"later"])
        ledger.sign_checkpoint()
        export_tiles(ledger, tiles)
    trust = tmp_path / "trust.txt"
    from inferaudit.cli import app

    result = CliRunner().invoke(app, ["keys", "trust", "-o", str(trust), "--data-dir", str(home)])
    assert result.exit_code == 0, result.output
    verifier = tmp_path / "verifier"
    assert _verify(run, "--trust", trust, "--data-dir", verifier, "--log", tiles)[0] == 0
    # The hash tiles are honest but the entry bundle holds something else at index 0.
    lying = tmp_path / "lying"
    shutil.copytree(tiles, lying)
    (lying / "tile" / "entries" / "000.p" / "2").write_bytes(
        len(b"{}").to_bytes(2, "big") + b"{}" + len(b"later").to_bytes(2, "big") + b"later"
    )
    code, out = _verify(run, "--trust", trust, "--data-dir", verifier, "--log", lying)
    assert code == 1, out
    assert [line for line in out.splitlines() if line.startswith("FAIL ")] == [
        f"FAIL log entry: the log at {lying} serves another entry at index 0"
    ]
    # The log now shows size 1 to a verifier that remembers size 2: unprovable, refused.
    code, out = _verify(run, "--trust", trust, "--data-dir", verifier, "--log", small)
    assert code == 1, out
    assert _line(out, "FAIL checkpoint consistency: ") == (
        f"FAIL checkpoint consistency: the log at {small}: inconsistent or unprovable: this "
        "checkpoint is at size 1, the known one at size 2, and neither a local ledger of "
        f"inferaudit-ledger nor the log at {small} (size 1) can prove them consistent (verify "
        "where the log's ledger is: --data-dir/--db)"
    )
