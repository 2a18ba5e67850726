"""``python -m inferaudit.twin --ready-fd N``: serve the twin described by ``TwinOptions`` JSON
on stdin until SIGINT/SIGTERM; readiness (or the one-line reason it could not start) goes to
file descriptor N as one ``Readiness`` JSON object (see ``ready.py``). Nothing goes to stdout:
this is the launcher's child (``launch.start_twin``); people use ``inferaudit twin``.
"""

from __future__ import annotations

import os
import sys

from pydantic import ValidationError

from inferaudit.errors import InferauditError, validation_message
from inferaudit.twin.options import TwinOptions, build
from inferaudit.twin.ready import Readiness
from inferaudit.twin.server import run

USAGE = "usage: python -m inferaudit.twin --ready-fd N < options.json"


class _Reporter:
    """Sends the one readiness message to the parent's pipe, then closes it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def send(self, message: Readiness) -> bool:
        """False when the message was already sent (the twin had started)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        try:
            os.write(fd, message.model_dump_json().encode())
        except OSError:
            pass  # the parent has gone (it gave up waiting); nothing left to tell
        finally:
            os.close(fd)
        return True


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--ready-fd" or not argv[1].isdigit():
        sys.stderr.write(USAGE + "\n")
        return 2
    reporter = _Reporter(int(argv[1]))
    try:
        options = TwinOptions.model_validate_json(sys.stdin.buffer.read())
        config = build(options).config

        def ready(url: str, description: dict[str, object]) -> None:
            reporter.send(Readiness(url=url, description=description))

        run(config, ready)
    except ValidationError as exc:
        reporter.send(Readiness(error=f"twin options: {validation_message(exc)}"))
        return 2
    except InferauditError as exc:
        if not reporter.send(Readiness(error=exc.diagnostics())):
            sys.stderr.write(f"error: {exc.diagnostics()}\n")  # after start: the parent's log
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
