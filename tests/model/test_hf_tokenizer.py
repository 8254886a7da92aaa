"""SigLIP's fixed-length SentencePiece tokenizer (model/bundle/hf_tokenizer.py), id for id with
transformers' SiglipTokenizer, which SiglipProcessor runs, and with transformers' fast tokenizer over
the same tokenizer.json; and `open_tokenizer`, which picks a bundle's tokenizer from its manifest.

No SigLIP checkpoint can be downloaded here, so a small SentencePiece Unigram model is trained in
the test with the special pieces of SigLIP's spiece.model (<pad> 0, </s> 1, <unk> 2), and converted
to tokenizer.json the two ways transformers 5 has: `SpmConverter.build_tokenizer_from_spm_proto`
(what `TokenizersBackend` builds from a spiece.model), here with T5's "$A </s>" post-processor, and
the generic `SpmConverter(...).converted()`, which has none (the tokenizer appends eos itself).
"""

from __future__ import annotations

import ast
import io
import json
import random
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, processors

from model.bundle.format import BundleError
from model.bundle.hf_tokenizer import KIND, FixedLengthTokenizer, canonicalize
from model.bundle.tokenizer import ClipTokenizer, open_tokenizer
from tests.model.test_tokenizer import ACCENTED, EMOJI, WORDS
from tests.model.test_tokenizer import corpus as clip_corpus

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) < 5:  # the behaviour reproduced is transformers 5's
    pytest.skip("SiglipTokenizer as transformers 5 runs it is the reference", allow_module_level=True)

L, EOS, UNK = 64, 1, 2
ROOT = Path(__file__).resolve().parents[2]
Encode = Callable[[list[str]], list[list[int]]]


def _training_lines(rng: random.Random) -> list[str]:
    """Words, accented words and made-up ones in sentences: enough for a 2,000-piece vocabulary."""
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou", "ee")]
    made_up = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    common = ["the", "a", "photo", "of", "picture", "with", "in", "on", "and"]
    pool = WORDS + ACCENTED + EMOJI[:4] + made_up + common
    lines = [
        " ".join(rng.choices(pool, k=rng.randint(1, 14))) + rng.choice(["", ".", "!", "?", ","])
        for _ in range(8000)
    ]
    return lines + [t.lower() for t in lines[:2000]]


def _train_spiece(path: Path, **options: Any) -> Path:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines(random.Random(7))),
        model_writer=model,
        vocab_size=2000,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=0.98,  # rarer characters stay unknown: the unk path is exercised too
        num_threads=1,
        minloglevel=2,
        **options,
    )
    path.write_bytes(model.getvalue())
    return path


def _to_json(spiece: Path, slow: Any, conversion: str) -> Path:
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    if conversion == "spm_proto+eos":
        proto = import_protobuf().ModelProto()
        proto.ParseFromString(spiece.read_bytes())
        tok = SpmConverter.build_tokenizer_from_spm_proto(proto, [(p.piece, p.score) for p in proto.pieces])
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("</s>", "<unk>")])
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    else:
        tok = SpmConverter(slow).converted()
    path = spiece.with_suffix(f".{conversion}.json")
    tok.save(str(path))
    return path


class Setup:
    """A trained spiece.model, transformers' SiglipTokenizer over it, and its tokenizer.json."""

    def __init__(self, folder: Path, conversion: str, **spm_options: Any) -> None:
        from transformers import SiglipTokenizer

        self.spiece = _train_spiece(folder / "spiece.model", **spm_options)
        self.slow = SiglipTokenizer(str(self.spiece))  # do_lower_case=True, pad "</s>", model_max_length=64
        self.json = _to_json(self.spiece, self.slow, conversion)
        self.keeps_whitespace = spm_options.get("remove_extra_whitespaces") is False


@pytest.fixture(
    scope="module",
    # SentencePiece's defaults under both conversions; and a model that keeps whitespace runs, where
    # transformers' "drop a lone ▁ before a special token" comes into play (the generic converter
    # strips whitespace whatever the model says, so only the faithful conversion is run there).
    params=[
        ("spm_proto+eos", {}),
        ("spm_converter", {}),
        ("spm_proto+eos", {"remove_extra_whitespaces": False}),
    ],
    ids=["proto+eos", "converter", "keep-whitespace"],
)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    conversion, options = request.param
    return Setup(tmp_path_factory.mktemp("siglip"), conversion, **options)


