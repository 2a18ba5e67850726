"""Strict reading of the numbers vendor tools print (private to the telemetry parsers).

A value is a canonical unsigned decimal (``0``, ``70.5``, ``81559``; no sign, no exponent, no
leading zeros, no ``_``), or one of the tool's "not available" words, which read as ``None``.
Anything else is a ``DataError`` naming the tool, the line and the field.
"""

from __future__ import annotations

import re

from inferaudit.errors import DataError

_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
_SIGNED_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
_INTEGER = re.compile(r"0|[1-9][0-9]*")
NOT_AVAILABLE = frozenset({"[N/A]", "N/A", "NA", "[Not Supported]", "[Unknown Error]", "-"})

MIB = 1024 * 1024


def bad(tool: str, line_no: int, what: str) -> DataError:
    """The one-line error for a malformed tool output: ``TOOL: line N: WHAT``."""
    return DataError(f"{tool}: line {line_no}: {what}")


def decimal(tool: str, line_no: int, field: str, text: str, *, signed: bool = False) -> float:
    pattern = _SIGNED_DECIMAL if signed else _DECIMAL
    if pattern.fullmatch(text) is None:
        raise bad(tool, line_no, f"{field}: {text!r} is not a decimal number")
    return float(text)


def optional_decimal(
    tool: str, line_no: int, field: str, text: str, *, signed: bool = False
) -> float | None:
    if text in NOT_AVAILABLE:
        return None
    return decimal(tool, line_no, field, text, signed=signed)


def integer(tool: str, line_no: int, field: str, text: str) -> int:
    if _INTEGER.fullmatch(text) is None:
        raise bad(tool, line_no, f"{field}: {text!r} is not a non-negative integer")
    return int(text)


def optional_mib_bytes(tool: str, line_no: int, field: str, text: str) -> int | None:
    """A count of MiB (an integer, as every tool here prints it) as bytes."""
    if text in NOT_AVAILABLE:
        return None
    return integer(tool, line_no, field, text) * MIB
