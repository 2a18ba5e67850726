"""Synthetic prompts of an exact token count under a local tokenizer (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from inferaudit.errors import ConfigError
from inferaudit.measure.exact_length import exact_prompt
from inferaudit.measure.tokenizer import Tokenizer, load_tokenizer
from inferaudit.measure.workload import VOCAB, fixed_seed, salt, synthetic_prompt

COUNTS = (1, 8, 9, 100, 257, 1000)
SEED = fixed_seed(11)
# the small corpus tests/test_checks_tokenizer.py trains on: most vocabulary words then take
# two or more tokens, so the count is met by searching and filling, not by one encode
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "inference capacity is measured, checked, signed and logged",
    "tokens per second at a p99 latency of 2000 ms, 128 tokens out",
    "Ünïcödé text, emoji 🙂 and numbers 1234567 also tokenize",
] * 20


def _bpe(tmp_path_factory: pytest.TempPathFactory, corpus: list[str], size: int) -> Tokenizer:
    tok = HfTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return load_tokenizer(path)


@pytest.fixture(scope="module")
def small_bpe(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return _bpe(tmp_path_factory, CORPUS, 400)


@pytest.fixture(scope="module")
def vocab_bpe(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A byte-level BPE that holds the vocabulary words, as GPT-2 / Llama 3 vocabularies do."""
    return _bpe(tmp_path_factory, [" ".join(VOCAB)] * 5 + CORPUS, 2000)


@pytest.mark.parametrize("tokens", COUNTS)
def test_small_bpe_exact_counts(small_bpe: Tokenizer, tokens: int) -> None:
    prompt = exact_prompt(small_bpe, SEED, 0, tokens)
    assert small_bpe.count(prompt) == tokens
    assert exact_prompt(small_bpe, SEED, 0, tokens) == prompt  # deterministic for (seed, i)
    other = exact_prompt(small_bpe, SEED, 1, tokens)
    assert small_bpe.count(other) == tokens
    assert other != prompt
    assert exact_prompt(small_bpe, fixed_seed(12), 0, tokens) != prompt


@pytest.mark.parametrize("tokens", COUNTS)
def test_vocab_bpe_exact_counts(vocab_bpe: Tokenizer, tokens: int) -> None:
    prompt = exact_prompt(vocab_bpe, SEED, 3, tokens)
    assert vocab_bpe.count(prompt) == tokens
    assert exact_prompt(vocab_bpe, SEED, 3, tokens) == prompt
    assert exact_prompt(vocab_bpe, SEED, 4, tokens) != prompt
    if tokens >= 100:
        assert prompt.startswith(salt(SEED, 3) + " ")
        # about one token per vocabulary word
        assert tokens - 3 <= len(prompt.split()) <= tokens


def test_one_token_per_word_is_the_synthetic_prompt(word_tokenizer: Path) -> None:
    tok = load_tokenizer(word_tokenizer)
    for tokens in COUNTS[1:]:
        assert exact_prompt(tok, SEED, 5, tokens) == synthetic_prompt(SEED, 5, tokens)
    assert exact_prompt(tok, SEED, 5, 1) == salt(SEED, 5).split()[0]
    assert exact_prompt(tok, SEED, 5, 3) == " ".join(salt(SEED, 5).split()[:3])


def test_counts_that_cannot_be_met() -> None:
    with pytest.raises(ConfigError, match=r"^exact prompt length 0: must be at least 1 token$"):
        exact_prompt(Tokenizer("fake", "/x", lambda t: [0] * len(t)), SEED, 0, 0)
    # every character two tokens: an odd count is out of reach
    doubled = Tokenizer("doubling", "/x/doubling.json", lambda t: [0] * (2 * len(t)))
    assert doubled.count(exact_prompt(doubled, SEED, 0, 10)) == 10
    with pytest.raises(ConfigError) as info:
        exact_prompt(doubled, SEED, 0, 9)
    assert info.value.diagnostics() == (
        "exact prompt length 9: doubling (doubling.json) cannot encode a synthetic prompt of "
        "request 0 to exactly 9 tokens (closest below: 6)"
    )
    # a tokenizer that merges whole phrases: too few tokens however many words
    merging = Tokenizer("merging", "/x/merging.json", lambda t: [0] * (len(t.split()) // 4))
    with pytest.raises(ConfigError, match=r"^exact prompt length 50: merging \(merging\.json\) "
                       r"encodes 108 words as only 27 tokens$"):  # fmt: skip
        exact_prompt(merging, SEED, 0, 50)
