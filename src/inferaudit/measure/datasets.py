"""Dataset files read as conversations: prompt JSONL, ShareGPT, OpenAI chat JSONL, Hugging Face.

Every format becomes the same typed value: a tuple of :class:`Conversation`, each one or more
user :class:`Turn` (the recorded answers are dropped: the endpoint's real answers replace them
at run time) and an optional system prompt. Loading is strict: the first malformed entry stops
it with a :class:`~inferaudit.errors.ConfigError` of one line naming the file, the line, entry or
row, and the field; nothing is skipped silently, and a dataset without a conversation is an
error.

Formats (``DatasetFormat``; :func:`detect_format` guesses one, ``--dataset-format`` overrides):

* ``prompts`` (also ``fmt=None``: v0.1 specs). JSONL, one ``{"prompt": str, "output_tokens":
  int?}`` per line, blank lines skipped: one single-turn conversation per line, ``output_tokens``
  as the turn's ``max_tokens``. Exactly v0.1's rules and messages (``workload.load_dataset``).
* ``sharegpt``. A JSON array of ``{"conversations": [{"from": role, "value": str}, ...]}``, or
  the same objects one per line (JSONL). ``human``/``user`` turns are user turns;
  ``gpt``/``assistant``/``chatgpt``/``bing``/``bard`` are recorded answers (skipped); ``system``
  is the system prompt, only as the first turn. Other keys of an entry or a turn (``id``,
  ``model``, ``weight``, ... which ShareGPT dumps carry) are ignored. No ``max_tokens``.
* ``openai-chat``. JSONL, one ``{"messages": [{"role": "system"|"user"|"assistant", "content":
  str | [{"type": "text", "text": str}, ...]}], "max_tokens": int?}`` per line, no other keys.
  Text parts are joined with ``"\\n"`` (as vLLM renders them); other part types are refused.
  ``max_tokens`` applies to the last user turn, the others have none; a trailing assistant
  message is dropped like every recorded answer.
* ``hf``. A directory written by ``datasets.Dataset.save_to_disk`` (a ``Dataset``, or a
  ``DatasetDict`` with exactly one split or a ``train`` split), read offline with the optional
  ``datasets`` package (``pip install 'inferaudit[hf]'``). Its rows follow the rules above,
  chosen by the columns: ``conversations`` (ShareGPT), ``messages`` (+ ``max_tokens``: OpenAI
  chat) or ``prompt`` (+ ``output_tokens``: prompts); exactly one of those three must be there,
  other columns are ignored. Arrow gives absent struct fields as null: null-valued keys count as
  absent. Rows are numbered from 0, as ``dataset[i]`` indexes them.

The shape of a conversation (ShareGPT and chat alike): an optional system turn first, then a
user turn, then any sequence in which no two user turns follow each other without an answer
between them (two answers in a row are allowed: both are dropped). Every value must be a
non-empty string.

The content binding is :func:`dataset_sha256`: for a file, SHA-256 of its bytes; for an ``hf``
directory, SHA-256 of the concatenation, over every regular file under it sorted by relative
POSIX path, of ``path + "\\0" + sha256(file) hex + "\\n"`` (symbolic links to directories are
not followed; links to files count as the files).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, Protocol, assert_never

import orjson

from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import DatasetFormat
from inferaudit.measure.rundir import file_sha256

__all__ = [
    "HF_MARKERS",
    "Conversation",
    "DatasetFormat",
    "Turn",
    "dataset_sha256",
    "detect_format",
    "import_hf_datasets",
    "load_conversations",
]

HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
USER_ROLES = ("human", "user")
ANSWER_ROLES = ("gpt", "assistant", "chatgpt", "bing", "bard")
SHAREGPT_ROLES = "human, user, gpt, assistant, chatgpt, bing, bard or system"
PASS_FORMAT = "pass --dataset-format prompts, sharegpt, openai-chat or hf"
_SPACE = b" \t\r\n"
_CHAT_KEYS = frozenset({"messages", "max_tokens"})
_MESSAGE_KEYS = frozenset({"role", "content"})
_PART_KEYS = frozenset({"type", "text"})
_FORMAT_BY_KEY: dict[str, DatasetFormat] = {
    "conversations": "sharegpt",
    "messages": "openai-chat",
    "prompt": "prompts",
}


@dataclass(frozen=True, slots=True)
class Turn:
    """One user turn and how many tokens its answer may have (None: the dataset does not say;
    a recorded answer's length is not known in tokens)."""

    user: str
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    """The user turns of one conversation, in order, and its system prompt if it has one."""

    turns: tuple[Turn, ...]
    system: str | None = None

    def __post_init__(self) -> None:
        assert self.turns, "a conversation has at least one user turn"


Kind = Literal["system", "user", "answer"]


class _Table(Protocol):
    """What is read of a ``datasets.Dataset``: its columns and its rows."""

    @property
    def column_names(self) -> list[str]: ...

    def __iter__(self) -> Iterator[object]: ...


class _Bad(Exception):
    """A malformed entry; the caller adds where it is (file, line, entry or row)."""


# ---- detection ----


def detect_format(path: Path) -> DatasetFormat:
    """The format of the dataset at ``path``, from its first bytes or line (module docstring)."""
    if path.is_dir():
        if any((path / marker).is_file() for marker in HF_MARKERS):
            return "hf"
        raise ConfigError(
            f"dataset {path}: a directory without dataset_info.json, state.json or "
            f"dataset_dict.json (not saved with datasets' save_to_disk); {PASS_FORMAT}"
        )
    first = _first_line(path)
    if first is None:
        raise ConfigError(f"dataset {path}: empty file, cannot tell its format; {PASS_FORMAT}")
    number, line = first
    if line.lstrip(_SPACE).startswith(b"["):
        return "sharegpt"
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ConfigError(
            f"dataset {path}: cannot tell its format (line {number} is not JSON); {PASS_FORMAT}"
        ) from None
    if not isinstance(obj, dict):
        raise ConfigError(
            f"dataset {path}: cannot tell its format (line {number} is not a JSON object); "
            f"{PASS_FORMAT}"
        )
    found = [key for key in ("conversations", "messages", "prompt") if key in obj]
    if len(found) > 1:
        raise ConfigError(
            f"dataset {path}: cannot tell its format (line {number} has both {found[0]!r} and "
            f"{found[1]!r}); {PASS_FORMAT}"
        )
    if not found:
        keys = ", ".join(repr(k) for k in list(obj)[:5]) or "none"
        raise ConfigError(
            f"dataset {path}: cannot tell its format (line {number} has keys {keys}, none of "
            f"'conversations', 'messages' or 'prompt'); {PASS_FORMAT}"
        )
    return _FORMAT_BY_KEY[found[0]]


def _first_line(path: Path) -> tuple[int, bytes] | None:
    """The first non-blank line of a file (1-based number, bytes), reading no further."""
    try:
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip(_SPACE):
                    return number, line
    except FileNotFoundError:
        raise ConfigError(f"dataset {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"dataset {path}: cannot read ({exc.strerror})") from None
    return None


# ---- content binding ----


def dataset_sha256(path: Path) -> str:
    """Lowercase hex digest binding the dataset's content (module docstring: file or hf dir)."""
    if not path.is_dir():
        try:
            return file_sha256(path)
        except FileNotFoundError:
            raise ConfigError(f"dataset {path}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"dataset {path}: cannot read ({exc.strerror})") from None
    digest = hashlib.sha256()
    try:
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
        for name, file in files:
            digest.update(name.encode() + b"\0" + file_sha256(file).encode() + b"\n")
    except OSError as exc:
        raise ConfigError(f"dataset {path}: cannot read ({exc.strerror})") from None
    return digest.hexdigest()


def _check_sha256(path: Path, sha256: str | None) -> None:
    if sha256 is not None and dataset_sha256(path) != sha256:
        raise ConfigError(f"dataset {path}: content differs from the protocol's dataset_sha256")


# ---- loading ----


def load_conversations(
    path: Path, fmt: DatasetFormat | None, sha256: str | None = None
) -> tuple[Conversation, ...]:
    """Every conversation of the dataset at ``path`` in format ``fmt`` (None: ``prompts``), in
    file order; ``sha256`` (if given) must equal :func:`dataset_sha256` of it."""
    if fmt == "hf":
        return _load_hf(path, sha256)
    data = _read(path, sha256)
    if fmt is None or fmt == "prompts":
        return _load_prompts(path, data)
    if fmt == "sharegpt":
        return _load_sharegpt(path, data)
    if fmt == "openai-chat":
        return _load_chat(path, data)
    assert_never(fmt)


def _read(path: Path, sha256: str | None) -> bytes:
    """A dataset file's bytes (v0.1's messages), checked against ``sha256``."""
    if path.is_dir():
        raise ConfigError(
            f"dataset {path}: is a directory (a dataset saved with save_to_disk needs "
            "--dataset-format hf)"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"dataset {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"dataset {path}: cannot read ({exc.strerror})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(f"dataset {path}: content differs from the protocol's dataset_sha256")
    return data


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers."""
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            yield number, line


def _json_line(where: str, line: bytes) -> object:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not JSON ({exc.args[0]})") from None


def _nonempty(conversations: list[Conversation], path: Path, what: str) -> tuple[Conversation, ...]:
    if not conversations:
        raise ConfigError(f"dataset {path}: no {what} in it")
    return tuple(conversations)


# -- prompts (v0.1) --


def _load_prompts(path: Path, data: bytes) -> tuple[Conversation, ...]:
    out: list[Conversation] = []
    for number, line in _lines(data):
        where = f"dataset {path}:{number}"
        obj = _json_line(where, line)
        if not isinstance(obj, dict):
            raise ConfigError(
                f'{where}: expected an object {{"prompt": str, "output_tokens": int?}}'
            )
        unknown = set(obj) - {"prompt", "output_tokens"}
        out.append(_prompt_row(where, obj, unknown))
    return _nonempty(out, path, "prompts")


def _prompt_row(where: str, obj: Mapping[str, object], unknown: set[str]) -> Conversation:
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError(f'{where}: "prompt" must be a non-empty string')
    tokens = obj.get("output_tokens")
    if tokens is not None and not _positive_int(tokens):
        raise ConfigError(f'{where}: "output_tokens" must be a positive integer')
    if unknown:
        raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    assert tokens is None or isinstance(tokens, int)
    return Conversation((Turn(prompt, tokens),))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# -- ShareGPT --


def _load_sharegpt(path: Path, data: bytes) -> tuple[Conversation, ...]:
    out: list[Conversation] = []
    if data.lstrip(_SPACE).startswith(b"["):
        try:
            entries = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"dataset {path}: not JSON ({exc.args[0]})") from None
        assert isinstance(entries, list), "JSON text starting with [ is an array"
        for number, entry in enumerate(entries, 1):
            where = f"dataset {path}: conversation {number} (entry {number})"
            out.append(_sharegpt_entry(where, entry))
    else:
        for count, (number, line) in enumerate(_lines(data), 1):
            where = f"dataset {path}: conversation {count} (line {number})"
            out.append(_sharegpt_entry(where, _json_line(where, line)))
    return _nonempty(out, path, "conversations")


def _sharegpt_entry(where: str, entry: object) -> Conversation:
    try:
        if not isinstance(entry, dict):
            raise _Bad('expected an object {"conversations": [{"from": str, "value": str}, ...]}')
        return _sharegpt_turns(entry.get("conversations"))
    except _Bad as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _sharegpt_turns(turns: object) -> Conversation:
    if not isinstance(turns, list):
        raise _Bad('"conversations" must be a list of {"from": str, "value": str}')
    seq: list[tuple[Kind, str]] = []
    for i, turn in enumerate(turns):
        at = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise _Bad(f'{at} must be an object {{"from": str, "value": str}}')
        role = turn.get("from")
        if role in USER_ROLES:
            kind: Kind = "user"
        elif role in ANSWER_ROLES:
            kind = "answer"
        elif role == "system":
            kind = "system"
        else:
            raise _Bad(f"{at}.from must be {SHAREGPT_ROLES}")
        value = turn.get("value")
        if not isinstance(value, str) or not value:
            raise _Bad(f"{at}.value must be a non-empty string")
        seq.append((kind, value))
    return _shape(seq, "conversations", None)


# -- OpenAI chat --


def _load_chat(path: Path, data: bytes) -> tuple[Conversation, ...]:
    out: list[Conversation] = []
    for number, line in _lines(data):
        where = f"dataset {path}:{number}"
        obj = _json_line(where, line)
        try:
            if not isinstance(obj, dict):
                raise _Bad('expected an object {"messages": [...], "max_tokens": int?}')
            unknown = set(obj) - _CHAT_KEYS
            if unknown:
                raise _Bad(f"unknown field {sorted(unknown)[0]!r}")
            out.append(_chat_row(obj))
        except _Bad as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return _nonempty(out, path, "conversations")


def _chat_row(obj: Mapping[str, object]) -> Conversation:
    tokens = obj.get("max_tokens")
    if tokens is not None and not _positive_int(tokens):
        raise _Bad("max_tokens must be a positive integer")
    assert tokens is None or isinstance(tokens, int)
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise _Bad('messages must be a list of {"role": str, "content": str}')
    seq: list[tuple[Kind, str]] = []
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _Bad(f'{at} must be an object {{"role": str, "content": str}}')
        unknown = set(message) - _MESSAGE_KEYS
        if unknown:
            raise _Bad(f"{at}: unknown field {sorted(unknown)[0]!r}")
        role = message.get("role")
        kinds: dict[object, Kind] = {"system": "system", "user": "user", "assistant": "answer"}
        if role not in kinds:
            raise _Bad(f"{at}.role must be system, user or assistant")
        seq.append((kinds[role], _content(at, message.get("content"))))
    return _shape(seq, "messages", tokens)


def _content(at: str, content: object) -> str:
    """A message's text: a string, or text parts joined with newlines."""
    if isinstance(content, list) and content:
        texts: list[str] = []
        for j, part in enumerate(content):
            pat = f"{at}.content[{j}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _Bad(f'{pat} must be a text part {{"type": "text", "text": str}}')
            unknown = set(part) - _PART_KEYS
            if unknown:
                raise _Bad(f"{pat}: unknown field {sorted(unknown)[0]!r}")
            text = part.get("text")
            if not isinstance(text, str):
                raise _Bad(f"{pat}.text must be a string")
            texts.append(text)
        content = "\n".join(texts)
    if not isinstance(content, str) or not content:
        raise _Bad(f"{at}.content must be a non-empty string or a list of text parts")
    return content


# -- the common shape --


def _shape(seq: Sequence[tuple[Kind, str]], field: str, last_max: int | None) -> Conversation:
    """A conversation from its (kind, text) sequence (module docstring: the shape rules);
    ``last_max`` is the last user turn's ``max_tokens``."""
    system: str | None = None
    users: list[str] = []
    previous: Kind | None = None
    for i, (kind, text) in enumerate(seq):
        if kind == "system":
            if i != 0:
                raise _Bad(f"{field}[{i}]: a system turn may only come first")
            system = text
        elif previous in (None, "system") and kind != "user":
            raise _Bad(f"{field}[{i}] must be a user turn (after an optional system turn)")
        elif kind == "user" and previous == "user":
            raise _Bad(f"{field}[{i}]: two user turns in a row (no answer between them)")
        elif kind == "user":
            users.append(text)
        previous = kind
    if not users:
        raise _Bad(f"{field} has no user turn")
    turns = [Turn(text) for text in users[:-1]]
    turns.append(Turn(users[-1], last_max))
    return Conversation(tuple(turns), system)


# -- Hugging Face datasets saved to disk --


def import_hf_datasets(needed_by: str = "Hugging Face datasets") -> ModuleType:
    """The optional ``datasets`` package, imported offline (``HF_DATASETS_OFFLINE=1`` and
    ``HF_HUB_OFFLINE=1`` are set in ``os.environ`` first: nothing is ever downloaded); when it
    is not installed, a ConfigError "``needed_by``: needs the hf extra: pip install ..."."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return importlib.import_module("datasets")
    except ImportError:
        raise ConfigError(
            f"{needed_by}: needs the hf extra: pip install 'inferaudit[hf]'"
        ) from None


def _load_hf(path: Path, sha256: str | None) -> tuple[Conversation, ...]:
    if not path.is_dir():
        what = "no such directory" if not path.exists() else "not a directory"
        raise ConfigError(
            f"dataset {path}: {what} (the hf format is a directory written by save_to_disk)"
        )
    _check_sha256(path, sha256)
    hf = import_hf_datasets(f"dataset {path}: reading a Hugging Face dataset")
    try:
        loaded = hf.load_from_disk(str(path))
    except (OSError, ValueError, LookupError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"dataset {path}: cannot load it with datasets ({first})") from None
    table = _one_split(path, hf, loaded)
    columns = set(table.column_names)
    found = [c for c in ("conversations", "messages", "prompt") if c in columns]
    if len(found) != 1:
        seen = ", ".join(repr(c) for c in sorted(columns)) or "none"
        raise ConfigError(
            f"dataset {path}: needs exactly one of the columns 'conversations', 'messages' "
            f"or 'prompt' (it has {seen})"
        )
    out: list[Conversation] = []
    for i, raw in enumerate(table):
        where = f"dataset {path}: row {i}"
        row = _drop_nulls(raw)
        assert isinstance(row, dict), "datasets yields rows as dicts"
        try:
            if found[0] == "conversations":
                out.append(_sharegpt_turns(row.get("conversations")))
            elif found[0] == "messages":
                out.append(_chat_row({k: row[k] for k in _CHAT_KEYS if k in row}))
            else:
                out.append(_prompt_row(where, row, set()))
        except _Bad as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return _nonempty(out, path, "rows")


def _one_split(path: Path, hf: ModuleType, loaded: object) -> _Table:
    """The ``Dataset`` to read: itself, or the only split (else ``train``) of a DatasetDict."""
    if isinstance(loaded, hf.Dataset):
        table: _Table = loaded
        return table
    assert isinstance(loaded, hf.DatasetDict), "load_from_disk returns a Dataset(Dict)"
    splits = sorted(loaded)
    if len(splits) == 1 or "train" in splits:
        table = loaded[splits[0] if len(splits) == 1 else "train"]
        return table
    names = ", ".join(repr(s) for s in splits) or "none"
    raise ConfigError(
        f"dataset {path}: a DatasetDict with splits {names} and no 'train': save_to_disk the "
        "split to use"
    )


def _drop_nulls(value: object) -> object:
    """``value`` with null-valued keys removed from every object in it (Arrow's absent fields)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value
