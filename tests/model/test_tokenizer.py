"""Parity of model.tokenizer with OpenAI's reference tokenizer (clip/simple_tokenizer.py), id for id."""

from __future__ import annotations

import importlib.util
import random
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from model.bundle.tokenizer import _WHITESPACE, SPLIT_PATTERN, ClipTokenizer, basic_clean

SOT, EOT, L = 49406, 49407, 77
N_RANDOM = 1500


def _load_reference() -> ModuleType:
    # `import clip` needs torch and more; the tokenizer file alone needs only ftfy and regex.
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clip-anytorch (OpenAI's reference tokenizer) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "simple_tokenizer.py"
    ref_spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", path)
    assert ref_spec is not None and ref_spec.loader is not None
    module = importlib.util.module_from_spec(ref_spec)
    ref_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference() -> Callable[[str], list[int]]:
    simple = _load_reference().SimpleTokenizer()

    def encode(text: str) -> list[int]:
        # What clip.tokenize(text, truncate=True) puts in its row, before the zero padding.
        ids = [SOT, *simple.encode(text), EOT]
        if len(ids) > L:
            ids = ids[:L]
            ids[-1] = EOT
        return ids

    return encode


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer.clip_bpe()


# ---- the corpus: hand-picked edge cases plus seeded random mixtures of the same ingredients ----

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "dog",
    "cat",
    "golden",
    "retriever",
    "tench",
    "airliner",
    "Zebra",
    "iPhone",
    "McDonald's",
    "naïve",
    "café",
]
ACCENTED = [
    "crème brûlée",
    "Ångström",
    "São Paulo",
    "Łódź",
    "Straße",
    "ÉCOLE",
    "niño",
    "Øresund",
    "e\u0301te\u0301",
]
SCRIPTS = [  # (first, last) code point of blocks to draw assigned characters from
    (0x0370, 0x03FF),
    (0x0400, 0x04FF),
    (0x0530, 0x058F),
    (0x0590, 0x05FF),
    (0x0600, 0x06FF),
    (0x0900, 0x097F),
    (0x0980, 0x09FF),
    (0x0B80, 0x0BFF),
    (0x0E00, 0x0E7F),
    (0x10A0, 0x10FF),
    (0x1200, 0x137F),
    (0x1780, 0x17FF),
    (0x3040, 0x30FF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0x1D400, 0x1D7FF),
    (0x20000, 0x2A6DF),
    (0x0300, 0x036F),
    (0x2000, 0x206F),
    (0x2100, 0x214F),
    (0xFF00, 0xFFEF),
    (0x1F300, 0x1FAFF),
    (0x0080, 0x00FF),
    (0x10000, 0x1007F),
]
EMOJI = [
    "🙂",
    "🐶",
    "👍🏽",
    "👋🏿",
    "👨‍👩‍👧‍👦",
    "👩🏽‍💻",
    "🏳️‍🌈",
    "🇯🇵",
    "🇺🇦",
    "1️⃣",
    "❤️",
    "🧑🏻‍🤝‍🧑🏾",
    "☕",
    "🫠",
]
ENTITIES = [
    "&amp;",
    "&amp;amp;",
    "&#39;",
    "&nbsp;",
    "&lt;b&gt;",
    "&quot;",
    "&#x27;",
    "&eacute;",
    "&copy",
    "&#128512;",
]
SPACES = [
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u3000",
    "\u2028",
    "\u2029",
    "\u202f",
    "\u1680",
    "\x0b",
    "\x85",
]
ODD = ["\u200b", "\u200d", "\ufeff", "\x00", "\x1c", "\x7f", "\u0345", "\u017f", "\ufffd", "\ud800", "ﬁ", "Ⅻ"]
CONTRACTIONS = ["don't", "DON'T", "It'S", "we'RE", "you'll", "I'D", "she's", "they've", "I'M", "'ſ", "don’t"]
NUMBERS = ["0", "42", "1234567890", "3.14159", "1,000,000", "2nd", "½", "²", "٣٤", "१२", "Ⅻ", "-7e10"]
PUNCT = ["!!!", "?!?!", "...", "---", "(*&^%$#@!)", "«»", "“quoted”", "¿¡", "…", "@user", "#tag", "a/b\\c"]
SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<<|endoftext|>>", "<|ENDOFTEXT|>", "x<|endoftext|>y"]