@pytest.fixture(scope="module")
def tokenizer_json(setup: Setup) -> Path:
    return setup.json


@pytest.fixture(scope="module")
def ours(setup: Setup) -> FixedLengthTokenizer:
    return FixedLengthTokenizer.from_file(setup.json)


SIGLIP_FIXED = [
    "",
    " ",
    "\t\n  \u3000",
    "a photo of a dog.",
    "A Photo Of A DOG!!!",
    "  leading and trailing  ",
    "many     spaces\tand\ttabs\n\nand lines",
    "</s>",
    "<unk>",
    "<pad>",
    "</S>",
    "a </s> b",
    "</s>hello",
    "hello</s>",
    "hello </s></s>",
    "x<unk>y",
    "\u0345</s>",
    "A\u2581B",
    "\u2581\u2581x",
    "\u2581",
    "¨x ´y",
    "word " * 100,
    "word " * 62 + "</s>",
    "word " * 63 + "</s>",
    "w" * 300,
    "🙂" * 80,
]


def _texts() -> list[str]:
    """1,500+ messy strings (tests/model/test_tokenizer.py's corpus: mojibake, entities, scripts,
    emoji, odd characters, long ones) and SigLIP's own edge cases; no lone surrogate, on which the
    processor raises (test_lone_surrogate)."""
    rng = random.Random(64)
    mixed = [
        " ".join(rng.choice(SIGLIP_FIXED[3:20] + WORDS) for _ in range(rng.randint(1, 30)))
        for _ in range(200)
    ]
    return [t for t in SIGLIP_FIXED + clip_corpus() + mixed if not any("\ud800" <= c <= "\udfff" for c in t)]


def _processor_ids(slow: Any, texts: list[str]) -> list[list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "This sequence already has </s>" for "hello</s>"
        return slow(texts, padding="max_length", max_length=L, truncation=True)["input_ids"]


def _file_departs_from_spiece(spiece: Path, tokenizer_json: Path, texts: list[str]) -> set[str]:
    """Texts whose canonical form the tokenizer.json itself segments otherwise than spiece.model:
    `tokenizers`' Precompiled normalizer works on grapheme clusters and differs from SentencePiece on a
    few (e.g. "ſ" + zero-width joiner); no code over tokenizer.json can agree with spiece there."""
    sp = spm.SentencePieceProcessor(model_file=str(spiece))
    plain = Tokenizer.from_file(str(tokenizer_json))
    canonical = [canonicalize(t) for t in texts]
    file_ids = [e.ids for e in plain.encode_batch(canonical, add_special_tokens=False)]
    return {t for t, c, f in zip(texts, canonical, file_ids, strict=True) if sp.encode(c) != f}


def test_ids_match_the_siglip_processor(ours: FixedLengthTokenizer, setup: Setup) -> None:
    texts = _texts()
    assert len(texts) >= 1500
    departs = _file_departs_from_spiece(setup.spiece, setup.json, texts)
    assert len(departs) <= len(texts) // 200, sorted(departs)[:10]
    got = ours.encode_batch(texts).tolist()
    want = _processor_ids(setup.slow, texts)
    wrong = [
        (t, w[:16], g[:16]) for t, w, g in zip(texts, want, got, strict=True) if w != g and t not in departs
    ]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, e.g. {wrong[:3]}"
    # token_lengths: the processor's length before truncation (what a label is refused by)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sequences longer than 64, and "already has </s>"
        untruncated = [len(ids) for ids in setup.slow(texts)["input_ids"]]
    lengths = ours.token_lengths(texts)
    assert [n for t, n in zip(texts, lengths, strict=True) if t not in departs] == [
        n for t, n in zip(texts, untruncated, strict=True) if t not in departs
    ]
    assert sum(n > L for n in untruncated) >= 50  # the corpus does truncate


def test_ids_match_a_processor_that_pads_with_another_token(setup: Setup) -> None:
    """With a pad unlike eos the rows show where eos goes: not again after a text that ends in a
    literal "</s>" (transformers' `_add_eos_if_not_present`), and "<pad>" in a text is a special."""
    from transformers import SiglipTokenizer

    slow = SiglipTokenizer(str(setup.spiece), pad_token="<pad>")
    ours = FixedLengthTokenizer.from_file(setup.json, pad_token="<pad>")
    texts = _texts()[:400]
    departs = _file_departs_from_spiece(setup.spiece, setup.json, texts)
    texts = [t for t in texts if t not in departs]
    assert ours.encode_batch(texts).tolist() == _processor_ids(slow, texts)
    assert ours.encode("hello</s>")[-1] == EOS and ours.encode("hello</s>")[-2] != EOS


@pytest.fixture(
    scope="module", params=[("spm_proto+eos", {}), ("spm_converter", {})], ids=["proto+eos", "converter"]
)
def default_setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """SentencePiece's default models only: with whitespace runs kept, the processor itself departs
    from the fast tokenizer (it reads leading and lone whitespace as "▁" pieces), so there the
    processor is the one reference (test_ids_match_the_siglip_processor)."""
    conversion, options = request.param
    return Setup(tmp_path_factory.mktemp("siglip-fast"), conversion, **options)


def test_ids_match_the_fast_tokenizer_of_the_same_file(default_setup: Setup) -> None:
    """transformers' fast tokenizer over the same tokenizer.json, given the canonical text (it does not
    canonicalise): the same rows, eos, truncation and padding included; literal specials aside, as
    canonicalising destroys them."""
    from transformers import PreTrainedTokenizerFast

    setup, ours = default_setup, FixedLengthTokenizer.from_file(default_setup.json)

    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(setup.json), eos_token="</s>", pad_token="</s>", unk_token="<unk>"
    )
    if fast("a")["input_ids"][-1] != EOS:  # no post-processor in the file: frame as the processor does
        fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", EOS)]
        )
    texts = [t for t in _texts() if not any(s in t for s in ("</s>", "<unk>"))]
    if setup.keeps_whitespace:
        # A model keeping whitespace runs: the processor reads a text that canonicalises to "" as
        # ["▁"] + eos, where the fast tokenizer gives eos alone. Those follow the processor (ours does);
        # the rest must match the fast tokenizer as everywhere.
        empty = [t for t in texts if not canonicalize(t)]
        assert empty and ours.encode_batch(empty).tolist() == _processor_ids(setup.slow, empty)
        texts = [t for t in texts if canonicalize(t)]
    canonical = [canonicalize(t) for t in texts]
    want = fast(canonical, padding="max_length", max_length=L, truncation=True)["input_ids"]
    assert ours.encode_batch(texts).tolist() == want
    plain = FixedLengthTokenizer.from_file(setup.json, lowercase=False, canonicalize=False)
    assert plain.encode_batch(canonical).tolist() == want


