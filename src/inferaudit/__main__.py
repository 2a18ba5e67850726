"""``python -m inferaudit ...``: the same command line as ``inferaudit``."""

from __future__ import annotations

from inferaudit.cli import main

if __name__ == "__main__":
    main()
