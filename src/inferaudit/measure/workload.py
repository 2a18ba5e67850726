"""What each request asks: deterministic request plans from ``(spec.seed, request id)``.

Two sources:

* **Synthetic** (default). Each prompt starts with a *salt*: 8 words chosen by a keyed 64-bit
  permutation of the request id (a 4-round Feistel network over BLAKE2b keyed by the seed), so
  no two requests of a run share even their first token block and a server cannot precompute
  them without the seed. The rest is words drawn uniformly from :data:`VOCAB`, one per byte of
  SHAKE-128 keyed by the seed and the id. Every vocabulary word is a common short English word that
  GPT-2, cl100k, Llama 3 and similar BPE vocabularies hold as one token when preceded by a space,
  so N words ≈ N prompt tokens. This is an approximation: the first word, the chat template and
  other tokenizers add or split a few tokens; ``input_tokens`` in a plan is the word count sent.
* **Dataset**: a JSONL file, one ``{"prompt": str, "output_tokens": int?}`` per line. Request
  ``i`` uses line ``perm[i % n]`` of a seeded permutation; a line without ``output_tokens`` draws
  one from ``workload.output_tokens``. Prompts are sent as written (no salt); ``input_tokens``
  is None because it is not known without the model's tokenizer.

Lengths drawn from a range (numpy PCG64 seeded with ``(seed, 1, id)``): ``uniform`` is uniform
over the integers ``[lo, hi]``; ``normal`` has mean ``(lo + hi) / 2`` and standard deviation
``(hi - lo) / 6``, rounded and clipped to the range.

Callers may inject their own plans at given ids (``injected``: e.g. fingerprint prompts mixed
into the load, sent exactly like the others) or run an explicit list of plans through the runner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import Length, RunSpec

__all__ = [
    "SALT_WORDS",
    "VOCAB",
    "DatasetRow",
    "Planner",
    "RequestPlan",
    "draw_length",
    "load_dataset",
    "salt",
    "salt_key",
    "synthetic_prompt",
]

_VOCAB_TEXT = """
    the of and to in is was for on that with as by at from his her he she it they we you are be
    this an not or have had but one all were their which there been has more who when will would
    no out so up said what its about than into them can only other time new some could these two
    may first then do any like my now over such our man me even most made after also did many
    before must through back years where much your way well down should because each just those
    people how too little state good very make world still own see men work long get here
    between both life being under never day same another know while last might us great old year
    off come since against go came right used take three small house water city light night
    music river green black white paper table story family school home game group hand place
    part case week company system program question number point government book line end side
    kind head car name team word money room mother father area face fact month lot study job eye
    door power country field war history party result change morning reason research girl guy
    moment air teacher force education food voice market center love open run play move live
    believe hold bring happen write stand lose pay meet include continue set learn lead
    understand watch follow stop create speak read spend grow offer remember consider appear buy
    wait
