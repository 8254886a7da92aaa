"""SigLIP's SentencePiece tokenizer over the checkpoint's tokenizer.json, padded to a fixed length, id
for id with what the checkpoint's processor returns for
`processor(text=texts, padding="max_length", max_length=L, truncation=True)`.

SigLIP's text tower is non-causal and pooled at the last position, so every text is padded to the
checkpoint's length L (64 for SigLIP-B/16), never only to the longest prompt as CLIP's may be.

Transformers has no fast tokenizer class for SigLIP (no `SiglipTokenizerFast`, no converter in
`convert_slow_tokenizer`): AutoTokenizer and SiglipProcessor always run the slow `SiglipTokenizer`
(SentencePiece), and that is what this module reproduces, with the tokenizer.json standing in for
`spiece.model` (a converted tokenizer.json encodes like `SentencePieceProcessor.encode`). So the
processor does canonicalise the text (step 3), which a fast tokenizer over the same tokenizer.json
would not ("A Dog!" and "a dog" are one prompt to SigLIP). Step by step, as transformers 5 does it
(models/siglip/tokenization_siglip.py, tokenization_python.py):

1. "▁" (U+2581) in the text becomes a space, and one "▁" is put in front (`SiglipTokenizer.tokenize`).
2. The text is split on the special tokens written in it: eos, unk and pad ("</s>", "<unk>"), which
   become their ids (`PreTrainedTokenizer.tokenize`), stripping no whitespace beside them, as
   transformers 5 loads SigLIP's (and step 3 strips every piece anyway).
3. Each piece between them is canonicalised as `SiglipTokenizer.canonicalize_text` does (big_vision's
   prompt canonicalisation, with `keep_punctuation_exact_string=None`): lower-cased when the
   checkpoint's `do_lower_case` (the `lowercase` fact), ASCII punctuation (`string.punctuation`)
   removed, runs of whitespace (Python's `\\s`) made one space, stripped. `canonicalize=False` skips
   this step but for the lower-casing.
4. Each piece is segmented as `sp.encode(unk + piece)` less the unk's own pieces (`_tokenize`), which
   keeps SentencePiece from adding its dummy prefix: a piece right after a special token is
   segmented without "▁" ("x</s>y" ends in "y", not "▁y").
5. A lone "▁" first, before a special token, is dropped.
6. The ids are cut to L - 1, eos is appended unless they already end with it
   (`_add_eos_if_not_present`), and the row is padded with the pad id (SigLIP: "</s>") to exactly L.
   A post-processor in tokenizer.json that appends eos gives the same rows; any other is refused.

Known limits: where `tokenizers`' Precompiled normalizer departs from SentencePiece's (a few grapheme
clusters, e.g. "ſ" followed by a zero-width joiner), the ids follow the tokenizer.json, as no code
over that file can do otherwise; a lone surrogate, on which the processor raises, is read as U+FFFD.
Torch-free and transformers-free: only `tokenizers` and numpy.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

KIND = "sentencepiece_fixed"
SPIECE_UNDERLINE = "\u2581"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")  # the stdlib's \s, as canonicalize_text uses it
_SURROGATE = re.compile("[\ud800-\udfff]")


Row = tuple[int, list[int]]  # (the text's length in tokens, its ids as the tokenizer keeps them)
_CACHE_LIMIT = 100_000


# The per-text cache both tokenizers keep (CLIP's BPE in tokenizer.py imports it from here, since this
# module must import nothing of the project): prompts repeat across requests and label sets.
def cached_rows(
    cache: dict[str, Row], texts: Sequence[str], encode: Callable[[list[str]], list[Row]]
) -> list[Row]:
    """One row per text, in order: from `cache`, else from `encode` (called once, on the distinct texts
    not cached), which are then cached. The cache is cleared when it would pass _CACHE_LIMIT."""
    if isinstance(texts, str):  # a str is a Sequence[str] too: one char per row is never meant
        raise TypeError("expected a sequence of texts, got a single str")
    # A local dict, so that another thread clearing the cache between our reads cannot bite.
    found: dict[str, Row] = {}
    missing: list[str] = []
    for text in dict.fromkeys(texts):
        hit = cache.get(text)
        if hit is None:
            missing.append(text)
        else:
            found[text] = hit
    if missing:
        if len(cache) + len(missing) > _CACHE_LIMIT:
            cache.clear()  # crude but bounded; label sets are far smaller than the limit
        for text, row in zip(missing, encode(missing), strict=True):
            found[text] = cache[text] = row
    return [found[t] for t in texts]


def canonicalize(text: str, lowercase: bool = True) -> str:
    """`SiglipTokenizer.canonicalize_text`: lower-case (if asked), drop ASCII punctuation, collapse
    whitespace, strip."""
    if lowercase:
        text = text.lower()
    return _WHITESPACE.sub(" ", text.translate(_PUNCTUATION)).strip()


def _tokenizer_without(tokenizer: Tokenizer, *keys: str) -> Tokenizer:
    """A copy of `tokenizer` with the named parts of its tokenizer.json emptied."""
    spec = json.loads(tokenizer.to_str())
    for key in keys:
        spec[key] = [] if key == "added_tokens" else None
    return Tokenizer.from_str(json.dumps(spec))


def read_tokenizer_json(path: str | Path) -> Tokenizer:
    """`Tokenizer.from_file`, whose bare Exception for a truncated or garbled file ("EOF while
    parsing...") says nothing of a tokenizer: a ValueError that does (callers prefix the path), so a
    damaged bundle is refused with a reason a reader can act on."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"not a tokenizer.json `tokenizers` can read: {e}") from None


class FixedLengthTokenizer:
    """SigLIP's tokenizer: split on specials and canonicalise in Python, segment in `tokenizers`
    (normalizer, pre-tokenizer and model of the tokenizer.json), eos and fixed padding in numpy."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        context_length: int = 64,
        *,
        eos_token: str = "</s>",
        pad_token: str = "</s>",
        unk_token: str = "<unk>",
        lowercase: bool = True,
        canonicalize: bool = True,
    ) -> None:
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1 (eos), got {context_length}")
        looked_up = {t: tokenizer.token_to_id(t) for t in (eos_token, pad_token, unk_token)}
        found = {t: i for t, i in looked_up.items() if i is not None}
        if len(found) < len(looked_up):
            lacking = ", ".join(t for t in looked_up if t not in found)
            raise ValueError(f"tokenizer.json lacks the token(s) {lacking}")
        self._tok = tokenizer  # kept as given: `save` writes the checkpoint's own file
        # The pipeline alone: no added tokens (we split on the specials as the slow tokenizer does, and
        # the prefix "<unk>" of step 4 must stay text), no post-processor, padding or truncation (ours).
        self._bare = _tokenizer_without(tokenizer, "added_tokens", "post_processor", "padding", "truncation")
        self.context_length = context_length
        self.eos_token, self.pad_token, self.unk_token = eos_token, pad_token, unk_token
        self.eos_id, self.pad_id = found[eos_token], found[pad_token]
        self.lowercase, self.canonicalize = lowercase, canonicalize
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self._check_post_processor(tokenizer)
        specials = sorted({eos_token, pad_token, unk_token}, key=len, reverse=True)  # longest first
        self._special_ids = {t: found[t] for t in specials}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in specials) + ")")
        # Step 4's prefix: SentencePiece spells "<unk>" out in characters, `tokenizers`' Unigram takes it
        # as the vocabulary's own piece; either way it is measured in the pipeline that segments.
        self._unk_pieces = len(self._bare.encode(unk_token, add_special_tokens=False).ids)
        self._space_id = tokenizer.token_to_id(SPIECE_UNDERLINE)
        # raw text -> (length with eos before truncation, the row before padding); prompts repeat.
        self._cache: dict[str, tuple[int, list[int]]] = {}

    @property
    def eot_id(self) -> int:
        """The end token under the name CLIP code reads (model/export.py checks it against the model)."""
        return self.eos_id

    def _check_post_processor(self, tokenizer: Tokenizer) -> None:
        """Step 6 appends eos itself; a post-processor that would add anything else is refused."""
        probe = _tokenizer_without(tokenizer, "padding", "truncation")
        plain = probe.encode("a", add_special_tokens=False).ids
        framed = probe.encode("a").ids
        if framed not in (plain, [*plain, self.eos_id]):
            raise ValueError(
                f"the post-processor of tokenizer.json frames {plain} as {framed}; a SigLIP tokenizer "
                f"appends only {self.eos_token} (id {self.eos_id})"
            )

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 64, **options: Any) -> FixedLengthTokenizer:
        """A tokenizer.json with SigLIP's defaults, or the keyword options of the constructor."""
        return cls(read_tokenizer_json(path), context_length, **options)

    @classmethod
    def from_facts(
        cls, path: str | Path, facts: Mapping[str, Any], context_length: int | None = None
    ) -> FixedLengthTokenizer:
        """The tokenizer a manifest's facts describe (see `facts`), checked against the file: a
        mismatch is a ValueError that names the fact. `context_length`: the text encoder's, which the
        facts must agree with (SigLIP pools at the last position)."""
        if facts.get("kind") != KIND:
            raise ValueError(f"tokenizer kind {facts.get('kind')!r} is not {KIND!r}")
        missing = [k for k in ("lowercase", "canonicalize") if k not in facts]
        if missing:
            raise ValueError(f"the tokenizer facts lack {', '.join(missing)}")
        length = int(facts.get("context_length", context_length or 0))
        if context_length is not None and length != context_length:
            raise ValueError(f"the tokenizer pads to {length} but the text encoder reads {context_length}")
        if facts.get("padding", "max_length") != "max_length":
            raise ValueError(f"padding {facts['padding']!r} is not 'max_length'")
        tok = cls(
            read_tokenizer_json(path),
            length,
            eos_token=str(facts.get("eos_token", "</s>")),
            pad_token=str(facts.get("pad_token", "</s>")),
            unk_token=str(facts.get("unk_token", "<unk>")),
            lowercase=bool(facts["lowercase"]),
            canonicalize=bool(facts["canonicalize"]),
        )
        mine = tok.facts()
        wrong = [f"{k}={facts[k]!r} (the file: {mine[k]!r})" for k in ("eos_id", "pad_id", "vocab_size")
                 if k in facts and facts[k] != mine[k]]  # fmt: skip
        if wrong:
            raise ValueError(f"the tokenizer facts do not match {path}: {', '.join(wrong)}")
        return tok

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def vocab(self) -> dict[str, int]:
        """Piece -> id of the SentencePiece vocabulary (word-initial pieces start with "▁")."""
        return self._tok.get_vocab(with_added_tokens=False)

    def _clean_piece(self, piece: str) -> str:
        """Step 3 of one piece between special tokens."""
        if self.canonicalize:
            return canonicalize(piece, self.lowercase)
        return piece.lower() if self.lowercase else piece

    def clean(self, text: str) -> str:
        """The text as the model reads it (steps 1 to 3, special tokens aside)."""
        return self._clean_piece(_SURROGATE.sub("\ufffd", text).replace(SPIECE_UNDERLINE, " "))

    def _pieces(self, text: str) -> list[str | int]:
        """Steps 1 to 3 of one text: special tokens as ids, the rest as the strings to segment."""
        text = SPIECE_UNDERLINE + _SURROGATE.sub("\ufffd", text).replace(SPIECE_UNDERLINE, " ")
        out: list[str | int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2:  # re.split puts the captured separators (the specials) at odd positions
                out.append(self._special_ids[part])
            elif part:
                piece = self._clean_piece(part)
                # SentencePiece reads "▁" as a space; `tokenizers`' Precompiled normalizer mangles "▁"
                # followed by a combining mark, so the space is what we hand it.
                out.append(self.unk_token + piece.replace(SPIECE_UNDERLINE, " "))
        return out

    def _encode_raw(self, texts: Sequence[str]) -> list[list[int]]:
        """Steps 1 to 5: the ids of each text, without eos, truncation or padding."""
        pieces = [self._pieces(t) for t in texts]
        strings = [p for ps in pieces for p in ps if isinstance(p, str)]
        segmented = iter(self._bare.encode_batch(strings, add_special_tokens=False))
        k = self._unk_pieces
        out: list[list[int]] = []
        for ps in pieces:
            ids: list[int] = []
            special_at = -1
            for p in ps:
                if isinstance(p, int):
                    special_at = len(ids) if special_at < 0 else special_at
                    ids.append(p)
                else:
                    got = next(segmented).ids
                    ids.extend(got[k:] if len(got) >= k else got)
            if len(ids) > 1 and ids[0] == self._space_id and special_at == 1:  # step 5
                ids = ids[1:]
            out.append(ids)
        return out

    def _frame(self, ids: list[int]) -> tuple[int, list[int]]:
        """Step 6 without the padding: (length with eos before truncation, the row)."""
        ends = bool(ids) and ids[-1] == self.eos_id  # a literal "</s>" last: the processor adds none
        length = len(ids) + (0 if ends else 1)
        if len(ids) + 1 > self.context_length:  # transformers reserves room for eos before it cuts
            ids = ids[: self.context_length - 1]
        return length, ids if ids and ids[-1] == self.eos_id else [*ids, self.eos_id]

    def _lookup(self, texts: Sequence[str]) -> list[tuple[int, list[int]]]:
        return cached_rows(
            self._cache, texts, lambda missing: [self._frame(ids) for ids in self._encode_raw(missing)]
        )

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Encoded length including eos, before truncation (longer than context_length = cut)."""
        return [n for n, _ in self._lookup(texts)]

    def encode(self, text: str) -> list[int]:
        """The ids of one text with eos, truncated to context_length, not padded."""
        return list(self._lookup([text])[0][1])

    def encode_batch(self, texts: Sequence[str], pad_to: int | None = None) -> np.ndarray:
        """int64 [B, context_length], padded with pad_id. `pad_to` is ignored: the text tower attends
        to the padding and pools at the last position, so any other length changes the features;
        only the length the checkpoint was trained at reproduces it."""
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int64)
        for i, (_, row) in enumerate(self._lookup(texts)):
            out[i, : len(row)] = row
        return out

    def facts(self) -> dict[str, object]:
        """What a bundle manifest records about the tokenizer (read back by `from_facts`)."""
        return {
            "kind": KIND,
            "context_length": self.context_length,
            "padding": "max_length",
            "eos_token": self.eos_token,
            "eos_id": self.eos_id,
            "pad_token": self.pad_token,
            "pad_id": self.pad_id,
            "unk_token": self.unk_token,
            "vocab_size": self.vocab_size,
            "lowercase": self.lowercase,
            "canonicalize": self.canonicalize,
        }
