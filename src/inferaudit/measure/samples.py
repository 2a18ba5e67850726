"""The sample datasets shipped in ``inferaudit/data/samples/``, and the generator that wrote them.

``python -m inferaudit.measure.samples DIR`` (:func:`main`) writes the three files below into
``DIR``; the shipped copies are its output, byte for byte (a test regenerates and compares them).
Every text is words of :data:`inferaudit.measure.workload.VOCAB`, each chosen by one byte of
SHAKE-128(``"inferaudit.samples/v1\\n" + label``) for a fixed label per text: no other
randomness, the same bytes with every Python and library version.

* ``sharegpt.json``: a ShareGPT JSON array of 6 conversations with 1, 2, 4, 3, 1 and 2 user
  turns (13 in all), each user turn followed by a ``gpt`` answer; the third conversation starts
  with a ``system`` turn. Entries carry an ``id`` like real ShareGPT dumps.
* ``chat.jsonl``: 6 OpenAI chat lines with 1, 1, 2, 1, 1 and 3 user turns (9 in all):
  ``max_tokens`` 64, none, 32, 48, none, none; the second has a system message, the fourth's user
  content is two text parts, the fifth ends with an assistant message (dropped when loaded).
* ``prompts.jsonl``: 8 prompt lines of 8 to 23 words; ``output_tokens`` 16, 32, 48 and 64 on
  lines 1, 3, 5 and 7, none on the others.

:func:`write_hf_sample` saves the ShareGPT conversations as a ``datasets.Dataset`` with
``save_to_disk`` (needs the hf extra; not shipped: tests make it in a temporary directory).
:func:`sample_path` finds a shipped sample by name (these and any other file in the folder).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import orjson

from inferaudit.errors import ConfigError
from inferaudit.measure.datasets import import_hf_datasets
from inferaudit.measure.workload import VOCAB

__all__ = [
    "SAMPLE_FILES",
    "main",
    "sample_path",
    "sharegpt_entries",
    "write_hf_sample",
    "write_samples",
]

SAMPLE_FILES = ("sharegpt.json", "chat.jsonl", "prompts.jsonl")
_DOMAIN = b"inferaudit.samples/v1\n"
# ShareGPT: user turns per conversation; the conversation (0-based) with a system turn
SHAREGPT_USER_TURNS = (1, 2, 4, 3, 1, 2)
SHAREGPT_SYSTEM_AT = 2
PROMPT_LINES = 8


def _text(label: str, lo: int = 6, span: int = 10) -> str:
    """``lo`` to ``lo + span - 1`` vocabulary words drawn for ``label`` (module docstring)."""
    draw = hashlib.shake_128(_DOMAIN + label.encode()).digest(1 + lo + span)
    n = lo + draw[0] % span
    return " ".join(VOCAB[b] for b in draw[1 : 1 + n])


def sharegpt_entries() -> list[dict[str, object]]:
    """The ShareGPT conversations of ``sharegpt.json`` (also the rows of the hf sample)."""
    entries: list[dict[str, object]] = []
    for c, users in enumerate(SHAREGPT_USER_TURNS):
        turns: list[dict[str, str]] = []
        if c == SHAREGPT_SYSTEM_AT:
            turns.append({"from": "system", "value": _text(f"sharegpt/{c}/system")})
        for t in range(users):
            turns.append({"from": "human", "value": _text(f"sharegpt/{c}/{t}/human") + "?"})
            turns.append({"from": "gpt", "value": _text(f"sharegpt/{c}/{t}/gpt", 12) + "."})
        entries.append({"id": f"sample-{c}", "conversations": turns})
    return entries


def _chat_lines() -> list[dict[str, object]]:
    def user(label: str) -> dict[str, object]:
        return {"role": "user", "content": _text(f"chat/{label}/user") + "?"}

    def assistant(label: str) -> dict[str, object]:
        return {"role": "assistant", "content": _text(f"chat/{label}/assistant", 12) + "."}

    parts = [{"type": "text", "text": _text(f"chat/3/part/{j}")} for j in range(2)]
    return [
        {"messages": [user("0")], "max_tokens": 64},
        {"messages": [{"role": "system", "content": _text("chat/1/system")}, user("1")]},
        {"messages": [user("2/0"), assistant("2/0"), user("2/1")], "max_tokens": 32},
        {"messages": [{"role": "user", "content": parts}], "max_tokens": 48},
        {"messages": [user("4"), assistant("4")]},
        {"messages": [user("5/0"), assistant("5/0"), user("5/1"), assistant("5/1"), user("5/2")]},
    ]


def _prompt_lines() -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for i in range(PROMPT_LINES):
        line: dict[str, object] = {"prompt": _text(f"prompts/{i}", 8, 16)}
        if i % 2 == 0:
            line["output_tokens"] = 16 + 8 * i
        lines.append(line)
    return lines


def _jsonl(rows: Sequence[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def write_samples(directory: Path) -> list[Path]:
    """Write the three sample files (module docstring) into ``directory`` (made if absent);
    returns their paths in :data:`SAMPLE_FILES` order."""
    contents = (
        orjson.dumps(sharegpt_entries(), option=orjson.OPT_INDENT_2) + b"\n",
        _jsonl(_chat_lines()),
        _jsonl(_prompt_lines()),
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / name for name in SAMPLE_FILES]
        for path, content in zip(paths, contents, strict=True):
            path.write_bytes(content)
    except OSError as exc:
        raise ConfigError(f"samples {directory}: cannot write ({exc.strerror})") from None
    return paths


def write_hf_sample(directory: Path) -> Path:
    """Save the ShareGPT sample as a ``datasets.Dataset`` (columns ``id``, ``conversations``)
    into ``directory`` with ``save_to_disk``; returns ``directory``."""
    hf = import_hf_datasets("writing the Hugging Face sample")
    entries = sharegpt_entries()
    table = hf.Dataset.from_dict(
        {
            "id": [e["id"] for e in entries],
            "conversations": [e["conversations"] for e in entries],
        }
    )
    table.save_to_disk(str(directory))
    return directory


def sample_path(name: str) -> Path:
    """The shipped sample file ``name`` (e.g. ``"sharegpt.json"``) on disk."""
    folder = resources.files("inferaudit.data").joinpath("samples")
    found = folder.joinpath(name)
    if "/" in name or name.startswith(".") or not found.is_file():
        shipped = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        raise ConfigError(
            f"no sample dataset named {name!r} (shipped: {', '.join(shipped) or 'none'})"
        )
    assert isinstance(found, Path), "inferaudit is installed as files, not in a zip"
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inferaudit.measure.samples DIR``: write the samples into DIR."""
    parser = argparse.ArgumentParser(
        prog="python -m inferaudit.measure.samples",
        description="Write inferaudit's sample dataset files into DIR.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    try:
        paths = write_samples(args.directory)
    except ConfigError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
