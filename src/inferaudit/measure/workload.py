"""What each request asks: the run's secret seed and the keyed draws plans are made of.

The run's seed is 32 bytes, fresh and secret per run (:func:`fresh_seed`), unless the user fixes
one (:func:`fixed_seed`, public and reproducible). ``spec.json`` holds only its commitment
``sha256(b"inferaudit.seed/v1\n" + seed)``; the seed itself travels in memory
(``RunSpec.secret_seed``) and is revealed in ``seed.json`` after the last request
(:func:`write_seed`, :func:`load_seed`). A spec without a commitment (library callers, tests)
plans under :func:`fixed_seed` of its public ``spec.seed``.

Everything random about a request is a keyed PRF of its id: ``prf(seed, label, i)`` =
HMAC-SHA256(seed, label || 0x00 || i as 8 bytes). Nothing in a request reveals its id or what it
is for: the id never reaches the wire, and every draw below is indistinguishable from random
without the seed.

* **Synthetic** (default). Each prompt starts with a *salt*: 8 words, one per byte of
  ``prf(seed, "salt", i)`` (a PRF, not a permutation: nobody without the seed can map a salt back
  to an id), so no two requests of a run share even their first token block. The rest is words
  drawn uniformly from :data:`VOCAB`, one per byte of SHAKE-128(``prf(seed, "body", i)``). Every
  vocabulary word is a common short English word that GPT-2, cl100k, Llama 3 and similar BPE
  vocabularies hold as one token when preceded by a space, so N words ≈ N prompt tokens. This is
  an approximation: the first word, the chat template and other tokenizers add or split a few
  tokens; ``input_tokens`` in a plan is the word count sent.
* Datasets, traces, shared prefixes and multi-turn sessions: :mod:`inferaudit.measure.planner`
  (which turns a position into a :class:`RequestPlan`) with ``measure.datasets`` and
  ``measure.traces``.

Lengths drawn from a range (numpy PCG64 seeded with ``prf(seed, "length", i)``): ``uniform`` is
uniform over the integers ``[lo, hi]``; ``normal`` has mean ``(lo + hi) / 2`` and standard
deviation ``(hi - lo) / 6``, rounded and clipped to the range.

Sampling (``spec.sampling``; None in a v1 spec: no keys): every plan's ``extra_body`` is
``{"temperature": float, "top_p": float}``, plus ``"seed": int`` (31 bits of
``prf(seed, "sampling", i)``) with ``seed_per_request``: one body shape for load, replays and
probes alike (:func:`sampling_body`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import Length, RunSpec, Sampling

__all__ = [
    "SALT_WORDS",
    "SEED_FILE",
    "VOCAB",
    "RequestPlan",
    "commit_seed",
    "draw_length",
    "fixed_seed",
    "fresh_seed",
    "load_seed",
    "planning_seed",
    "prf",
    "prf_rng",
    "salt",
    "sampling_body",
    "seed_commitment",
    "synthetic_prompt",
    "write_seed",
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

SALT_WORDS = 8  # 8 words x 8 bits of prf(seed, "salt", id)
SEED_BYTES = 32
SEED_DOMAIN = b"inferaudit.seed/v1\n"
SEED_FILE = "seed.json"
MAX_ID = 2**64


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
    # A chat conversation to send instead of one user message (multi-turn sessions, datasets
    # with a system prompt): (role, content) pairs. ``prompt`` is then its text rendering
    # (``render_messages``), which completions endpoints are sent and prompt_sha256 hashes.
    messages: tuple[tuple[str, str], ...] | None = None
    session: int | None = None  # multi-turn: the session's id (its first turn's id)
    turn: int | None = None  # multi-turn: 0 for the first turn


# ---- the run's seed: fresh and secret, committed in spec.json, revealed in seed.json ----


def fresh_seed() -> bytes:
    """32 fresh random bytes: the default seed of a run."""
    return secrets.token_bytes(SEED_BYTES)


def fixed_seed(n: int) -> bytes:
    """The seed a user fixes with ``--seed N``: reproducible, hence public (not a secret)."""
    return hashlib.sha256(b"inferaudit.fixed-seed/v1\n" + str(n).encode()).digest()


def seed_commitment(seed: bytes) -> str:
    """Lowercase hex ``sha256(b"inferaudit.seed/v1\n" + seed)`` (contract C5)."""
    return hashlib.sha256(SEED_DOMAIN + seed).hexdigest()


def commit_seed(spec: RunSpec, seed: bytes) -> RunSpec:
    """``spec`` planned under ``seed``: the commitment in the protocol, the seed in memory only."""
    assert len(seed) == SEED_BYTES, "a run seed is 32 bytes"
    return spec.model_copy(update={"seed_commitment": seed_commitment(seed), "secret_seed": seed})


def planning_seed(spec: RunSpec) -> bytes:
    """The seed ``spec``'s requests are planned under (see the module docstring)."""
    if spec.secret_seed is not None:
        if spec.seed_commitment is not None and seed_commitment(spec.secret_seed) != (
            spec.seed_commitment
        ):
            raise ConfigError("the run's secret seed does not match the spec's seed_commitment")
        return spec.secret_seed
    if spec.seed_commitment is not None:
        raise ConfigError(
            "this protocol commits to a secret seed: its requests cannot be planned without it"
        )
    return fixed_seed(spec.seed)


