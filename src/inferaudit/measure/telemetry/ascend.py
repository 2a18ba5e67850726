"""Huawei Ascend: the device table of ``npu-smi info``.

The agent runs ``NPU_SMI_COMMAND`` (``npu-smi info``). Its documented output (Ascend
documentation, "npu-smi info: 查询基本信息") is a box table: two header rows, then two rows per
chip, blocks separated by ``+===...`` or ``+---...`` lines, and a process table after it::

    | NPU   Name        | Health  | Power(W)   Temp(C)     Hugepages-Usage(page) |
    | Chip  Device      | Bus-Id  | AICore(%)  Memory-Usage(MB)                  |
    +===================+=========+===============================================+
    | 0     xxx         | OK      | 10.4       66          15    / 15            |
    | 0     0           | NA      | 0          957   / 10810                     |

(column widths shortened here; see tests/data/telemetry/ for the documented text).

The columns of the third cell are read by the header's names, so products that add
``HBM-Usage(MB)`` to the second header row (Atlas A2 training) read the same way; a ``used /
total`` pair is one column. Read: Power(W) -> ``power_w`` (``NA`` -> ``None``), Temp(C),
AICore(%) -> ``utilisation_pct``, and memory: ``HBM-Usage(MB)`` when the header has it (the
accelerator's own memory), else ``Memory-Usage(MB)``. npu-smi's "MB" are taken as MiB (2^20
bytes: a 64 GiB HBM prints as 65536). The device id is ``npu<NPU>-chip<Chip>``; ``index`` is the
``Device`` column where the header has it, else the NPU id. npu-smi reports no energy counter.
The table ends at the process table's header (``Process id``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inferaudit.errors import DataError
from inferaudit.measure.telemetry._text import (
    NOT_AVAILABLE,
    bad,
    integer,
    optional_decimal,
    optional_mib_bytes,
)
from inferaudit.measure.telemetry.model import DeviceSample, Vendor

NPU_SMI = "npu-smi"
NPU_SMI_COMMAND = (NPU_SMI, "info")

_HEALTH = frozenset({"OK", "Warning", "Alarm", "Critical", "UNKNOWN"})
# one column of the third cell: a "used / total" pair, or a single word
_COLUMN = re.compile(r"\S+\s*/\s*\S+|\S+")
_PAIR = re.compile(r"(\S+)\s*/\s*(\S+)")


@dataclass(frozen=True)
class _Header:
    first: tuple[str, ...]  # columns of the chip's first row, e.g. ("Power(W)", "Temp(C)", ...)
    second: tuple[str, ...]  # of its second row, e.g. ("AICore(%)", "Memory-Usage(MB)")
    has_device: bool  # the second row's first cell is "Chip Device", not "Chip"


def parse_npu_smi_info(text: str) -> list[DeviceSample]:
    """The chips in ``npu-smi info``'s device table, in its order."""
    rows = [
        (line_no, [c.strip() for c in line.strip()[1:-1].split("|")])
        for line_no, line in enumerate(text.splitlines(), start=1)
        if line.strip().startswith("|") and line.strip().endswith("|")
    ]
    if not text.strip():
        return []
    header, start = _header(rows)
    samples: list[DeviceSample] = []
    pending: tuple[int, list[str]] | None = None
    for line_no, cells in rows[start:]:
        if any("Process id" in c for c in cells):
            break
        if len(cells) != 3:
            raise bad(NPU_SMI, line_no, f"expected 3 cells between '|', got {len(cells)}")
        if pending is None:
            pending = (line_no, cells)
            continue
        samples.append(_chip(header, pending, (line_no, cells)))
        pending = None
    if pending is not None:
        raise bad(NPU_SMI, pending[0], "a chip's first row without its second row")
    seen: set[str] = set()
    for s in samples:
        if s.device_id in seen:
            raise DataError(f"{NPU_SMI}: {s.device_id} appears twice")
        seen.add(s.device_id)
    return samples