def _mojibake(text: str) -> str:
    """UTF-8 read as Windows-1252 (or Latin-1 where 1252 has holes): what ftfy exists to undo."""
    raw = text.encode("utf-8")
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _script_chars(rng: random.Random, n: int) -> str:
    first, last = rng.choice(SCRIPTS)
    out: list[str] = []
    while len(out) < n:
        ch = chr(rng.randint(first, last))
        if unicodedata.category(ch) not in ("Cn", "Cs", "Co"):
            out.append(ch)
    return "".join(out)


def _fragment(rng: random.Random) -> str:
    kind = rng.randrange(12)
    if kind == 0:
        return _script_chars(rng, rng.randint(1, 8))
    if kind == 1:
        return _mojibake(rng.choice(ACCENTED + EMOJI + ["don’t", "naïve café", "—"]))
    if kind == 2:
        return "".join(rng.choices(EMOJI, k=rng.randint(1, 3)))
    if kind == 3:
        return rng.choice(ENTITIES) + rng.choice(["", *WORDS])
    pool = [WORDS, ACCENTED, CONTRACTIONS, NUMBERS, PUNCT, ODD, SPECIALS, WORDS]
    word = rng.choice(pool[kind - 4])
    return word.upper() if rng.random() < 0.15 else word


def _random_text(rng: random.Random) -> str:
    n = rng.choice([1, 2, 3, 5, 8, 13, 40])  # 40 fragments runs well past 77 tokens
    parts = [_fragment(rng) for _ in range(n)]
    seps = [rng.choice(SPACES) if rng.random() < 0.3 else rng.choice(["", " ", " "]) for _ in range(n)]
    return "".join(p + s for p, s in zip(parts, seps, strict=True))


FIXED = [
    "",
    " ",
    "   \t\n ",
    "\u3000\u00a0\u2028",
    "a photo of a dog.",
    "A PHOTO OF A DOG.",
    "DON'T",
    "It'S",
    "i'm here, you're there, we'll see, they'd go, it's 'd",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "cafÃ©",
    "&amp;amp;lt;3",
    "&nbsp;&nbsp;x&nbsp;",
    "1234567890" * 20,
    "!!!!????....;;;;" * 10,
    "🧑🏻‍🤝‍🧑🏾" * 30,
    "word " * 100,
    "<|endoftext|>",
    "<|startoftext|> hi <|endoftext|>",
    "<<|endoftext|>",
    "aͅb",
    "'ſt",
    "\ud800 lone surrogate",
    "tab\tnew\nline\r\ncr",
    "東京タワーの写真",
    "서울의 사진",
    "Ελληνικά κείμενα",
]


def corpus() -> list[str]:
    rng = random.Random(20240229)
    return FIXED + [_random_text(rng) for _ in range(N_RANDOM)]


# ---- tests ----


def test_parity_with_openai_reference(tok: ClipTokenizer, reference: Callable[[str], list[int]]) -> None:
    texts = corpus()
    assert len(texts) >= 1000
    batch = tok.encode_batch(texts)
    mismatches = []
    for i, text in enumerate(texts):
        want = reference(text)
        got = tok.encode(text)
        row = batch[i][: len(got)].tolist()
        if got != want or row != want:
            mismatches.append((text, got, want))
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, first: {mismatches[0]!r}"
    assert any(len(reference(t)) == L for t in texts), "the corpus should reach the truncation branch"
    print(f"{len(texts)} strings identical to the OpenAI reference")  # shown with -s / -rA


@pytest.mark.slow
def test_split_matches_openai_regex_on_every_code_point() -> None:
    """Oniguruma (in `tokenizers`) and the `regex` module must split every code point alike.

    If this fails after upgrading `regex` (new Unicode version), regenerate _NEW_L / _NEW_N.
    """
    regex = pytest.importorskip("regex")
    from tokenizers import Regex, pre_tokenizers

    openai = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )
    split = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True)
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    # "a?b" tells letters from the rest, "!?!" punctuation from the rest, "'?x" tests the contractions'
    # case folding; dropped characters (whitespace) show in all three. Chunks, because `tokenizers`
    # splits one huge string much more slowly than many small ones.
    for start in range(0, len(chars), 256):
        text = "".join(f"a{c}b !{c}! '{c}x " for c in chars[start : start + 256])
        want = openai.findall(text)
        got = [piece for piece, _ in split.pre_tokenize_str(text)]
        assert got == want, f"split differs in U+{ord(chars[start]):04X}..U+{ord(chars[start]) + 255:04X}"


