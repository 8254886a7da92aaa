"""Open-set scores, the lexicon, multi-mode probabilities and abstain decisions (model/bundle/openset.py,
model/bundle/answers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from model.bundle.answers import AnswerOptions, answer, needs_lexicon
from model.bundle.calibration_store import Fit
from model.bundle.encoders import l2_normalize
from model.bundle.openset import (
    Rule,
    decide,
    lexicon,
    multi_probability,
    neglabel_score,
    reference,
    select_negatives,
    softmax_probability,
)
from model.bundle.tokenizer import ClipTokenizer


def unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    return l2_normalize(rng.standard_normal((n, d))).astype(np.float32)


def test_the_lexicon_is_common_whole_words_of_the_vocabulary() -> None:
    tok = ClipTokenizer.clip_bpe()
    words = lexicon(tok, 2000)
    assert len(words) == 2000 and len(set(words)) == 2000
    assert all(w.isascii() and w.isalpha() and w.islower() and len(w) >= 3 for w in words)
    assert {"the", "and", "photo"} <= set(words)  # common words come first (BPE merge order)
    assert lexicon(tok, 100) == words[:100]


def test_the_lexicon_of_a_sentencepiece_vocabulary_is_its_word_initial_pieces() -> None:
    class Pieces:  # SigLIP's vocabulary: "▁" starts a word; ids follow the pieces' scores
        def vocab(self) -> dict[str, int]:
            return {"</s>": 1, "▁the": 5, "▁dog": 9, "ing": 3, "▁a": 4, "▁Cat": 6, "▁café": 7, "▁car": 8}

    assert lexicon(Pieces(), 10) == ["the", "car", "dog"]  # type: ignore[arg-type]
    assert lexicon(Pieces(), 1) == ["the"]  # type: ignore[arg-type]


def test_negatives_are_the_words_farthest_from_every_label() -> None:
    rng = np.random.default_rng(0)
    lex, labels = unit(rng, 500), unit(rng, 4)
    picked = select_negatives(lex, labels, 100)
    nearest = (lex @ labels.T).max(axis=1)
    assert len(picked) == 100 and len(set(picked.tolist())) == 100
    assert nearest[picked].max() <= np.sort(nearest)[99] + 1e-7  # none nearer than the 100th farthest
    assert len(select_negatives(lex, labels, 10_000)) == 500  # more than the lexicon: all of it


def test_neglabel_score_is_the_share_of_mass_on_the_labels() -> None:
    cos_labels, cos_neg = np.array([[0.3, 0.1]]), np.array([[0.2, 0.0, -0.1]])
    e = np.exp(10 * np.array([0.3, 0.1, 0.2, 0.0, -0.1]))
    assert neglabel_score(cos_labels, cos_neg, 10.0)[0] == pytest.approx(e[:2].sum() / e.sum())
    # large logits do not overflow
    assert np.isfinite(neglabel_score(cos_labels, cos_neg, 1e4)).all()


def test_reference_is_the_rank_th_best_word() -> None:
    row = np.array([[0.9, 0.1, 0.5, 0.7, 0.3]])
    assert reference(row, 1)[0] == pytest.approx(0.9)
    assert reference(row, 3)[0] == pytest.approx(0.5)
    assert reference(row, 99)[0] == pytest.approx(0.1)  # past the end: the last


def test_multi_probability_of_a_label_does_not_depend_on_the_others() -> None:
    """The property `mode=multi` promises: adding or removing labels leaves each one's probability."""
    rng = np.random.default_rng(1)
    images, lex = unit(rng, 6), unit(rng, 300)
    labels = unit(rng, 12)
    opts = AnswerOptions(mode="multi")
    for trial in range(20):
        subset = np.sort(rng.choice(12, size=int(rng.integers(1, 13)), replace=False))
        names = [f"l{i}" for i in subset]
        got = answer(images, names, labels[subset], 30.0, len(subset), opts, lexicon=lex)
        full = answer(images, [f"l{i}" for i in range(12)], labels, 30.0, 12, opts, lexicon=lex)
        for a, b in zip(got, full, strict=True):
            pa = {s.label: s.probability for s in a.labels}
            pb = {s.label: s.probability for s in b.labels}
            assert all(pa[k] == pytest.approx(pb[k], abs=1e-6) for k in pa), trial
    # while single-mode probabilities do move when a label is added
    one = answer(images, ["l0", "l1"], labels[:2], 30.0, 2)[0].labels
    more = answer(images, ["l0", "l1", "l2"], labels[:3], 30.0, 3)[0].labels
    assert {s.label: s.probability for s in one}["l0"] != pytest.approx(
        {s.label: s.probability for s in more}["l0"], abs=1e-6
    )


