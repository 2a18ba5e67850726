"""Start the twin as a child process (``python -m inferaudit twin ...``) and wait until it serves.

    with start_twin(["--ttft-ms", "20", "--tpot-ms", "5"]) as twin:
        ...  # twin.base_url == "http://127.0.0.1:PORT/v1"

The twin always listens on 127.0.0.1 on a free port (``--host 127.0.0.1 --port 0`` are appended,
overriding any given). Its stdout is read until the line ``listening on http://127.0.0.1:PORT``
and drained afterwards; its stderr goes to a temporary file quoted if it fails to start.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import IO

from inferaudit.errors import ConfigError

_READY = re.compile(r"^listening on (http://127\.0\.0\.1:(\d+))\s*$")


class TwinProcess:
    """A running twin child process; ``stop()`` (or leaving the ``with`` block) ends it."""

    def __init__(
        self, process: subprocess.Popen[str], url: str, stderr: IO[str], pump: threading.Thread
    ) -> None:
        self.process = process
        self._pump = pump
        self.url = url  # http://127.0.0.1:PORT
        self.base_url = url + "/v1"
        self.port = int(url.rsplit(":", 1)[1])
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
        self._pump.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
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


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _tail(stderr: IO[str]) -> str:
    """The twin's error message (the CLI's ``error: ...``, unwrapped), else its last line."""
    stderr.seek(0)
    text = stderr.read().strip()
    at = text.rfind("error:")
    if at >= 0:
        return " ".join(text[at:].split())
    lines = text.splitlines()
    return lines[-1] if lines else "no output on stderr"


def start_twin(args: list[str], *, timeout: float = 60.0) -> TwinProcess:
    """Start ``python -m inferaudit twin *args`` and return once it is listening.

    Raises ``ConfigError`` naming the twin's own last error line if it exits before it is ready,
    or if it is not ready within ``timeout`` seconds (the child is then killed).
    """
    command = [sys.executable, "-m", "inferaudit", "twin", *args]
    command += ["--host", "127.0.0.1", "--port", "0"]
    stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 - closed in stop()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    pump.start()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0.0))
        except queue.Empty:
            process.kill()
            process.wait()
            why = _tail(stderr)
            stderr.close()
            raise ConfigError(f"twin did not start within {timeout:g} s ({why})") from None
        if line is None:
            code = process.wait()
            why = _tail(stderr)
            stderr.close()
            raise ConfigError(f"twin exited with code {code} before listening: {why}")
        m = _READY.match(line)
        if m:
            return TwinProcess(process, m.group(1), stderr, pump)
