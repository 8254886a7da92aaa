"""The paper's other objectives (model/objectives.py): each loss and each scoring rule against a
direct implementation on small tensors, the bag-of-words text tower, and the CLI's refusals."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from model.bundle.tokenizer import ClipTokenizer
from model.checkpoints import TrainError
from model.clip import CLIP, caption_mask, get_preset
from model.objectives import BowPredictive, CaptionLM, PredictiveConfig
from model.train_config import TrainConfig

TOK = ClipTokenizer.clip_bpe()
CAPTIONS = ["a red circle", "a blue star on the left", "green heart", "a small red square"]


def _config(objective: str) -> PredictiveConfig:
    clip = replace(get_preset("tiny"), embed_dim=32)
    ids = TOK.encode_batch(CAPTIONS)
    vocab = tuple(sorted({int(i) for i in ids.flatten()} - {TOK.pad_id} | {TOK.sot_id, TOK.eot_id}))
    return PredictiveConfig(objective, clip, vocab, TOK.sot_id, TOK.eot_id)


def _ids(texts: list[str]) -> torch.Tensor:
    return torch.from_numpy(TOK.encode_batch(texts))


def test_caption_mask_keeps_only_the_words_between_start_and_end() -> None:
    ids = _ids(["a red circle", "star"])
    mask = caption_mask(ids, TOK.eot_id)
    for row, keep in zip(ids.tolist(), mask.tolist(), strict=True):
        end = row.index(TOK.eot_id)
        assert keep == [0 < j < end for j in range(len(row))]


def test_bow_predictive_loss_and_likelihood_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = BowPredictive(_config("bow-predictive")).eval()
    ids = _ids(CAPTIONS)
    feats = torch.randn(len(CAPTIONS), 32)
    log_p = torch.log_softmax(model.head(feats), dim=-1)
    loss = ll = 0.0
    direct_ll = torch.zeros(len(CAPTIONS), len(CAPTIONS))
    for i, row in enumerate(ids.tolist()):
        words = [model.config.vocab.index(t) + 1 for t in row[1 : row.index(TOK.eot_id)]]
        loss += -sum(log_p[i, w] for w in words) / len(words)
        for n in range(len(CAPTIONS)):
            direct_ll[n, i] = sum(log_p[n, w] for w in words)
    ll = model.log_likelihood(feats, ids)
    torch.testing.assert_close(ll, direct_ll, atol=1e-5, rtol=1e-5)
    model.visual = torch.nn.Identity()  # so forward sees the features above
    torch.testing.assert_close(model(feats, ids), torch.as_tensor(loss / len(CAPTIONS)), atol=1e-5, rtol=1e-5)


def test_caption_lm_likelihood_is_the_sum_of_next_token_log_probs() -> None:
    torch.manual_seed(0)
    model = CaptionLM(_config("caption-lm")).eval()
    ids = _ids(CAPTIONS[:2])
    feats = torch.randn(3, 32)
    ll = model.log_likelihood(feats, ids, pairs_per_call=2)  # chunked: several calls
    for n in range(3):
        for p, row in enumerate(ids.tolist()):
            end = row.index(TOK.eot_id)
            one = torch.tensor([row[: end + 1]])  # no padding at all
            lp = model.token_log_probs(feats[n : n + 1], one)[0]  # predicts row[1..end]
            torch.testing.assert_close(ll[n, p], lp.sum(), atol=1e-4, rtol=1e-4)


def test_caption_lm_padding_does_not_change_a_likelihood() -> None:
    torch.manual_seed(0)
    model = CaptionLM(_config("caption-lm")).eval()
    feats = torch.randn(2, 32)
    short = _ids(["green heart"])
    padded = torch.cat([short, torch.zeros(1, 6, dtype=short.dtype)], dim=1)
    torch.testing.assert_close(model.log_likelihood(feats, short), model.log_likelihood(feats, padded))


def test_caption_lm_scores_a_trained_caption_above_a_shuffled_one() -> None:
    torch.manual_seed(0)
    model = CaptionLM(_config("caption-lm"))
    caption, shuffled = "a blue star on the left", "left the on star blue a"
    ids = _ids([caption] * 8)
    pixels = torch.randn(8, 3, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = model(pixels, ids)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        ll = model.log_likelihood(model.encode_image(pixels[:1]), _ids([caption, shuffled]))[0]
    assert loss.item() < first / 4
    assert ll[0] > ll[1] + 5  # nats


def test_bag_text_tower_ignores_word_order_and_padding() -> None:
    torch.manual_seed(0)
    model = CLIP(replace(get_preset("tiny"), text=replace(get_preset("tiny").text, kind="bag"))).eval()
    assert not hasattr(model, "positional_embedding") and len(model.transformer.resblocks) == 0
    a, b = _ids(["red circle small"]), _ids(["small circle red"])
    padded = torch.cat([a, torch.zeros(1, 5, dtype=a.dtype)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(a), model.encode_text(b))
        torch.testing.assert_close(model.encode_text(a), model.encode_text(padded))
        direct = model.ln_final(model.token_embedding(a[0, 1:-1]).sum(0)) @ model.text_projection
        torch.testing.assert_close(model.encode_text(a)[0], direct)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"objective": "caption-lm", "loss": "sigmoid"}, "contrastive objectives"),
        ({"objective": "bow-predictive", "label_aware": True}, "contrastive objectives"),
        ({"objective": "caption-lm", "init_from": "x.pt"}, "from scratch"),
        ({"objective": "next-token"}, "objective must be one of"),
    ],
)
def test_train_config_refuses_what_a_predictive_objective_cannot_do(fields: dict, says: str) -> None:
    with pytest.raises(TrainError, match=says):
        TrainConfig.from_dict(fields)


def test_label_aware_auto_is_off_for_predictive_objectives_on_folder_data() -> None:
    assert TrainConfig(data="folder", data_path="x").uses_label_aware
    assert not TrainConfig(data="folder", data_path="x", objective="caption-lm").uses_label_aware


def test_caption_lm_log_likelihood_is_finite_for_out_of_vocabulary_words() -> None:
    model = CaptionLM(_config("caption-lm")).eval()
    with torch.no_grad():
        ll = model.log_likelihood(torch.randn(1, 32), _ids(["an enormous zebra"]))
    assert math.isfinite(float(ll)) and float(ll) < 0


@pytest.mark.parametrize("objective", ["bow-contrastive", "bow-predictive", "caption-lm"])
def test_each_objective_trains_and_evaluates_through_the_cli(
    objective: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.cli import main

    run = tmp_path / "run"
    flags = ["--objective", objective, "--steps", "2", "--batch-size", "8", "--num-workers", "0"]
    assert main(["train", *flags, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--heldout-images", "6", "--seen-images", "6",
                 "--templates", "synthetic"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "held-out top1" in out and "synthetic" in out
    code = main(["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out", str(tmp_path / "m"),
                 "--no-publish"])  # fmt: skip
    err = capsys.readouterr().err
    if objective == "bow-contrastive":  # a text encoder to serve: exports with its parity gate
        assert code == 0 and list((tmp_path / "m").glob("*/text_encoder.onnx"))
    else:
        assert code != 0 and "no text encoder to serve" in err and not (tmp_path / "m").exists()
