"""Where inferaudit keeps its state: the data directory, the ledger database URL, the engine.

Resolution order, for both:
  data directory   ``--data-dir`` flag > ``INFERAUDIT_HOME`` > platformdirs user data dir
  database URL     ``--db`` flag > ``INFERAUDIT_DB`` > SQLite file ``ledger.sqlite3`` in the
                   data directory (WAL journal)

SQLite engines begin every write transaction with ``BEGIN IMMEDIATE`` when the connection carries
the execution option ``sqlite_immediate=True`` (the ledger's appends), so two processes can never
both read the same tree size and then both write; PostgreSQL engines rely on row locks instead.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import platformdirs
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError

from inferaudit.errors import ConfigError

HOME_ENV = "INFERAUDIT_HOME"
DB_ENV = "INFERAUDIT_DB"
SQLITE_FILE = "ledger.sqlite3"
SQLITE_BUSY_TIMEOUT_S = 60.0


def data_dir(override: Path | str | None = None, *, create: bool = True) -> Path:
    """The data directory (keys, default ledger database), created 0700 when missing."""
    if override is not None and str(override) != "":
        path = Path(override).expanduser()
    elif os.environ.get(HOME_ENV):
        path = Path(os.environ[HOME_ENV]).expanduser()
    else:
        path = Path(platformdirs.user_data_dir("inferaudit", appauthor=False))
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"data directory {path}: {exc.strerror}") from None
    if path.exists() and not path.is_dir():
        raise ConfigError(f"data directory {path} is not a directory")
    return path


def db_url(override: str | None = None, home: Path | None = None) -> str:
    """The ledger database URL: flag, then ``INFERAUDIT_DB``, then SQLite in the data dir."""
    url = override or os.environ.get(DB_ENV)
    if url:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(f"database URL {url!r} is not a SQLAlchemy URL") from None
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise ConfigError(f"database URL {url!r}: only sqlite and postgresql are supported")
        return url
    base = home if home is not None else data_dir()
    return f"sqlite:///{base / SQLITE_FILE}"


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (the pysqlite recipe), so that a ledger
    # append can take the write lock up front with BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _set_wal(cursor: Any) -> None:
    """Switch to WAL mode, retrying within the busy timeout: when two connections switch a new
    database at once, SQLite answers "database is locked" at once, without its busy handler (it
    would otherwise risk a deadlock)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine for the ledger (SQLite in WAL mode, or PostgreSQL via psycopg 3)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database URL {url!r} is not a SQLAlchemy URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, pool_pre_ping=False
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    raise ConfigError(f"database URL {url!r}: only sqlite and postgresql are supported")
