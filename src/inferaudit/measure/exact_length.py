"""Synthetic prompts of an exact token count under the run's tokenizer.

``exact_prompt(tokenizer, seed, i, tokens)`` is the prompt of request ``i`` whose encoding by
``tokenizer`` (``Tokenizer.count``: no special tokens) is exactly ``tokens`` tokens. Its words
are those of ``measure.workload.synthetic_prompt``: the salt of ``i``, then vocabulary words,
one per byte of SHAKE-128(``prf(seed, "body", i)``); so with a tokenizer that counts one token
per word it *is* ``synthetic_prompt(seed, i, tokens)`` (for ``tokens >= SALT_WORDS``).

The method, in the spirit of vLLM's random dataset (build words of about the right length,
encode, adjust, re-encode to confirm) but adjusting whole words, not token ids, because a
:class:`~inferaudit.measure.tokenizer.Tokenizer` only encodes, and cutting token ids mid-word
would send fragments no synthetic prompt has:

    1. Search the word count: ``n(w)`` is the token count of the first ``w`` words of the
       stream above. Start at ``w = tokens`` (vocabulary words are ~one token each) and
       narrow, by interpolation, to ``lo`` with ``n(lo) <= tokens < n(lo + 1)``; done when
       ``n(lo) == tokens`` (the usual case for BPE vocabularies: one encode).
    2. Fill the gap: append, in a fixed order, the next stream words, then their first two
       letters, then their first letter (a space before each unless the prompt is empty),
       keeping each one whose re-encoded total does not pass ``tokens``, until it is exact.
    3. Confirm with a final encode. Both loops are bounded; a count that cannot be met (a
       tokenizer that needs several tokens for every candidate) raises ``ConfigError``.

Deterministic in ``(seed, i, tokens)`` and the tokenizer; no two ids share a prompt beyond
what a salt collision allows (one in 2**64).
"""

from __future__ import annotations

import hashlib

from inferaudit.errors import ConfigError
from inferaudit.measure.tokenizer import Tokenizer
from inferaudit.measure.workload import SALT_WORDS, VOCAB, prf, salt

__all__ = ["FILL_CANDIDATES", "exact_prompt"]

FILL_CANDIDATES = 64  # stream words tried (whole, then cut) to fill the last few tokens
_INTERPOLATIONS = 8  # step 1 interpolates this many times, then bisects
_SEARCH_STEPS = 128  # step 1's bound: 8 + log2(the stream's length) steps suffice


def _stream(seed: bytes, i: int, n: int) -> list[str]:
    """The first ``n`` words of request ``i``'s synthetic stream: salt, then body words."""
    words = salt(seed, i).split()
    body = n - SALT_WORDS
    if body > 0:
        words += [VOCAB[b] for b in hashlib.shake_128(prf(seed, b"body", i)).digest(body)]
    return words[:n]


def _text(words: list[str]) -> str:
    return " ".join(words)


def exact_prompt(tokenizer: Tokenizer, seed: bytes, i: int, tokens: int) -> str:
    """A prompt of request ``i`` that ``tokenizer`` encodes to exactly ``tokens`` tokens."""
    if tokens < 1:
        raise ConfigError(f"exact prompt length {tokens}: must be at least 1 token")
    # (1): the word count, over a stream long enough for any tokenizer that spends >= 1 token
    # per word, plus the fill candidates
    limit = 2 * tokens + SALT_WORDS
    words = _stream(seed, i, limit + FILL_CANDIDATES)

    def n(w: int) -> int:
        return tokenizer.count(_text(words[:w]))

    lo, n_lo = 0, 0  # the empty prompt: no tokens
    hi, n_hi = tokens, n(tokens)
    if n_hi == tokens:
        return _text(words[:hi])
    if n_hi < tokens:
        lo, n_lo = hi, n_hi
        hi, n_hi = limit, n(limit)
    if n_hi <= tokens:  # the tokenizer merges words: even ``limit`` words are too few tokens
        raise ConfigError(
            f"exact prompt length {tokens}: {tokenizer.describe()} encodes {limit} words as "
            f"only {n_hi} tokens"
        )
    for step in range(_SEARCH_STEPS):
        if hi - lo == 1:
            break
        # interpolate (n_hi > tokens >= n_lo), clamped inside; bisect once that is slow
        guess = lo + (tokens - n_lo) * (hi - lo) // (n_hi - n_lo)
        w = min(max(guess, lo + 1), hi - 1) if step < _INTERPOLATIONS else (lo + hi) // 2
        count = n(w)
        if count == tokens:
            return _text(words[:w])
        if count < tokens:
            lo, n_lo = w, count
        else:
            hi, n_hi = w, count
    assert hi - lo == 1, "the word-count search is bounded by a bisection or the code has a bug"
    # (2): fill the last tokens - n(lo) tokens
    prompt, count = _text(words[:lo]), n_lo
    spares = words[lo : lo + FILL_CANDIDATES]
    for candidate in [*spares, *(w[:2] for w in spares), *(w[:1] for w in spares)]:
        trial = f"{prompt} {candidate}" if prompt else candidate
        trial_count = tokenizer.count(trial)
        if trial_count <= tokens:
            prompt, count = trial, trial_count
            if count == tokens:
                break
    # (3): confirm
    if count != tokens or tokenizer.count(prompt) != tokens:
        raise ConfigError(
            f"exact prompt length {tokens}: {tokenizer.describe()} cannot encode a synthetic "
            f"prompt of request {i} to exactly {tokens} tokens (closest below: {count})"
        )
    return prompt
