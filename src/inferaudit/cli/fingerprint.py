"""`inferaudit fingerprint` commands."""

from __future__ import annotations

from inferaudit.cli.app import app  # noqa: F401
