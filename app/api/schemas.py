"""Request and response shapes, for validation of JSON bodies and for the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict, JsonValue

# a 2x2 red PNG
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4"
    "nGM8ISfHwMDAxMDAwMDAAAANBAEIfXHKZgAAAABJRU5ErkJggg=="
)
IMAGES_DOC = (
    'base64-encoded image files (a data: URL prefix is accepted), or {"url": "https://..."} for an image '
    "the server fetches (only where ZEROSHOT_URL_FETCH is on; private and loopback addresses are refused)"
)
IMAGE_URL_DOC = (
    "http(s) URLs of images the server fetches: only where ZEROSHOT_URL_FETCH is on, never from loopback, "
    "private, link-local or metadata addresses unless ZEROSHOT_URL_ALLOW names them"
)
IMAGE_ITEM: JsonDict = {
    "items": {
        "anyOf": [
            {"type": "string", "format": "byte"},
            {
                "type": "object",
                "required": ["url"],
                "additionalProperties": False,
                "properties": {"url": {"type": "string", "description": "http(s) or data: URL"}},
            },
        ]
    }
}
IMAGE_ENCODING = {
    "image": {"contentType": "image/png, image/jpeg, image/webp, image/gif, image/bmp, image/tiff"}
}
# Documented constraints (the schema only: the routes check them themselves, with specific error codes)
LABEL_ITEMS: JsonDict = {
    "type": "string",
    "minLength": 1,
    "maxLength": 1000,
    "pattern": r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$",
}
LABELS_SCHEMA: JsonDict = {"items": LABEL_ITEMS, "minItems": 1, "uniqueItems": True}
LABEL_SET_NAME: JsonDict = {"pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"}
ONE_OF_LABELS: list[JsonValue] = [
    {"required": ["labels"], "not": {"required": ["label_set"]}},
    {"required": ["label_set"], "not": {"required": ["labels"]}},
]
TEMPLATES_DOC = (
    'a template set name ("default" = "a photo of a {}.", "imagenet7", "imagenet80", "none") '
    'or a list of strings containing "{}"'
)

ON_ERROR_DOC = (
    "fail (default): one image that cannot be used fails the whole request with its error; "
    "skip: the other images are classified and that one gets an error object in place of its labels"
)


MODE_DOC = (
    "single (default): probabilities are a softmax over the labels sent and sum to 1; multi: each label "
    "gets a probability of its own, unchanged by which other labels are sent (one label alone is fine)"
)
MIN_PROBABILITY_DOC = "abstain when the top label's probability (in the mode asked) is below this"
MIN_COSINE_DOC = "abstain when the top label's cosine similarity is below this"
MIN_NEGLABEL_DOC = (
    "abstain when the NegLabel score is below this: the share of the softmax mass that stays on your "
    "labels when 3,000 lexicon words far from them are added as negative labels"
)

MODEL_DOC = (
    "the model to run on: one of those GET /v1/models lists (ZEROSHOT_MODELS); default: the first. "
    "404 model_not_found, naming those served, for any other"
)
MODEL_NAME: JsonDict = {"maxLength": 64}


def model_field() -> Any:
    return Field(default=None, description=MODEL_DOC, json_schema_extra=MODEL_NAME)


class ImageRef(BaseModel):
    """An image given by URL: http(s), fetched by the server when allowed, or a data: URL."""

    model_config = ConfigDict(extra="forbid")
    url: str


class ClassifyJson(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"images": [EXAMPLE_PNG], "labels": ["red circle", "blue square"], "top_k": 2}],
            "oneOf": ONE_OF_LABELS,
        },
    )
    images: list[str | ImageRef] = Field(description=IMAGES_DOC, json_schema_extra=IMAGE_ITEM)
    labels: list[str] | None = Field(
        default=None, description="candidate labels (or give label_set)", json_schema_extra=LABELS_SCHEMA
    )
    label_set: str | None = Field(
        default=None, description="the name of a registered label set", json_schema_extra=LABEL_SET_NAME
    )
    templates: str | list[str] | None = Field(default=None, description=TEMPLATES_DOC)
    top_k: int | None = Field(
        default=None, description="how many labels to return per image", json_schema_extra={"minimum": 1}
    )
    on_error: str | None = Field(
        default=None, description=ON_ERROR_DOC, json_schema_extra={"enum": ["fail", "skip"]}
    )
    mode: str | None = Field(
        default=None, description=MODE_DOC, json_schema_extra={"enum": ["single", "multi"]}
    )
    # ranges in the schema only: the route checks them, with the invalid_threshold code and the field's name
    min_probability: float | None = Field(
        default=None,
        strict=True,
        description=MIN_PROBABILITY_DOC,
        json_schema_extra={"minimum": 0, "maximum": 1},
    )
    min_cosine: float | None = Field(
        default=None, strict=True, description=MIN_COSINE_DOC, json_schema_extra={"minimum": -1, "maximum": 1}
    )
    min_neglabel: float | None = Field(
        default=None,
        strict=True,
        description=MIN_NEGLABEL_DOC,
        json_schema_extra={"minimum": 0, "maximum": 1},
    )
    model: str | None = model_field()


class ImagesJson(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str | ImageRef] = Field(description=IMAGES_DOC, json_schema_extra=IMAGE_ITEM)
    model: str | None = model_field()


class TextsJson(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"texts": ["a photo of a red circle.", "a blue square"]}]},
    )
    texts: list[str] = Field(description="texts to embed", json_schema_extra=LABELS_SCHEMA)
    templates: str | list[str] | None = Field(
        default=None,
        description="if given, each text is a label put into every template and the features averaged "
        "(prompt ensembling); if not, each text is encoded as it is",
    )
    model: str | None = model_field()


class LabelSetPut(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"labels": ["cat", "dog", "bird"], "templates": "imagenet80"}]},
    )
    labels: list[str] = Field(description="the labels, in order", json_schema_extra=LABELS_SCHEMA)
    templates: str | list[str] | None = Field(default=None, description=TEMPLATES_DOC)


class LabelledImage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description=IMAGES_DOC.replace("files", "file"), json_schema_extra={"format": "byte"})
    label: str | None = Field(description="its label in the set, or null: the image is none of them")


class CalibrationPost(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "images": [{"image": EXAMPLE_PNG, "label": "cat"}, {"image": EXAMPLE_PNG, "label": None}],
                    "target_precision": 0.95,
                }
            ]
        },
    )
    images: list[LabelledImage] = Field(
        description="labelled images: a few per label, and some that are none"
    )
    model: str | None = Field(
        default=None,
        description="the model to calibrate the set for (default: the first served)",
        json_schema_extra=MODEL_NAME,
    )
    target_precision: float | None = Field(
        default=None,
        strict=True,
        description="put the abstain threshold where the answers kept are right this often (default 0.95)",
    )
    target_fpr: float | None = Field(
        default=None, strict=True, description="or: accept at most this share of the images labelled null"
    )


class ModelRef(BaseModel):
    name: str
    version: str


class LabelScoreOut(BaseModel):
    label: str
    probability: float = Field(
        description="single: softmax(logit_scale x cosine / T) over the labels (T = 1 unless the label set "
        "is calibrated); multi: this label's own probability"
    )
    cosine: float = Field(description="cosine similarity of the image and the label embedding, in [-1, 1]")


class ImageError(BaseModel):
    code: str
    message: str


class Abstain(BaseModel):
    score: str = Field(
        description="mcm (top softmax probability), multi (top multi probability), cosine, neglabel"
    )
    value: float = Field(description="the image's score")
    threshold: float = Field(description="abstained when value < threshold")
    source: str = Field(description="request (its min_* field) or calibration (the label set's fitted rule)")


class ImageResult(BaseModel):
    labels: list[LabelScoreOut] | None = Field(
        default=None, description="the top_k labels, highest cosine first (absent for a skipped image)"
    )
    error: ImageError | None = Field(
        default=None, description='with on_error="skip": why this image was not classified (then no labels)'
    )
    abstained: bool | None = Field(
        default=None, description="true: the image matches none of the labels, by the rule in `abstain`"
    )
    abstain: Abstain | None = Field(
        default=None,
        description="the rule that decided (null when no threshold was given and no calibration applies)",
    )


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "default", "version": "20261127-101500"},
                    "results": [
                        {
                            "labels": [
                                {"label": "red circle", "probability": 0.97, "cosine": 0.31},
                                {"label": "blue square", "probability": 0.03, "cosine": 0.12},
                            ]
                        }
                    ],
                    "timing_ms": {"decode_ms": 1.2, "encode_ms": 2.5, "total_ms": 4.1},
                }
            ]
        }
    )
    model: ModelRef
    mode: str = Field(default="single", description="single or multi, as asked")
    results: list[ImageResult] = Field(description="one per image, in the order sent")
    calibration: dict[str, str] | None = Field(
        default=None, description="with a label set: status fitted (used), stale, unreadable or none, and why"
    )
    timing_ms: dict[str, float]


class EmbeddingsResponse(BaseModel):
    model: ModelRef
    dim: int
    embeddings: list[list[float]] = Field(description="L2-normalized features, one row per input")


class ErrorInfo(BaseModel):
    code: str
    message: str
    detail: object = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


ERRORS: dict[int | str, dict[str, object]] = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in {
        400: "malformed body",
        401: "missing or wrong API key or admin token",
        403: "an admin route while no admin token is configured; an image URL while fetching is off, or "
        "one refused (a loopback, private, link-local or metadata address)",
        404: "no such label set or model",
        413: "too large: body, image file (uploaded or fetched), pixels or image count",
        415: "unsupported content type or image format",
        422: "invalid input: labels, templates, top_k, image bytes, an image URL that cannot be fetched",
        409: "a reload refused; a label set whose only build failed",
        503: "no model loaded, overloaded, or a label set still building (with Retry-After)",
    }.items()
}
