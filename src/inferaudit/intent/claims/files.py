"""Claims files: JSON (object or array), JSONL and CSV, read with every bad record named by line.

CSV holds one claim per row. Nested objects become dotted columns (``subject.site.city``); lists
are JSON text in one cell (``quantities``, ``sources``, ...); numbers and booleans are JSON
scalars; an empty cell is an absent field. Cells that a spreadsheet would run as a formula (they
start with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) are written with a leading
single quote, as OWASP recommends against CSV injection, and read back without it; a cell that
itself starts with quotes before such a character gets one more quote, so every value round-trips.

Hostile input gives one line, never a traceback: JSON nested deeper than the decoder allows is
"nested too deeply", not a ``RecursionError``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from inferaudit.errors import ClaimsError, ConfigError
from inferaudit.intent.claims.model import Claim

FORMATS = ("json", "jsonl", "csv")
# A cell a spreadsheet would evaluate: =, +, -, @, tab, carriage return (OWASP CSV injection),
# after any run of quotes (so that quoting is reversible).
_FORMULA = re.compile(r"^'*[=+\-@\t\r]")
_ESCAPED = re.compile(r"^'+[=+\-@\t\r]")


@dataclass(frozen=True)
class Located:
    line: int
    data: object  # what the JSON held at that line; a claim must be an object


class ClaimImportError(ClaimsError):
    """One or more records of a file are bad; each problem names its line and field."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(
            f"{path}: {len(problems)} bad record(s), nothing imported: " + "; ".join(problems)
        )


def csv_cell(text: str) -> str:
    """A CSV cell that no spreadsheet runs as a formula (a leading ``'`` when needed)."""
    return "'" + text if _FORMULA.match(text) else text


