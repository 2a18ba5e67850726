"""The truth side's automatic-prefix-cache view: how much of a prompt an earlier one began with.

vLLM's automatic prefix caching hashes a prompt's tokens block by block, each block's hash
chained on the one before, so a block hash names the whole prefix up to and including it. The
twin records the same idea for every request, on the truth side only (it changes nothing that
is served; the ``prefix-cache`` behaviour keeps its own cache, block size and state):

1. the prompt's tokens are the twin's own token units (``text.count_prompt_tokens``: the
   whitespace-separated words of the prompt text as the twin renders it);
2. they are split into blocks of :data:`BLOCK_TOKENS` (16) words; a trailing partial block is
   never hashed;
3. ``h_0`` is 32 zero bytes and ``h_k = sha256(h_{k-1} || block_k)``, with ``block_k`` the UTF-8
   of its 16 words joined by one space (words hold no whitespace, so this is unambiguous);
4. ``prefix_hit_tokens`` = 16 x the number of leading blocks whose ``h_k`` an earlier request
   already produced (first come, first served, across the twin's lifetime); the blocks after the
   first miss are then remembered for later requests.

The set of remembered hashes is capped at :data:`MAX_HASHES` (10^6, about 16 M prompt tokens,
near 100 MB): once full, lookups go on but no new hash is remembered, so prefixes first seen
after that never count as hits. Nothing is evicted: the view is deterministic for a given
request order.
"""

from __future__ import annotations

import hashlib

BLOCK_TOKENS = 16
MAX_HASHES = 1_000_000
_H0 = bytes(32)


def chain_hashes(words: list[str]) -> list[bytes]:
    """``h_1 .. h_n`` of the whole blocks of ``words`` (step 3 of the module docstring)."""
    out: list[bytes] = []
    previous = _H0
    for start in range(0, len(words) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
        block = " ".join(words[start : start + BLOCK_TOKENS]).encode()
        previous = hashlib.sha256(previous + block).digest()
        out.append(previous)
    return out


class PrefixView:
    """The block hashes seen so far; ``observe`` one prompt after another, in arrival order."""

    def __init__(self, max_hashes: int = MAX_HASHES) -> None:
        assert max_hashes >= 0, "the cap is a constant of ours"
        self.max_hashes = max_hashes
        self._seen: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, prompt: str) -> int:
        """Prompt tokens covered by leading blocks seen before; then remember the rest."""
        hashes = chain_hashes(prompt.split())
        hits = 0
        while hits < len(hashes) and hashes[hits] in self._seen:
            hits += 1
        for digest in hashes[hits:]:
            if len(self._seen) >= self.max_hashes:
                break
            self._seen.add(digest)
        return hits * BLOCK_TOKENS
