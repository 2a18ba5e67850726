"""Start the twin as a child process from typed options and wait until it serves.

    with start_twin(TwinOptions(ttft_ms=20, tpot_ms=5)) as twin:
        ...  # twin.base_url == "http://127.0.0.1:PORT/v1"

The options are validated here first (``options.build``: the same ``ConfigError`` as the CLI's),
then sent as JSON on the child's stdin (``python -m inferaudit.twin --ready-fd N``; an API key
never appears on a command line); the child reports readiness, or why it could not start, as one
``Readiness`` JSON object on a pipe of its own. No printed text is parsed. The twin always
listens on 127.0.0.1 on a free port (``host``/``port`` of the options are overridden). The
child's stderr goes to a temporary file, quoted if it dies before it reports.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import IO

from pydantic import ValidationError

from inferaudit.errors import ConfigError
from inferaudit.twin.options import TwinOptions, build
from inferaudit.twin.ready import Readiness

_MAX_MESSAGE = 1 << 20  # a readiness message is a few hundred bytes


class TwinProcess:
    """A running twin child process; ``stop()`` (or leaving the ``with`` block) ends it."""

    def __init__(self, process: subprocess.Popen[bytes], ready: Readiness, stderr: IO[str]) -> None:
        assert ready.url is not None
        self.process = process
        self.url = ready.url  # http://127.0.0.1:PORT
        self.base_url = self.url + "/v1"
        self.port = int(self.url.rsplit(":", 1)[1])
        self.description: dict[str, object] = dict(ready.description or {})
        self._stderr = stderr

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout`` s (then SIGKILL); returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()
        return self.process.returncode

    def __enter__(self) -> TwinProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(stderr: IO[str]) -> str:
    """The last line the child wrote on stderr (a traceback's last line names the exception)."""
    stderr.seek(0)
    lines = stderr.read().strip().splitlines()
    return lines[-1].strip() if lines else "no output on stderr"


def _read_message(fd: int, deadline: float) -> bytes | None:
    """Everything written to ``fd`` until the child closes it; None at the deadline."""
    data = b""
    while len(data) <= _MAX_MESSAGE:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk
    return data


def start_twin(options: TwinOptions, *, timeout: float = 60.0) -> TwinProcess:
    """Start a twin serving ``options`` in a child process; return once it is listening.

    Raises ``ConfigError`` for invalid options (before any process starts), with the child's own
    one-line reason if it could not start (port, truth file, ...), or if it is not ready within
    ``timeout`` seconds (the child is then killed).
    """
    options = options.model_copy(update={"host": "127.0.0.1", "port": 0})
    build(options)  # refuse bad options here, as the CLI would, without a child
    read_fd, write_fd = os.pipe()
    stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 - closed in stop()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "inferaudit.twin", "--ready-fd", str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=(write_fd,),
        )
    except BaseException:
        os.close(read_fd)
        stderr.close()
        raise
    finally:
        os.close(write_fd)  # the child holds its own copy; EOF here means it closed or died
    try:
        assert process.stdin is not None
        try:
            process.stdin.write(options.model_dump_json().encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; its stderr says why
        raw = _read_message(read_fd, time.monotonic() + timeout)
    finally:
        os.close(read_fd)
    ready = _parse(raw)
    if ready is not None and ready.url is not None:
        return TwinProcess(process, ready, stderr)
    if raw is None:
        process.kill()
    code = process.wait()
    why = _tail(stderr)
    stderr.close()
    if raw is None:
        raise ConfigError(f"twin did not start within {timeout:g} s ({why})")
    if ready is not None and ready.error is not None:
        raise ConfigError(f"twin could not start: {ready.error}")
    raise ConfigError(f"twin exited with code {code} before listening: {why}")


def _parse(raw: bytes | None) -> Readiness | None:
    if not raw:
        return None
    try:
        return Readiness.model_validate_json(raw)
    except ValidationError:
        return None