def test_multi_is_ranked_by_probability_and_a_calibrated_label_moves() -> None:
    cos = np.array([[0.5, 0.4]])
    ref = np.array([0.45])
    p = multi_probability(cos, ref, 20.0)
    assert p[0, 0] > 0.5 > p[0, 1]
    calibrated = multi_probability(cos, ref, 20.0, np.array([20.0, 20.0]), np.array([-5.0, 5.0]))
    assert calibrated[0, 1] > calibrated[0, 0]  # label 1's sigmoid is shifted up by its fit


def test_single_mode_is_the_softmax_of_today_and_a_temperature_flattens_it() -> None:
    cos = np.array([[0.3, 0.1, -0.2]])
    p = softmax_probability(cos, 100.0)
    z = np.exp(100 * cos[0] - 100 * cos[0].max())
    assert p[0] == pytest.approx(z / z.sum(), rel=1e-5)
    assert softmax_probability(cos, 100.0, 2.0)[0, 0] < p[0, 0]


def test_decide_reports_the_rule_that_failed_else_the_first() -> None:
    rules = [Rule("cosine", 0.2), Rule("mcm", 0.9)]
    values = {"cosine": np.array([0.5, 0.1, 0.5]), "mcm": np.array([0.95, 0.99, 0.5])}
    got = decide(rules, values, 3)  # type: ignore[arg-type]
    assert [d.abstained for d in got if d] == [False, True, True]
    assert [d.score for d in got if d] == ["cosine", "cosine", "mcm"]
    assert decide([], {}, 2) == [None, None]


def test_request_thresholds_win_over_the_calibrated_rule_and_name_their_score() -> None:
    fit = Fit("sha", {}, "d", "t", 1.0, (20.0,), (0.0,), Rule("cosine", 0.9, "calibration"))
    rng = np.random.default_rng(2)
    images, labels, lex = unit(rng, 3), unit(rng, 1), unit(rng, 50)
    auto = answer(images, ["x"], labels, 20.0, 1, AnswerOptions(), fit)
    assert all(a.decision and a.decision.source == "calibration" for a in auto)
    asked = answer(images, ["x"], labels, 20.0, 1, AnswerOptions(min_cosine=-1.0), fit)
    assert all(a.decision and a.decision.source == "request" and not a.abstained for a in asked)
    multi = AnswerOptions(mode="multi", min_probability=0.5)
    assert multi.rules()[0].score == "multi" and AnswerOptions(min_probability=0.5).rules()[0].score == "mcm"
    assert needs_lexicon(AnswerOptions(min_neglabel=0.1), None) == (True, True)
    assert needs_lexicon(AnswerOptions(min_cosine=0.1), None) == (False, False)
    got = answer(images, ["x"], labels, 20.0, 1, AnswerOptions(min_neglabel=0.99), None, lex, np.arange(50))
    assert all(a.decision is not None and a.decision.score == "neglabel" for a in got)
    with pytest.raises(ValueError, match="lexicon"):
        answer(images, ["x"], labels, 20.0, 1, AnswerOptions(mode="multi"))


def test_a_sigmoid_model_answers_multi_with_its_own_sigmoid_and_no_lexicon() -> None:
    """SigLIP's probability: sigmoid(logit_scale x cosine + logit_bias), label by label."""
    rng = np.random.default_rng(3)
    images, labels = unit(rng, 4), unit(rng, 5)
    names = [f"l{i}" for i in range(5)]
    opts = AnswerOptions(mode="multi")
    assert needs_lexicon(opts, None, logit_bias=-10.0) == (False, False)
    assert needs_lexicon(opts, None) == (True, False)  # a softmax model's multi needs the lexicon
    got = answer(images, names, labels, 10.0, 5, opts, logit_bias=-1.5)
    cos = images @ labels.T
    for i, a in enumerate(got):
        for s in a.labels:
            j = names.index(s.label)
            assert s.probability == pytest.approx(1 / (1 + np.exp(-(10.0 * cos[i, j] - 1.5))), abs=1e-6)
        probs = [s.probability for s in a.labels]
        assert probs == sorted(probs, reverse=True)
    # single mode stays the softmax over the labels sent, bias or not
    single = answer(images, names, labels, 10.0, 5, logit_bias=-1.5)[0].labels
    assert sum(s.probability for s in single) == pytest.approx(1.0, abs=1e-5)
    # a threshold on the multi probability is decided on the sigmoid
    ruled = answer(
        images, names, labels, 10.0, 5, AnswerOptions("multi", min_probability=0.99), logit_bias=-1.5
    )
    assert all(a.abstained for a in ruled)
