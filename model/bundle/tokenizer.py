"""CLIP's byte-level BPE tokenizer over Hugging Face `tokenizers`, id for id with OpenAI's reference.

OpenAI's `simple_tokenizer.py` cleans the text in Python (ftfy, HTML unescape twice, whitespace collapse,
lower-case), splits it with a regex, maps bytes to printable characters and runs BPE with a `</w>`
end-of-word marker. We keep the cleaning in Python, exactly as OpenAI wrote it, and hand the rest to
`tokenizers` (Rust), which is what makes batches fast. Torch-free: the server imports this module.

`open_tokenizer` opens a bundle's tokenizer from its manifest's facts: this one, or SigLIP's
fixed-length SentencePiece tokenizer (model/bundle/hf_tokenizer.py); `TextTokenizer` is what both offer.
"""

from __future__ import annotations

import gzip
import html
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import ftfy
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from model.bundle import hf_tokenizer
from model.bundle.format import BundleError
from model.bundle.hf_tokenizer import Row, cached_rows

logger = logging.getLogger(__name__)

DEFAULT_VOCAB = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_SPECIALS = (SOT, EOT)
CLEANING = "ftfy+html_unescape_x2+whitespace"

# Characters that the `regex` module OpenAI's code runs on (2026.11, Unicode 17+) files under \p{L} / \p{N}
# but the Oniguruma tables inside `tokenizers` (Unicode 15.1) do not know yet: scripts assigned since.
# Without them a word with such a letter splits in three here and stays whole in the reference.
_NEW_L = (
    r"\x{558}\x{58b}-\x{58c}\x{88f}\x{c5c}\x{cdc}\x{208f}\x{209d}-\x{209f}\x{a7ce}-\x{a7cf}\x{a7d2}\x{a7d4}"
    r"\x{a7dd}\x{a7e2}\x{a7f1}\x{ab6c}-\x{ab6d}\x{107bb}-\x{107bf}\x{10940}-\x{10959}\x{10ec5}-\x{10ec7}"
    r"\x{10ed9}-\x{10eee}\x{11b0a}\x{11db0}-\x{11ddb}\x{11df1}\x{16ea0}-\x{16eb8}\x{16ebb}-\x{16ed3}"
    r"\x{16ff2}-\x{16ff3}\x{187f8}-\x{187ff}\x{18cd6}-\x{18cda}\x{18d09}-\x{18d20}\x{18d80}-\x{18df2}"
    r"\x{18e00}-\x{19191}\x{191a0}-\x{191d2}\x{1b123}-\x{1b128}\x{1b168}\x{1d6a6}\x{1df1f}-\x{1df24}"
    r"\x{1df2b}-\x{1df81}\x{1df90}-\x{1df96}\x{1dfcd}-\x{1dfff}\x{1e6c0}-\x{1e6de}\x{1e6e0}-\x{1e6e2}"
    r"\x{1e6e4}-\x{1e6e5}\x{1e6e7}-\x{1e6ed}\x{1e6f0}-\x{1e6f4}\x{1e6fe}-\x{1e6ff}\x{2b73a}-\x{2b73f}"
    r"\x{2b81e}\x{2cea2}-\x{2cead}\x{323b0}-\x{33479}\x{3d000}-\x{3fc3f}"
)
_NEW_N = r"\x{11de0}-\x{11de9}\x{1246f}\x{12475}-\x{1247f}\x{12550}-\x{12686}\x{16ff4}-\x{16ff6}"

# OpenAI's split pattern: specials | contractions | letter runs | single digits | other runs; what no
# branch matches (whitespace) is dropped. OpenAI compiles it with IGNORECASE, which after lower-casing
# matters in two places only: "'ſ" (long s) matches "'s", and U+0345 (combining ypogegrammeni, which
# case-folds to a Greek letter) is excluded from the negated class, so OpenAI drops it. Oniguruma's (?i)
# would instead put U+0345 into the letter class, so the flag is scoped to the contractions and U+0345
# is excluded by hand.
SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    rf"|[\p{{L}}{_NEW_L}]+|[\p{{N}}{_NEW_N}]|[^\s\p{{L}}\p{{N}}\x{{345}}{_NEW_L}{_NEW_N}]+"
)

# OpenAI collapses whitespace with the third-party `regex` module, whose \s is Unicode's White_Space
# property. The stdlib's \s also matches U+001C..U+001F (str.isspace), so we spell the class out.
_WHITESPACE = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")

