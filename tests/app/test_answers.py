"""Modes, abstention and calibration over HTTP: the fake encoder for the routes and their errors, the
default model for a calibration that has something to learn."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from model.data.synthetic import HELD_OUT, SyntheticShapes, class_name
from tests.conftest import DEFAULT_MODEL_DIR
from tests.fakes import fake_app

ADMIN = {"Authorization": "Bearer admin-token-123"}


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


IMAGES = [b64(Image.new("RGB", (16, 16), (40 * i, 200 - 30 * i, 90))) for i in range(4)]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(fake_app(tmp_path_factory.mktemp("answers"), admin_token="admin-token-123")) as c:
        yield c


def classify(client: TestClient, **body: Any) -> dict:
    r = client.post("/v1/classify", json={"images": IMAGES, **body})
    assert r.status_code == 200, r.text
    return r.json()


def probabilities(answer: dict) -> list[dict[str, float]]:
    return [{x["label"]: x["probability"] for x in row["labels"]} for row in answer["results"]]


def test_multi_probabilities_do_not_change_when_labels_are_added(client: TestClient) -> None:
    few = probabilities(classify(client, labels=["cat", "dog"], mode="multi", top_k=10))
    many = probabilities(
        classify(client, labels=["cat", "dog", "car", "tree", "boat"], mode="multi", top_k=10)
    )
    alone = probabilities(classify(client, labels=["dog"], mode="multi"))
    for f, m, a in zip(few, many, alone, strict=True):
        assert f["cat"] == pytest.approx(m["cat"], abs=1e-6) and f["dog"] == pytest.approx(m["dog"], abs=1e-6)
        assert a["dog"] == pytest.approx(m["dog"], abs=1e-6)
    single = probabilities(classify(client, labels=["cat", "dog"]))
    assert all(
        sum(p.values()) == pytest.approx(1.0, abs=1e-5) for p in single
    )  # single: a softmax, as before


def test_results_say_whether_to_abstain_and_by_which_rule(client: TestClient) -> None:
    plain = classify(client, labels=["cat", "dog"])
    assert plain["mode"] == "single"
    assert all(r["abstained"] is False and r["abstain"] is None for r in plain["results"])
    never = classify(client, labels=["cat", "dog"], min_cosine=-1.0)["results"]
    always = classify(client, labels=["cat", "dog"], min_cosine=1.0)["results"]
    assert [r["abstained"] for r in never] == [False] * 4 and [r["abstained"] for r in always] == [True] * 4
    rule = always[0]["abstain"]
    assert rule["score"] == "cosine" and rule["threshold"] == 1.0 and rule["source"] == "request"
    assert rule["value"] == pytest.approx(always[0]["labels"][0]["cosine"])
    ranked = classify(client, labels=["cat", "dog"], min_probability=0.999999)["results"]
    assert all(r["abstain"]["score"] == "mcm" for r in ranked)
    assert [r["abstained"] for r in ranked] == [r["labels"][0]["probability"] < 0.999999 for r in ranked]
    neg = classify(client, labels=["cat", "dog"], min_neglabel=0.5)["results"]
    assert all(r["abstain"]["score"] == "neglabel" and 0 <= r["abstain"]["value"] <= 1 for r in neg)
    multi = classify(client, labels=["cat"], mode="multi", min_probability=0.5)["results"]
    assert all(r["abstain"]["score"] == "multi" for r in multi)
    metrics = client.get("/metrics").text
    counts = {
        ln.split()[0]: float(ln.split()[1])
        for ln in metrics.splitlines()
        if ln.startswith("zeroshot_answers")
    }
    assert counts["zeroshot_answers_abstained_total"] >= 4  # min_cosine=1.0 refused all four
    assert counts["zeroshot_answers_ruled_total"] >= counts["zeroshot_answers_abstained_total"] + 4


def test_mode_and_thresholds_as_form_fields(client: TestClient) -> None:
    files = [("image", ("a.png", base64.b64decode(IMAGES[0]), "image/png"))]
    data = {"labels": ["cat", "dog"], "mode": "multi", "min_cosine": "1"}
    r = client.post("/v1/classify", files=files, data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "multi" and body["results"][0]["abstained"] is True
    bad = client.post("/v1/classify", files=files, data={"labels": ["cat"], "min_cosine": "high"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_threshold"
    assert "min_cosine" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("mode", "both", "invalid_mode"),
        ("min_probability", 1.5, "invalid_threshold"),
        ("min_cosine", -2, "invalid_threshold"),
        ("min_neglabel", True, "invalid_threshold"),
    ],
)
def test_bad_modes_and_thresholds_get_a_422_naming_the_field(
    client: TestClient, field: str, value: Any, code: str
) -> None:
    r = client.post("/v1/classify", json={"images": IMAGES[:1], "labels": ["cat"], field: value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in (code, "invalid_request") and field in r.json()["error"]["message"]


def put_set(client: TestClient, name: str, labels: list[str]) -> None:
    r = client.put(f"/v1/label-sets/{name}", json={"labels": labels}, headers=ADMIN)
    assert r.status_code == 200, r.text


def calibrate(client: TestClient, name: str, images: list[dict], **kw: Any) -> Any:
    return client.post(f"/v1/label-sets/{name}/calibration", json={"images": images, **kw}, headers=ADMIN)


def test_bad_calibration_input_gets_a_4xx_naming_the_problem(client: TestClient) -> None:
    put_set(client, "pets", ["cat", "dog"])
    cases = [
        ([{"image": IMAGES[0], "label": "cat"}, {"image": IMAGES[1], "label": "cow"}], {}, "cow"),
        ([{"image": IMAGES[0], "label": "cat"}, {"image": IMAGES[1], "label": "cat"}], {}, "at least 2"),
        (
            [
                {"image": IMAGES[0], "label": "cat"},
                {"image": base64.b64encode(b"not an image").decode(), "label": "dog"},
            ],
            {},
            "image 1",
        ),
        (
            [{"image": IMAGES[0], "label": "cat"}, {"image": IMAGES[1], "label": "dog"}],
            {"target_fpr": 0.1},
            "none of the labels",
        ),
        (
            [{"image": IMAGES[0], "label": "cat"}, {"image": IMAGES[1], "label": "dog"}],
            {"target_precision": 2},
            "target_precision",
        ),
        ([], {}, "images"),
    ]
    for images, kw, says in cases:
        r = calibrate(client, "pets", images, **kw)
        assert 400 <= r.status_code < 500, (says, r.text)
        assert says in r.json()["error"]["message"], (says, r.json())
    assert calibrate(client, "nosuch", cases[0][0]).status_code == 404
    no_token = client.post("/v1/label-sets/pets/calibration", json={"images": cases[0][0]})
    assert no_token.status_code == 401
    assert client.get("/v1/label-sets/pets").json()["calibration"] == {"status": "none"}


# --- on the default model: a calibration with something to learn -----------------------------------


@pytest.fixture(scope="module")
def real_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")
    s = Settings(
        models_dir=DEFAULT_MODEL_DIR.parent, model_name="default", device="cpu",
        label_sets_dir=tmp_path_factory.mktemp("real-sets"), admin_token="admin-token-123",
    )  # fmt: skip
    with TestClient(create_app(s)) as c:
        yield c


SEEN = ["red circle", "green square", "blue triangle", "yellow star", "purple heart", "orange cross"]


def shapes(n: int, split: str, seed: int) -> list[tuple[str, str]]:
    data = SyntheticShapes(64, seed=seed, split=split, length=n)
    return [(b64(s.image), class_name(s.colour, s.shape)) for s in data]


def test_a_calibrated_set_is_used_and_a_stale_one_is_not(real_client: TestClient, tmp_path: Path) -> None:
    c = real_client
    put_set(c, "six", SEEN)
    imgs = [(i, lb) for i, lb in shapes(300, "seen", 5) if lb in SEEN][:36]
    unknown = [(i, None) for i, lb in shapes(24, "heldout", 5)]  # pairs that share colours and shapes
    body = [{"image": i, "label": lb} for i, lb in imgs + unknown]
    r = calibrate(c, "six", body, target_fpr=0.1)
    assert r.status_code == 200, r.text
    fit = r.json()["calibration"]
    assert fit["status"] == "fitted" and fit["temperature"] > 0 and len(fit["a"]) == len(SEEN)
    assert fit["figures"]["images"] == 60 and fit["figures"]["unknown_images"] == 24
    shown = c.get("/v1/label-sets/six").json()["calibration"]
    assert shown["status"] == "fitted" and shown["rule"] == fit["rule"]

    answer = c.post("/v1/classify", json={"images": [unknown[0][0], imgs[0][0]], "label_set": "six"}).json()
    assert answer["calibration"]["status"] == "fitted"
    assert all(r["abstain"]["source"] == "calibration" for r in answer["results"])
    assert answer["results"][0]["abstain"]["threshold"] == pytest.approx(fit["rule"]["threshold"])

    # the same file as if fitted on another bundle: reported stale, never used
    path = Path(c.app.state.engine.settings.label_sets_dir) / "six.calibration.json"  # type: ignore[attr-defined]
    d = json.loads(path.read_text())
    d["fits"][0]["sha"] = "0" * 64
    path.write_text(json.dumps(d))
    shown = c.get("/v1/label-sets/six").json()["calibration"]
    assert shown["status"] == "stale" and "another model" in shown["reason"]
    answer = c.post("/v1/classify", json={"images": [unknown[0][0]], "label_set": "six"}).json()
    assert answer["calibration"]["status"] == "stale" and answer["results"][0]["abstain"] is None

    path.write_text("{not json")  # damaged: reported, not used, not a 500
    shown = c.get("/v1/label-sets/six").json()["calibration"]
    assert shown["status"] == "unreadable"
    assert c.post("/v1/classify", json={"images": [imgs[0][0]], "label_set": "six"}).status_code == 200

    assert c.delete("/v1/label-sets/six", headers=ADMIN).status_code == 200
    assert not path.exists()  # a set deleted takes its calibration with it


def test_held_out_pairs_are_none_of_the_seen_labels(real_client: TestClient) -> None:
    """Ad hoc thresholds on the default model: an image whose pair is not in the list is refused far more
    often than one whose pair is (the near open-set case of `zeroshot eval --open-set`)."""
    seen = [class_name(c, s) for c, s in [(c, s) for c in ("red", "green", "blue") for s in ("star", "cross")]
            if (c, s) not in HELD_OUT]  # fmt: skip
    inside = [i for i, lb in shapes(120, "seen", 9) if lb in seen][:10]
    outside = [i for i, lb in shapes(30, "heldout", 9) if lb.split()[1] in ("star", "cross")][:6]
    r = real_client.post("/v1/classify", json={"images": inside + outside, "labels": seen, "min_cosine": 0.6})
    flags = [row["abstained"] for row in r.json()["results"]]
    assert sum(flags[len(inside) :]) > sum(flags[: len(inside)])


def values_over_http(c: TestClient, images: list[str], label_set: str) -> list[float]:
    """The deciding score of each image, as the server answers it, 16 images a request."""
    out = []
    for i in range(0, len(images), 16):
        r = c.post("/v1/classify", json={"images": images[i : i + 16], "label_set": label_set})
        assert r.status_code == 200, r.text
        out += [row["abstain"]["value"] for row in r.json()["results"]]
    return out


def test_open_set_far_and_near_over_http(real_client: TestClient) -> None:
    """The two open-set tests through the server: a set calibrated over HTTP on one split, its
    rule's score read from the answers on another. Far: all 36 classes against images with no listed
    shape; near: the 30 seen classes against the 6 held-out pairs."""
    from model.bundle.metrics import auroc
    from model.data.out_of_set import FarOutOfSet
    from model.data.synthetic import all_classes, seen_classes

    c = real_client
    far = FarOutOfSet(image_size=64, seed=77, length=108)
    cases = {
        "far": ([class_name(*x) for x in all_classes()], "all", [b64(far[i]) for i in range(108)]),
        "near": ([class_name(*x) for x in seen_classes()], "seen", [i for i, _ in shapes(72, "heldout", 78)]),
    }
    figures = {}
    for case, (labels, split, outside) in cases.items():
        r = c.put(f"/v1/label-sets/{case}", json={"labels": labels, "templates": "synthetic"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        cal_in = shapes(3 * len(labels), split, 79)
        body = [{"image": i, "label": lb} for i, lb in cal_in] + [
            {"image": i, "label": None} for i in outside[::2]
        ]
        r = calibrate(c, case, body, target_fpr=0.05)
        assert r.status_code == 200, r.text
        test_in = [i for i, _ in shapes(3 * len(labels), split, 80)]
        inside_v = values_over_http(c, test_in, case)
        outside_v = values_over_http(c, outside[1::2], case)
        figures[case] = auroc(np.array(inside_v), np.array(outside_v))
    print(f"calibrated AUROC over HTTP: far {figures['far']:.3f}, near {figures['near']:.3f}")
    assert figures["far"] >= 0.95
    assert figures["near"] >= 0.80  # the aim is 0.85; the measured figures are in the README


def test_a_label_set_is_shown_while_no_model_is_loaded(tmp_path: Path) -> None:
    from tests.fakes import fake_settings

    def no_model(settings: Settings, name: str, version: str) -> Any:
        raise RuntimeError("the bundle cannot be loaded")

    s = fake_settings(tmp_path)
    s.label_sets_dir.mkdir(parents=True)
    d = {"name": "pets", "labels": ["cat"], "templates": ["{}"], "template_set": None, "created_at": "t"}
    (s.label_sets_dir / "pets.json").write_text(json.dumps(d))
    with TestClient(create_app(s, no_model)) as c:
        r = c.get("/v1/label-sets/pets")
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == ["cat"] and r.json()["calibration"]["status"] == "none"