def _header(rows: list[tuple[int, list[str]]]) -> tuple[_Header, int]:
    for i, (line_no, cells) in enumerate(rows):
        if len(cells) == 3 and cells[0].split()[:2] == ["NPU", "Name"]:
            if i + 1 == len(rows):
                raise bad(NPU_SMI, line_no, "the header's second row is missing")
            next_no, second = rows[i + 1]
            words = second[0].split() if second else []
            if len(second) != 3 or not words or words[0] != "Chip":
                raise bad(NPU_SMI, next_no, "expected the header row 'Chip ... | Bus-Id | ...'")
            first_cols = tuple(cells[2].split())
            second_cols = tuple(second[2].split())
            for need, cols, at in (
                ("Power(W)", first_cols, line_no),
                ("Temp(C)", first_cols, line_no),
                ("AICore(%)", second_cols, next_no),
            ):
                if need not in cols:
                    raise bad(NPU_SMI, at, f"the header lacks the column {need}")
            return _Header(first_cols, second_cols, words[1:2] == ["Device"]), i + 2
    raise DataError(f"{NPU_SMI}: no 'NPU Name | Health | Power(W) Temp(C)' header found")


def _columns(header: tuple[str, ...], line_no: int, cell: str) -> dict[str, str]:
    values = _COLUMN.findall(cell)
    if len(values) != len(header):
        raise bad(
            NPU_SMI, line_no, f"expected {len(header)} values ({' '.join(header)}), got {cell!r}"
        )
    return dict(zip(header, values, strict=True))


def _chip(
    header: _Header, first: tuple[int, list[str]], second: tuple[int, list[str]]
) -> DeviceSample:
    (no1, (id_name, health, values1)), (no2, (ids, _bus, values2)) = first, second
    words = id_name.split()
    if len(words) < 2:
        raise bad(NPU_SMI, no1, f"expected 'NPU Name', got {id_name!r}")
    if health not in _HEALTH:
        raise bad(NPU_SMI, no1, f"Health: {health!r} is not one of {', '.join(sorted(_HEALTH))}")
    npu = integer(NPU_SMI, no1, "NPU", words[0])
    id_words = ids.split()
    if len(id_words) != (2 if header.has_device else 1):
        raise bad(NPU_SMI, no2, f"expected the chip id{' and device' * header.has_device}")
    chip = integer(NPU_SMI, no2, "Chip", id_words[0])
    index = integer(NPU_SMI, no2, "Device", id_words[1]) if header.has_device else npu
    row1 = _columns(header.first, no1, values1)
    row2 = _columns(header.second, no2, values2)
    memory_col = "HBM-Usage(MB)" if "HBM-Usage(MB)" in row2 else "Memory-Usage(MB)"
    used, total = _usage(no2, memory_col, row2.get(memory_col))
    return DeviceSample(
        device_id=f"npu{npu}-chip{chip}",
        vendor=Vendor.HUAWEI_ASCEND,
        tool=NPU_SMI,
        index=index,
        name=" ".join(words[1:]),
        power_w=optional_decimal(NPU_SMI, no1, "Power(W)", row1["Power(W)"]),
        temperature_c=optional_decimal(NPU_SMI, no1, "Temp(C)", row1["Temp(C)"], signed=True),
        utilisation_pct=_percent(no2, row2["AICore(%)"]),
        memory_used_bytes=used,
        memory_total_bytes=total,
    )


def _percent(line_no: int, text: str) -> float | None:
    value = optional_decimal(NPU_SMI, line_no, "AICore(%)", text)
    if value is not None and value > 100:
        raise bad(NPU_SMI, line_no, f"AICore(%): {value:g} is above 100")
    return value


def _usage(line_no: int, column: str, text: str | None) -> tuple[int | None, int | None]:
    if text is None or text in NOT_AVAILABLE:
        return None, None
    pair = _PAIR.fullmatch(text)
    if pair is None:
        raise bad(NPU_SMI, line_no, f"{column}: expected 'used / total', got {text!r}")
    used = optional_mib_bytes(NPU_SMI, line_no, column, pair.group(1))
    total = optional_mib_bytes(NPU_SMI, line_no, column, pair.group(2))
    return used, total