"""
VOCAB: tuple[str, ...] = tuple(_VOCAB_TEXT.split())
assert len(VOCAB) == 256 and len(set(VOCAB)) == 256, "VOCAB must hold 256 distinct words"

SALT_WORDS = 8  # 8 words x 8 bits: the 64-bit permuted request id

_STREAM_LENGTHS = 1  # numpy seed-sequence stream ids (schedule.py uses its own)
_STREAM_DATASET = 2


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """One request, fully decided before it is sent.

    ``extra_body`` is merged last into the JSON body, so it can set or override any field
    (``temperature``, ``seed``, ``logprobs``, even ``messages``). ``max_tokens`` None sends no
    length limit (and no ``min_tokens``/``ignore_eos``).
    """

    id: int
    phase: str
    prompt: str
    max_tokens: int | None
    input_tokens: int | None = None
    tag: str | None = None
    extra_body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DatasetRow:
    prompt: str
    output_tokens: int | None = None


def salt(key: bytes, i: int) -> str:
    """The salt words of request ``i``: a bijection of ``i`` (0 <= i < 2**64) under ``key``."""
    left, right = i >> 32, i & 0xFFFFFFFF
    for r in range(4):
        digest = hashlib.blake2b(
            right.to_bytes(4, "big") + bytes((r,)), key=key, digest_size=4
        ).digest()
        left, right = right, left ^ int.from_bytes(digest, "big")
    value = ((left << 32) | right).to_bytes(8, "big")
    return " ".join(VOCAB[b] for b in value)


def salt_key(seed: int) -> bytes:
    return hashlib.blake2b(f"inferaudit.salt/{seed}".encode(), digest_size=32).digest()


def draw_length(length: Length, rng: np.random.Generator | None) -> int:
    """One length from ``length`` (see the module docstring for the distributions); ``rng``
    may be None for a fixed length."""
    if length.dist == "fixed":
        return length.lo
    assert rng is not None, "a length range needs a generator"
    if length.dist == "uniform":
        return int(rng.integers(length.lo, length.hi + 1))
    value = rng.normal((length.lo + length.hi) / 2, (length.hi - length.lo) / 6)
    return int(min(max(round(value), length.lo), length.hi))


def synthetic_prompt(key: bytes, i: int, words: int, rng: np.random.Generator | None = None) -> str:
    """Salt of request ``i`` followed by ``words - SALT_WORDS`` vocabulary words, each chosen by
    one byte of SHAKE-128(key, "body", i): uniform over the 256 words, no modulo bias. A caller
    with its own randomness passes ``rng`` to draw the body words from it instead."""
    n = max(words - SALT_WORDS, 0)
    if rng is not None:
        body: Iterable[int] = rng.integers(0, len(VOCAB), size=n).tolist()
    else:
        body = hashlib.shake_128(key + b"body" + i.to_bytes(8, "big")).digest(n) if n else b""
    return " ".join([salt(key, i), *map(VOCAB.__getitem__, body)])


def load_dataset(path: Path, sha256: str | None = None) -> tuple[DatasetRow, ...]:
    """Read a JSONL dataset; any bad line is a ConfigError naming its line number."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"dataset {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"dataset {path}: cannot read ({exc.strerror})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(f"dataset {path}: content differs from the protocol's dataset_sha256")
    rows: list[DatasetRow] = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        rows.append(_dataset_row(path, number, line))
    if not rows:
        raise ConfigError(f"dataset {path}: no prompts in it")
    return tuple(rows)


def _dataset_row(path: Path, number: int, line: bytes) -> DatasetRow:
    where = f"dataset {path}:{number}"
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not JSON ({exc.args[0]})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f'{where}: expected an object {{"prompt": str, "output_tokens": int?}}')
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError(f'{where}: "prompt" must be a non-empty string')
    out = obj.get("output_tokens")
    if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
        raise ConfigError(f'{where}: "output_tokens" must be a positive integer')
    unknown = set(obj) - {"prompt", "output_tokens"}
    if unknown:
        raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    return DatasetRow(prompt, out)


class Planner:
    """``plan(i)``: the request with id ``i`` of a run, the same every time for the same spec.

    Ids ``0 .. warmup-1`` are phase ``"warmup"``, later ids ``"measure"``. ``injected`` plans
    replace the generated ones at their ids (their own ``phase``/``tag`` are kept). Planners are
    picklable: the runner builds one in the parent (reading any dataset once) and ships it.
    """

    def __init__(
        self,
        spec: RunSpec,
        *,
        injected: Mapping[int, RequestPlan] | None = None,
        dataset: Sequence[DatasetRow] | None = None,
    ) -> None:
        self.seed = spec.seed
        self.workload = spec.workload
        self.warmup = spec.load.warmup
        self.injected = dict(injected or {})
        for i, p in self.injected.items():
            if p.id != i:
                raise ConfigError(f"injected plan at id {i} carries id {p.id}")
        self._key = salt_key(spec.seed)
        self._draws = any(
            length.dist != "fixed"
            for length in (spec.workload.input_tokens, spec.workload.output_tokens)
        )
        self._rows = tuple(dataset) if dataset is not None else None
        self._order: list[int] = []
        if self._rows is not None:
            rng = np.random.default_rng((spec.seed, _STREAM_DATASET))
            self._order = rng.permutation(len(self._rows)).tolist()

    @classmethod
    def from_spec(
        cls, spec: RunSpec, *, injected: Mapping[int, RequestPlan] | None = None
    ) -> Planner:
        """A planner for ``spec``, reading its dataset (if any) now."""
        rows = None
        if spec.workload.dataset is not None:
            rows = load_dataset(Path(spec.workload.dataset), spec.workload.dataset_sha256)
        return cls(spec, injected=injected, dataset=rows)

    def plan(self, i: int) -> RequestPlan:
        injected = self.injected.get(i)
        if injected is not None:
            return injected
        phase = "warmup" if i < self.warmup else "measure"
        # seeding a numpy generator costs more than the rest of a plan: only when drawing
        rng = np.random.default_rng((self.seed, _STREAM_LENGTHS, i)) if self._draws else None
        if self._rows is not None:
            row = self._rows[self._order[i % len(self._rows)]]
            out = row.output_tokens or draw_length(self.workload.output_tokens, rng)
            return RequestPlan(i, phase, row.prompt, out, None)
        words = max(draw_length(self.workload.input_tokens, rng), SALT_WORDS)
        out = draw_length(self.workload.output_tokens, rng)
        return RequestPlan(i, phase, synthetic_prompt(self._key, i, words), out, words)
