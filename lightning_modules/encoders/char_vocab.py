"""A character-level Chinese vocabulary with BERT's special tokens, cached outside the data directory."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from transformers import BertTokenizerFast

from datamodules.runs.writing import replaced

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _characters(texts: Iterable[str], min_count: int) -> list[str]:
    counts = Counter(ch for text in texts for ch in text.lower() if not ch.isspace())
    return sorted(ch for ch, n in counts.items() if n >= min_count)


def build_char_vocab(texts: Iterable[str], min_count: int = 1) -> list[str]:
    """Special tokens, every character, and ``##c`` pieces so that Latin words split into letters."""
    chars = _characters(texts, min_count)
    continuations = [f"##{ch}" for ch in chars if ch.isascii() and ch.isalnum()]
    return [*SPECIAL_TOKENS, *chars, *continuations]


def char_tokenizer(texts: Iterable[str], cache_dir: str | Path, min_count: int = 1) -> BertTokenizerFast:
    """A BertTokenizerFast over the characters of ``texts``; the vocabulary file is cached by content."""
    vocab = build_char_vocab(texts, min_count)
    digest = hashlib.sha1("\n".join(vocab).encode("utf-8")).hexdigest()[:16]
    path = Path(cache_dir) / "char_vocab" / f"vocab-{digest}.txt"
    if not path.is_file():
        with replaced(path) as tmp:
            tmp.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary through ``vocab`` (``vocab_file`` is ignored there).
    return BertTokenizerFast(vocab=str(path), do_lower_case=True, tokenize_chinese_chars=True)