def test_special_ids_and_vocab(tok: ClipTokenizer) -> None:
    assert (tok.vocab_size, tok.sot_id, tok.eot_id, tok.pad_id, tok.context_length) == (49408, SOT, EOT, 0, L)
    assert tok.encode("") == [SOT, EOT]
    assert tok.encode("a photo of a dog.") == [SOT, 320, 1125, 539, 320, 1929, 269, EOT]


def test_facts(tok: ClipTokenizer) -> None:
    assert tok.facts() == {
        "kind": "clip-bpe",
        "sot_id": SOT,
        "eot_id": EOT,
        "pad_id": 0,
        "vocab_size": 49408,
        "context_length": L,
        "lowercase": True,
        "cleaning": "ftfy+html_unescape_x2+whitespace",
    }


def test_long_text_truncated_with_eot_last(tok: ClipTokenizer) -> None:
    text = "word " * 200
    ids = tok.encode(text)
    assert len(ids) == L and ids[0] == SOT and ids[-1] == EOT
    assert tok.token_lengths([text, "", "dog"]) == [202, 2, 3]
    assert tok.encode_batch([text]).shape == (1, L)


def test_encode_batch_shapes(tok: ClipTokenizer) -> None:
    texts = ["a dog", "a photo of a golden retriever", ""]
    dynamic = tok.encode_batch(texts)
    longest = max(len(tok.encode(t)) for t in texts)
    assert dynamic.dtype == np.int64 and dynamic.shape == (3, longest)
    assert dynamic[2].tolist() == [SOT, EOT] + [0] * (longest - 2)
    padded = tok.encode_batch(texts, pad_to=L)
    assert padded.shape == (3, L)
    assert (padded[:, :longest] == dynamic).all() and not padded[:, longest:].any()
    assert tok.encode_batch([]).shape == (0, 2)
    with pytest.raises(ValueError, match="pad_to"):
        tok.encode_batch(["word " * 10], pad_to=5)


def test_save_round_trip(tok: ClipTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = ClipTokenizer.from_file(path)
    assert loaded.facts() == tok.facts()
    texts = corpus()[:300]
    assert (loaded.encode_batch(texts, pad_to=L) == tok.encode_batch(texts, pad_to=L)).all()


def test_clean_matches_openai_steps() -> None:
    assert ClipTokenizer.clean("  Hello&amp;amp;\u00a0World\t\n ") == "hello& world"
    assert ClipTokenizer.clean("cafÃ©") == "café"
    assert ClipTokenizer.clean("\u3000") == ""


def test_plain_text_skips_ftfy_and_gets_the_same_text() -> None:
    """clean() skips ftfy and unescaping for printable ASCII without "&": the full path must agree
    on every such text, and texts just outside (a control, "&", one non-ASCII letter) take it."""
    rng = random.Random(7)
    printable = [chr(c) for c in range(0x20, 0x7F) if c != ord("&")]
    tricky = list(" <>;#'\"`~/\\xX09Aa")
    texts = ["", " ", "a photo of a {}.", "  Yellow   Cross  ", "x;lt;", "#38;", *corpus()]
    for n in range(20_000):
        pool = printable if n % 2 else tricky
        texts.append("".join(rng.choice(pool) for _ in range(rng.randint(0, 30))))
    for text in texts:
        full = _WHITESPACE.sub(" ", basic_clean(text)).strip().lower()
        assert ClipTokenizer.clean(text) == full, repr(text)
    assert ClipTokenizer.clean("a&amp;b") == "a&b"  # "&": unescaped
    assert ClipTokenizer.clean("a\u00a0b") == "a b"  # non-ASCII: ftfy and whitespace
    assert ClipTokenizer.clean("cafÃ©") == "café"