def test_rows_are_always_the_context_length(ours: FixedLengthTokenizer) -> None:
    texts = ["a dog", "", "word " * 100]
    for pad_to in (None, 1, 5, L, 100):
        ids = ours.encode_batch(texts, pad_to=pad_to)
        assert ids.dtype == np.int64 and ids.shape == (3, L)
    assert ours.encode_batch([]).shape == (0, L)
    ids = ours.encode_batch(texts)
    empty = ours.encode("")  # eos alone, but for the model that keeps whitespace: "▁" then eos
    assert empty[-1] == EOS and ids[1].tolist() == empty + [ours.pad_id] * (L - len(empty))
    assert ids[2, -1] == EOS and ours.encode(texts[2])[-1] == EOS and len(ours.encode(texts[2])) == L
    short = ours.encode("a dog")
    assert ids[0, : len(short)].tolist() == short and (ids[0, len(short) :] == ours.pad_id).all()
    lengths = ours.token_lengths(texts)
    assert lengths[0] == len(short) and lengths[1] == len(empty) and lengths[2] > L
    with pytest.raises(TypeError):
        ours.token_lengths("a dog")


def test_clean_is_what_the_model_reads(ours: FixedLengthTokenizer) -> None:
    assert ours.clean("  A Photo, of a DOG!!  ") == "a photo of a dog"
    assert ours.clean("Yellow Cross") == ours.clean("yellow cross.")
    assert ours.encode("Yellow Cross") == ours.encode("yellow   cross.")


def test_lone_surrogate_reads_as_replacement_character(ours: FixedLengthTokenizer) -> None:
    # The processor raises on a lone surrogate (SentencePiece needs UTF-8); a JSON body can hold one.
    assert ours.encode("a \ud800 b") == ours.encode("a \ufffd b")