# Merges that OpenAI keeps: the first line of the file is a header; 49152 - 256 - 2 merges follow.
_N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (the same one `tokenizers`' ByteLevel uses)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _build_clip_bpe(vocab_path: Path) -> Tokenizer:
    """Build the `tokenizers` pipeline with OpenAI's vocabulary order (ids must match theirs)."""
    lines = gzip.decompress(vocab_path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + list(_SPECIALS)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{vocab_path}: duplicate tokens in the vocabulary")
    bpe = models.BPE(vocab=vocab, merges=[(a, b) for a, b in merges], end_of_word_suffix="</w>")
    tok = Tokenizer(bpe)
    # Specials are added tokens so that decode/skip_special_tokens work; `encode` keeps OpenAI's rule on
    # where a literal "<|endoftext|>" in user text counts as the special token (_encode_with_specials).
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _SPECIALS])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # invert=True + "removed": keep the regex matches, drop what lies between (whitespace),
            # which is what OpenAI's re.findall does.
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.Sequence([decoders.BPEDecoder(suffix="</w>"), decoders.ByteLevel()])
    # Informative for other consumers of tokenizer.json; our own encode adds sot/eot itself.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])]
    )
    return tok


def basic_clean(text: str) -> str:
    """OpenAI's basic_clean: ftfy, then HTML entities unescaped twice."""
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _is_plain(text: str) -> bool:
    """Printable ASCII without "&": text that basic_clean returns unchanged (ftfy repairs only
    non-ASCII text, control characters and line breaks; unescaping needs "&"). Most labels and
    prompts are plain, and ftfy took 60% of a label-set build (tests/model/test_tokenizer.py
    holds the two paths equal)."""
    return text.isascii() and text.isprintable() and "&" not in text