def csv_uncell(text: str) -> str:
    """The value of a cell written by ``csv_cell``."""
    return text[1:] if _ESCAPED.match(text) else text


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClaimsError(f"{where}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise ClaimsError(f"{where}: invalid JSON (nested too deeply)") from None


def _decode(decoder: json.JSONDecoder, text: str, pos: int, path: str) -> tuple[Any, int]:
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise ClaimsError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        where = _line_of(text, pos)
        raise ClaimsError(f"{path} line {where}: invalid JSON (nested too deeply)") from None


def _parse_json_records(text: str, path: str) -> list[Located]:
    """Claims text in JSON (one object, or an array of them) -> each value with its line."""
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if text[pos : pos + 1] == "{":
        value, _ = _decode(decoder, text, pos, path)
        return [Located(_line_of(text, pos), value)]
    if text[pos : pos + 1] != "[":
        raise ClaimsError(f"{path} line {_line_of(text, pos)}: expected a JSON array or object")
    out: list[Located] = []
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise ClaimsError(f"{path}: JSON array is not closed")
        if text[pos] == "]":
            return out
        value, end = _decode(decoder, text, pos, path)
        out.append(Located(_line_of(text, pos), value))
        pos = end


def _parse_jsonl_records(text: str, path: str) -> list[Located]:
    """Claims text in JSON Lines -> each line's value with its line number."""
    out: list[Located] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            out.append(Located(n, _loads(line, f"{path} line {n}")))
    return out


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif value is None:
            out[name] = ""
        else:
            out[name] = str(value)
    return out


def _options(annotation: object) -> list[object]:
    """The concrete types an annotation admits (unions split, ``Annotated`` unwrapped)."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        return [t for arg in get_args(annotation) for t in _options(arg)]
    if origin is typing.Annotated:
        return _options(get_args(annotation)[0])
    return [annotation]


def _json_columns(model: type[BaseModel], prefix: str = "") -> tuple[set[str], set[str]]:
    """Dotted names of the claim model's list fields and of its number/boolean fields."""
    lists: set[str] = set()
    scalars: set[str] = set()
    for name, info in model.model_fields.items():
        for opt in _options(info.annotation):
            if get_origin(opt) is tuple:
                lists.add(prefix + name)
            elif opt in (int, float, bool):
                scalars.add(prefix + name)
            elif isinstance(opt, type) and issubclass(opt, BaseModel):
                more_lists, more_scalars = _json_columns(opt, f"{prefix}{name}.")
                lists |= more_lists
                scalars |= more_scalars
    return lists, scalars


def _scalar(raw: str) -> object:
    """A number or boolean cell as its JSON value; anything else stays text (the model says
    what is wrong with it, by line and field)."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return raw
    return value if isinstance(value, int | float | bool) else raw


def _parse_csv_records(text: str, path: str) -> list[Located]:
    lists, scalars = _json_columns(Claim)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise ClaimsError(f"{path} line 1: {exc}") from None
    out: list[Located] = []
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return out
        except csv.Error as exc:
            raise ClaimsError(f"{path} line {start}: {exc}") from None
        if not any(c.strip() for c in row):
            start = reader.line_num + 1
            continue
        if len(row) != len(header):
            raise ClaimsError(
                f"{path} line {start}: {len(row)} cells but the header has {len(header)}"
            )
        data: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=True):
            if cell == "":
                continue
            raw = csv_uncell(cell)
            if name in lists:
                value: object = _loads(raw, f"{path} line {start}: column {name}")
            elif name in scalars:
                value = _scalar(raw)
            else:
                value = raw
            node = data
            *parents, leaf = name.split(".")
            for p in parents:
                child = node.setdefault(p, {})
                if not isinstance(child, dict):
                    raise ClaimsError(f"{path} line {start}: column {name} inside a value")
                node = child
            node[leaf] = value
        out.append(Located(start, data))
        start = reader.line_num + 1


def _format_of(path: Path, fmt: str | None) -> str:
    chosen = (fmt or path.suffix.lstrip(".")).lower()
    if chosen not in FORMATS:
        raise ConfigError(f"{path}: format {chosen!r}; expected json, jsonl or csv")
    return chosen


def pydantic_problem(exc: ValidationError) -> str:
    """Every problem of a validation error, ``field a.b: what``, joined on one line."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"field {field}: {str(err['msg']).removeprefix('Value error, ')}")
    return ", ".join(parts)


def parse_claims(text: str, fmt: str, path: str = "<input>") -> list[Claim]:
    """Parse and validate every record; raise ``ClaimImportError`` listing every bad one."""
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r}; expected json, jsonl or csv")
    parse = {
        "json": _parse_json_records,
        "jsonl": _parse_jsonl_records,
        "csv": _parse_csv_records,
    }[fmt]
    located = parse(text, path)
    claims: list[Claim] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for item in located:
        if not isinstance(item.data, dict):
            problems.append(f"line {item.line}: a claim must be a JSON object")
            continue
        label = f"line {item.line}"
        if isinstance(item.data.get("claim_id"), str):
            label += f" ({item.data['claim_id']})"
        try:
            claim = Claim.model_validate(item.data)
        except ValidationError as exc:
            problems.append(f"{label}: {pydantic_problem(exc)}")
            continue
        if claim.claim_id in seen:
            problems.append(f"{label}: field claim_id: duplicate of line {seen[claim.claim_id]}")
            continue
        seen[claim.claim_id] = item.line
        claims.append(claim)
    if problems:
        raise ClaimImportError(path, problems)
    return claims


def read_claims(path: Path, fmt: str | None = None) -> list[Claim]:
    """Read a claims file (format from ``fmt`` or the extension)."""
    chosen = _format_of(path, fmt)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ClaimsError(f"{path}: not UTF-8 text") from None
    return parse_claims(text, chosen, str(path))


def seed_claims() -> list[Claim]:
    """The example data set shipped with the package (``data/seed_claims.json``)."""
    from importlib import resources

    text = resources.files("inferaudit.data").joinpath("seed_claims.json").read_text("utf-8")
    return parse_claims(text, "json", "seed_claims.json")


def dump_claims(claims: Sequence[Claim], fmt: str) -> str:
    """Claims as JSON (array), JSONL or CSV text; ``parse_claims`` reads each back unchanged."""
    if fmt == "json":
        return json.dumps([c.to_json() for c in claims], ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(
            json.dumps(c.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
            for c in claims
        )
    if fmt == "csv":
        rows = [{k: csv_cell(v) for k, v in _flatten(c.to_json()).items()} for c in claims]
        header = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    raise ConfigError(f"export format {fmt!r}; expected json, jsonl or csv")
