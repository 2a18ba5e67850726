"""The twin's own deterministic "language model": words from a fixed vocabulary.

Token rule (the twin's own, shared with nothing on the client side):

- an output token is one word of :data:`VOCABULARY`, sent as ``" " + word`` (leading space), so
  the number of whitespace-separated words of a completion equals its token count;
- a prompt's token count is the number of whitespace-separated words of the prompt text (for
  chat: of every message's text content; roles and template tokens are not counted).

Text is a pure function of (model identity, prompt, seed, temperature):

- ``temperature == 0`` is greedy decoding: the text depends on identity and prompt only;
- ``temperature > 0`` with a ``seed``: depends on identity, prompt, seed and temperature;
- ``temperature > 0`` without a seed: the caller supplies a seed from the server's own generator
  (so a whole twin run is reproducible from its ``--seed``, yet unseeded requests differ).

Word ranks follow a Zipf law (weight ``rank ** (-1 / temperature)``); each model identity maps
ranks to words through its own permutation, so a "different model" produces a visibly different
text distribution for the same prompt and seed. The natural length (where the model would emit
EOS) is drawn from a geometric law with mean ``eos_mean`` from the same generator.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
_CODAS = ("", "n", "r", "s")
_SYLLABLES = tuple(o + v + c for o, v, c in itertools.product(_ONSETS, _VOWELS, _CODAS))


def _build_vocabulary(size: int) -> tuple[str, ...]:
    """``size`` distinct pseudo-words of two syllables, in a fixed order."""
    pairs = [a + b for a, b in itertools.product(_SYLLABLES, repeat=2)]
    words: dict[str, None] = {}  # ordered set: different syllable pairs can spell one word
    for i in range(len(pairs)):
        words.setdefault(pairs[i * 40503 % len(pairs)])
        if len(words) == size:
            break
    return tuple(words)


VOCAB_SIZE = 4096
VOCABULARY: tuple[str, ...] = _build_vocabulary(VOCAB_SIZE)
assert len(set(VOCABULARY)) == VOCAB_SIZE, "vocabulary words must be distinct"
DEFAULT_EOS_MEAN = 128.0


def count_prompt_tokens(text: str) -> int:
    """The twin's prompt-token rule: whitespace-separated words."""
    return len(text.split())


def _digest_int(*parts: object) -> int:
    h = hashlib.sha256()
    for part in parts:
        data = repr(part).encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return int.from_bytes(h.digest()[:16], "big")


@lru_cache(maxsize=16)
def _word_map(identity: str) -> tuple[str, ...]:
    """Rank -> word for one model identity (a permutation of the vocabulary)."""
    words = list(VOCABULARY)
    random.Random(_digest_int("word-map", identity)).shuffle(words)
    return tuple(words)


@lru_cache(maxsize=64)
def _cum_weights(temperature: float) -> tuple[float, ...]:
    exponent = 1.0 / temperature
    return tuple(itertools.accumulate((r + 1) ** -exponent for r in range(VOCAB_SIZE)))


@dataclass(frozen=True)
class Completion:
    """What the model would say: ``words`` (tokens) and whether it stopped on EOS."""

    words: tuple[str, ...]
    finish_reason: str  # "stop" (EOS) or "length" (max_tokens reached)

    def text(self) -> str:
        return "".join(" " + w for w in self.words)


def natural_words(
    identity: str,
    prompt: str,
    *,
    seed: int,
    temperature: float,
    limit: int,
    eos_mean: float = DEFAULT_EOS_MEAN,
) -> tuple[tuple[str, ...], int]:
    """The first ``limit`` words the model would sample, and its natural length (EOS position).

    The natural length is >= 1; it may exceed ``limit``.
    """
    assert limit >= 0 and eos_mean > 0, "limit and eos_mean are checked by the caller"
    greedy = temperature <= 0.0
    key = ("greedy",) if greedy else ("sample", seed, round(temperature, 6))
    rng = random.Random(_digest_int("text", identity, prompt, *key))
    u = rng.random()
    natural = 1 + int(-eos_mean * math.log1p(-u))
    ranks = rng.choices(
        range(VOCAB_SIZE), cum_weights=_cum_weights(1.0 if greedy else temperature), k=limit
    )
    word_map = _word_map(identity)
    return tuple(word_map[r] for r in ranks), natural


def complete(
    identity: str,
    prompt: str,
    *,
    seed: int,
    temperature: float,
    max_tokens: int,
    min_tokens: int = 0,
    ignore_eos: bool = False,
    eos_mean: float = DEFAULT_EOS_MEAN,
) -> Completion:
    """The completion an honest engine returns for these sampling parameters.

    With ``ignore_eos`` exactly ``max_tokens`` words and ``"length"``; otherwise the model stops
    at its natural length (never before ``min_tokens``) with ``"stop"``, or at ``max_tokens``.
    """
    words, natural = natural_words(
        identity, prompt, seed=seed, temperature=temperature, limit=max_tokens, eos_mean=eos_mean
    )
    if ignore_eos:
        return Completion(words, "length")
    stop_at = max(natural, min_tokens)
    if stop_at >= max_tokens:
        return Completion(words, "length")
    return Completion(words[:stop_at], "stop")


@lru_cache(maxsize=16)
def _ranks(identity: str) -> dict[str, int]:
    return {w: r for r, w in enumerate(_word_map(identity))}


def token_logprobs(identity: str, words: Sequence[str], top: int) -> list[dict[str, float]]:
    """Per word: the ``top`` most likely tokens and the word itself, ``{" " + word: logprob}``.

    The twin's next-token distribution is the same Zipf law at every position (weight
    ``1 / (rank + 1)``, the distribution greedy text is drawn from), so a word's logprob is
    ``-log(rank + 1) - log(H)`` with ``H`` the sum of all weights. A word another identity
    chose has its rank under this identity: a "different model" picks tokens this one ranks low.
    """
    log_h = math.log(_cum_weights(1.0)[-1])
    word_map, ranks = _word_map(identity), _ranks(identity)

    def lp(rank: int) -> float:
        return -math.log(rank + 1) - log_h

    best = {" " + word_map[r]: lp(r) for r in range(min(top, VOCAB_SIZE))}
    return [{**best, " " + w: lp(ranks[w])} for w in words]