class ClipTokenizer:
    """CLIP tokenizer: `clean` in Python, split + byte-level BPE in `tokenizers`, sot/eot/pad in numpy."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (sot + eot), got {context_length}")
        # Padding/truncation stored in a tokenizer.json would break our own length rules.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        sot, eot = tokenizer.token_to_id(SOT), tokenizer.token_to_id(EOT)
        if sot is None or eot is None:
            raise ValueError(f"tokenizer lacks {SOT} or {EOT}")
        self._tok = tokenizer
        self._split = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True)
        self.context_length = context_length
        self.sot_id: int = sot
        self.eot_id: int = eot
        self.pad_id: int = 0  # OpenAI pads with zeros (the id of "!"); masked out by causality anyway
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        # raw text -> ids without sot/eot; cleaning (ftfy) costs more than BPE, and label prompts repeat.
        self._cache: dict[str, tuple[int, list[int]]] = {}

    @classmethod
    def clip_bpe(cls, context_length: int = 77) -> ClipTokenizer:
        """OpenAI's CLIP BPE from the vocabulary file shipped in model/assets."""
        logger.debug("building CLIP BPE from %s", DEFAULT_VOCAB)
        return cls(_build_clip_bpe(DEFAULT_VOCAB), context_length)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 77) -> ClipTokenizer:
        """Load a tokenizer.json written by `save` (e.g. from a model bundle); ValueError when damaged."""
        return cls(hf_tokenizer.read_tokenizer_json(path), context_length)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def vocab(self) -> dict[str, int]:
        """Token -> id of the BPE vocabulary (whole words end in "</w>"); the lexicon of negative
        labels is mined from it (model/bundle/openset.py)."""
        return self._tok.get_vocab(with_added_tokens=False)

    @staticmethod
    def clean(text: str) -> str:
        """OpenAI's basic_clean + whitespace_clean + lower(), in their order."""
        if not _is_plain(text):
            text = basic_clean(text)
        return _WHITESPACE.sub(" ", text).strip().lower()

    def _encode_clean(self, cleaned: Sequence[str]) -> list[list[int]]:
        """Ids (no sot/eot) of already-cleaned texts."""
        out = [enc.ids for enc in self._tok.encode_batch(list(cleaned), add_special_tokens=False)]
        for i, text in enumerate(cleaned):
            if any(s in text for s in _SPECIALS):
                out[i] = self._encode_with_specials(text)
        return out

    def _encode_with_specials(self, text: str) -> list[int]:
        # `tokenizers` extracts an added token anywhere; OpenAI only where its regex matches it as a whole
        # piece ("<<|endoftext|>" is "<<|" + "endoftext" + "|>"). Split the way OpenAI does and encode
        # piece by piece; a non-special piece never contains a special string, so it encodes plainly.
        pieces = [p for p, _ in self._split.pre_tokenize_str(text)]
        normal = iter(
            self._tok.encode_batch([p for p in pieces if p not in _SPECIALS], add_special_tokens=False)
        )
        ids: list[int] = []
        for p in pieces:
            ids.extend([self.sot_id if p == SOT else self.eot_id] if p in _SPECIALS else next(normal).ids)
        return ids

    def _lookup(self, texts: Sequence[str]) -> list[tuple[int, list[int]]]:
        """(token count without sot/eot, ids cut to fit the context) per text, through the cache."""

        def encode(missing: list[str]) -> list[Row]:
            # Keep only what can be framed: a huge text must not pin a huge list in the cache.
            rows = self._encode_clean([self.clean(t) for t in missing])
            return [(len(ids), ids[: self.context_length - 2]) for ids in rows]

        return cached_rows(self._cache, texts, encode)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Encoded length including sot and eot, before truncation (longer than context_length = cut)."""
        return [n + 2 for n, _ in self._lookup(texts)]

    def _frame(self, ids: list[int]) -> list[int]:
        # OpenAI's truncate=True: tokens[:L] and then tokens[-1] = eot; ids are already cut to L - 2.
        return [self.sot_id, *ids, self.eot_id]

    def encode(self, text: str) -> list[int]:
        """[sot, ..., eot], truncated to context_length with eot kept last."""
        return self._frame(self._lookup([text])[0][1])

    def encode_batch(self, texts: Sequence[str], pad_to: int | None = None) -> np.ndarray:
        """int64 [B, L] padded with pad_id; L is the longest text in the batch, or pad_to."""
        rows = [self._frame(ids) for _, ids in self._lookup(texts)]
        longest = max((len(r) for r in rows), default=2)
        if pad_to is not None and pad_to < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest encoded text ({longest})")
        out = np.full((len(rows), longest if pad_to is None else pad_to), self.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def facts(self) -> dict[str, object]:
        """What a bundle manifest records about the tokenizer."""
        return {
            "kind": "clip-bpe",
            "sot_id": self.sot_id,
            "eot_id": self.eot_id,
            "pad_id": self.pad_id,
            "vocab_size": self.vocab_size,
            "context_length": self.context_length,
            "lowercase": True,
            "cleaning": CLEANING,
        }


class TextTokenizer(Protocol):
    """What the encoders, the label cache and the text lane use of a bundle's tokenizer."""

    context_length: int
    pad_id: int
    vocab_size: int

    def clean(self, text: str) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def token_lengths(self, texts: Sequence[str]) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str], pad_to: int | None = None) -> np.ndarray: ...

    def vocab(self) -> dict[str, int]: ...

    def facts(self) -> dict[str, object]: ...

    def save(self, path: str | Path) -> None: ...


# A manifest without a kind predates the field: every such bundle holds CLIP's BPE.
CLIP_KINDS = (None, "clip-bpe", "clip_bpe")


def open_tokenizer(path: str | Path, facts: Mapping[str, Any], context_length: int) -> TextTokenizer:
    """The tokenizer.json at `path` as the manifest's tokenizer facts say to read it: CLIP's BPE
    (no kind, or "clip-bpe"), or SigLIP's fixed-length SentencePiece ("sentencepiece_fixed").
    `context_length`: the architecture's. A kind this code does not know is a BundleError naming it."""
    if not isinstance(facts, Mapping):
        raise BundleError(f"{path}: the manifest's tokenizer facts must be an object, not {facts!r}")
    kind = facts.get("kind")
    try:
        if kind in CLIP_KINDS:
            return ClipTokenizer.from_file(path, context_length)
        if kind == hf_tokenizer.KIND:
            return hf_tokenizer.FixedLengthTokenizer.from_facts(path, facts, context_length)
    except ValueError as e:
        raise BundleError(f"{path}: {e}") from None
    known = ", ".join(repr(k) for k in (*CLIP_KINDS[1:], hf_tokenizer.KIND))
    raise BundleError(f"{path}: the manifest's tokenizer kind {kind!r} is unknown; this code reads {known}")
