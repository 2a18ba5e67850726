"""Client-side re-tokenization: count the tokens of a whole output text, never chunk by chunk.

Sources, all local files (nothing is ever downloaded):
  * ``tokenizer.json`` (Hugging Face ``tokenizers`` format) -> ``tokenizers.Tokenizer``;
  * a GGUF model file -> ``llama_cpp.Llama(model_path, vocab_only=True)`` when the ``[local]``
    extra is installed (exact: the same tokenizer code llama.cpp serves with); otherwise, for
    byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``), a ``tokenizers`` BPE built
    from the GGUF vocabulary and merges with the pre-tokenizer named by ``tokenizer.ggml.pre``
    (GPT-2, Llama-3 and Qwen2 split rules). SentencePiece vocabularies (``"llama"``: Llama 2,
    Gemma, ...) need the ``[local]`` extra: their score-ordered merges are not rebuilt here.

Counts exclude special tokens (no BOS/EOS added): they are the generated text's tokens, which is
what ``usage.completion_tokens`` counts for an output (a server that counts a final EOS shows as
a one-token difference per request, which the token-accounting check reports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inferaudit.errors import ConfigError

GGUF_MAGIC = b"GGUF"

# Pre-tokenizer split rules, as llama.cpp's llama-vocab.cpp defines them per ``tokenizer.ggml.pre``.
_LLAMA3_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLITS: dict[str, str | None] = {
    "default": None,  # GPT-2's own byte-level regex
    "gpt2": None,
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
}


@dataclass(frozen=True)
class Tokenizer:
    """A local tokenizer: ``encode(text)`` gives token ids without special tokens."""

    source: str  # e.g. "tokenizer.json", "gguf+llama_cpp", "gguf+tokenizers(bpe:llama-bpe)"
    path: str
    _encode: Callable[[str], list[int]]

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    def count(self, text: str) -> int:
        return len(self._encode(text))

    def describe(self) -> str:
        return f"{self.source} ({Path(self.path).name})"

    def __reduce__(self) -> tuple[Callable[[Path], Tokenizer], tuple[Path]]:
        """Pickled as its file (the load workers get a planner that prompts with it): each
        process loads it again."""
        return (load_tokenizer, (Path(self.path),))


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a ``tokenizer.json`` or a GGUF file; a ConfigError names what is wrong."""
    if not path.is_file():
        raise ConfigError(f"--tokenizer {path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == GGUF_MAGIC:
        return _from_gguf(path)
    return _from_tokenizer_json(path)


def _from_tokenizer_json(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HfTokenizer

    try:
        tok = HfTokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--tokenizer {path}: not a tokenizer.json or GGUF file ({first})"
        ) from None

    def encode(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False).ids)

    return Tokenizer("tokenizer.json", str(path), encode)


def _from_gguf(path: Path) -> Tokenizer:
    try:
        import llama_cpp
    except ImportError:
        return _gguf_bpe(path)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    def encode(text: str) -> list[int]:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    return Tokenizer("gguf+llama_cpp", str(path), encode)


def _gguf_bpe(path: Path) -> Tokenizer:
    """Byte-level BPE from a GGUF vocabulary, without llama.cpp."""
    from gguf import GGUFReader
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HfTokenizer

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--tokenizer {path}: unreadable GGUF file ({exc})") from None

    def field(key: str) -> object:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    kind = field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ConfigError(
            f"--tokenizer {path}: GGUF tokenizer type {kind!r} needs llama-cpp-python "
            "(pip install 'inferaudit[local]') or a tokenizer.json"
        )
    pre = str(field("tokenizer.ggml.pre") or "default")
    if pre not in _PRE_SPLITS:
        raise ConfigError(
            f"--tokenizer {path}: GGUF pre-tokenizer {pre!r} is not rebuilt without "
            "llama-cpp-python; install the [local] extra or give a tokenizer.json"
        )
    tokens = field("tokenizer.ggml.tokens")
    merges = field("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise ConfigError(f"--tokenizer {path}: GGUF file has no BPE vocabulary and merges")
    vocab = {str(t): i for i, t in enumerate(tokens)}
    pairs: list[tuple[str, str]] = []
    for m in merges:
        left, sep, right = str(m).partition(" ")
        if not sep:
            raise ConfigError(f"--tokenizer {path}: malformed BPE merge {m!r}")
        pairs.append((left, right))
    # Llama-3 vocabularies look whole pre-tokens up before merging (HF: ignore_merges).
    ignore = pre in ("llama-bpe", "llama3")
    tok = HfTokenizer(models.BPE(vocab, pairs, ignore_merges=ignore))
    split = _PRE_SPLITS[pre]
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()

    def encode(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False).ids)

    return Tokenizer(f"gguf+tokenizers(bpe:{pre})", str(path), encode)