def test_facts_round_trip(ours: FixedLengthTokenizer, tokenizer_json: Path, tmp_path: Path) -> None:
    facts = ours.facts()
    assert facts == {
        "kind": KIND,
        "context_length": L,
        "padding": "max_length",
        "eos_token": "</s>",
        "eos_id": EOS,
        "pad_token": "</s>",
        "pad_id": EOS,
        "unk_token": "<unk>",
        "vocab_size": 2000,
        "lowercase": True,
        "canonicalize": True,
    }
    assert json.loads(json.dumps(facts)) == facts  # a manifest holds it as JSON
    ours.save(tmp_path / "tokenizer.json")
    again = FixedLengthTokenizer.from_facts(tmp_path / "tokenizer.json", facts, L)
    assert again.facts() == facts
    texts = _texts()[:300]
    assert (again.encode_batch(texts) == ours.encode_batch(texts)).all()
    assert not FixedLengthTokenizer.from_facts(tokenizer_json, {**facts, "lowercase": False}).lowercase


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"eos_id": 7}, "eos_id=7"),
        ({"vocab_size": 5}, "vocab_size=5"),
        ({"context_length": 77}, "pads to 77 but the text encoder reads 64"),
        ({"padding": "longest"}, "padding 'longest'"),
        ({"lowercase": None}, "lack lowercase"),
        ({"pad_token": "<nope>"}, "lacks the token"),
    ],
)
def test_facts_that_do_not_match_the_file_are_refused(
    ours: FixedLengthTokenizer, tokenizer_json: Path, change: dict[str, Any], message: str
) -> None:
    facts = {**ours.facts(), **change}
    facts = {k: v for k, v in facts.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        FixedLengthTokenizer.from_facts(tokenizer_json, facts, L)
    with pytest.raises(BundleError, match=message):
        open_tokenizer(tokenizer_json, facts, L)


def test_a_post_processor_adding_more_than_eos_is_refused(tokenizer_json: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.post_processor = processors.TemplateProcessing(
        single="<unk> $A </s>", special_tokens=[("<unk>", UNK), ("</s>", EOS)]
    )
    tok.save(str(tmp_path / "t.json"))
    with pytest.raises(ValueError, match="post-processor"):
        FixedLengthTokenizer.from_file(tmp_path / "t.json")


def test_open_tokenizer_picks_by_kind(
    ours: FixedLengthTokenizer, tokenizer_json: Path, tmp_path: Path
) -> None:
    clip = ClipTokenizer.clip_bpe()
    clip.save(tmp_path / "clip.json")
    for facts in (clip.facts(), {}, {"kind": "clip_bpe"}):  # today's manifests, and older ones
        tok = open_tokenizer(tmp_path / "clip.json", facts, 77)
        assert isinstance(tok, ClipTokenizer) and tok.context_length == 77
        assert tok.encode_batch(["a dog"]).tolist() == clip.encode_batch(["a dog"]).tolist()
    siglip = open_tokenizer(tokenizer_json, ours.facts(), L)
    assert isinstance(siglip, FixedLengthTokenizer) and siglip.facts() == ours.facts()
    with pytest.raises(BundleError, match="'wordpiece'"):
        open_tokenizer(tokenizer_json, {"kind": "wordpiece"}, L)
    with pytest.raises(BundleError, match="must be an object"):
        open_tokenizer(tokenizer_json, ["clip-bpe"], L)  # type: ignore[arg-type]


class _RecordingEncoder:
    """A text tower stand-in that records the shapes encode_by_length hands it."""

    embed_dim = 4

    def __init__(self, tokenizer: FixedLengthTokenizer) -> None:
        self.tokenizer = tokenizer
        self.shapes: list[tuple[int, ...]] = []

    def encode_token_ids(self, input_ids: np.ndarray) -> np.ndarray:
        self.shapes.append(input_ids.shape)
        return np.ones((len(input_ids), self.embed_dim), np.float32) / 2


def test_encoders_feed_the_text_tower_fixed_length_rows(ours: FixedLengthTokenizer) -> None:
    from model.bundle.encoders import encode_by_length

    enc = _RecordingEncoder(ours)
    feats = encode_by_length(enc, ["a dog", "a photo of a golden retriever", "x"] * 3, batch_size=4)
    assert feats.shape == (9, 4) and enc.shapes == [(4, L), (4, L), (1, L)]


def test_the_module_needs_only_tokenizers_and_numpy() -> None:
    path = ROOT / "model" / "bundle" / "hf_tokenizer.py"
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    third_party = {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"numpy", "tokenizers"}
    code = (
        "import sys, model.bundle.tokenizer, model.bundle.hf_tokenizer; "
        "bad = {'torch', 'transformers', 'sentencepiece'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