def write_seed(run_dir: Path, seed: bytes) -> Path:
    """Reveal the seed (``seed.json``); call only after the last request has finished."""
    path = run_dir / SEED_FILE
    path.write_bytes(orjson.dumps({"seed": seed.hex()}) + b"\n")
    return path


def load_seed(run_dir: Path) -> bytes | None:
    """The revealed seed of a run (None when ``seed.json`` is absent, e.g. a v1 run)."""
    path = run_dir / SEED_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    value = data.get("seed") if isinstance(data, dict) else None
    if (
        not isinstance(value, str)
        or len(value) != 2 * SEED_BYTES
        or any(c not in "0123456789abcdef" for c in value)
        or set(data) != {"seed"}
    ):
        raise ConfigError(f'{path}: expected {{"seed": "<64 lowercase hex digits>"}}')
    return bytes.fromhex(value)


# ---- keyed draws ----


def prf(seed: bytes, label: bytes, i: int) -> bytes:
    """HMAC-SHA256(seed, label || 0x00 || i as 8 big-endian bytes): 32 pseudo-random bytes."""
    assert 0 <= i < MAX_ID, "request ids are 64-bit"
    return hmac.new(seed, label + b"\0" + i.to_bytes(8, "big"), hashlib.sha256).digest()


def prf_rng(seed: bytes, label: bytes, i: int) -> np.random.Generator:
    """A numpy generator seeded by ``prf(seed, label, i)`` (128 bits of it)."""
    return np.random.default_rng(int.from_bytes(prf(seed, label, i)[:16], "big"))


def salt(seed: bytes, i: int) -> str:
    """The salt words of request ``i``: ``SALT_WORDS`` bytes of ``prf(seed, "salt", i)``."""
    return " ".join(VOCAB[b] for b in prf(seed, b"salt", i)[:SALT_WORDS])


def sampling_body(sampling: Sampling, seed: bytes, i: int) -> dict[str, Any]:
    """The sampling keys of request ``i``: the same keys and value types for every request."""
    body: dict[str, Any] = {
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
    }
    if sampling.seed_per_request:
        body["seed"] = int.from_bytes(prf(seed, b"sampling", i)[:4], "big") & 0x7FFFFFFF
    return body


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


def synthetic_prompt(
    seed: bytes, i: int, words: int, rng: np.random.Generator | None = None
) -> str:
    """Salt of request ``i`` followed by ``words - SALT_WORDS`` vocabulary words, each chosen by
    one byte of SHAKE-128(``prf(seed, "body", i)``): uniform over the 256 words, no modulo bias.
    A caller with its own randomness passes ``rng`` to draw the body words from it instead."""
    n = max(words - SALT_WORDS, 0)
    if rng is not None:
        body: Iterable[int] = rng.integers(0, len(VOCAB), size=n).tolist()
    else:
        body = hashlib.shake_128(prf(seed, b"body", i)).digest(n) if n else b""
    return " ".join([salt(seed, i), *map(VOCAB.__getitem__, body)])
