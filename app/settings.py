"""Service settings: environment variables with the prefix ZEROSHOT_, validated at start-up."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.bundle.preprocess import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS
from model.bundle.providers import GpuOptions

PER_MODEL = {"backend", "precision", "image_precision", "device"}  # what model_options may set
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a folder under models_dir, never a path


def _split(v: object) -> object:
    """A comma/space separated string or a JSON array -> a list of strings."""
    if isinstance(v, str):
        return json.loads(v) if v.lstrip().startswith("[") else [s for s in v.replace(",", " ").split() if s]
    return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSHOT_", protected_namespaces=())

    # the model
    models_dir: Path = Field(default=Path("models"), description="folder that holds models/<name>/CURRENT")
    model_name: str = Field(default="default", description="which model folder to serve")
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="model folders served at once (comma list; the first is the default a request "
        "without `model` gets); empty: model_name alone",
    )
    device: Literal["auto", "tensorrt", "cuda", "cpu"] = Field(
        default="auto",
        description="auto: TensorRT, else CUDA, else the CPU, whichever onnxruntime offers first",
    )
    image_precision: Literal["fp32", "int8"] = Field(
        default="fp32", description="int8: the bundle's image_encoder.int8.onnx (export --int8)"
    )
    backend: Literal["onnxruntime", "openvino"] = Field(
        default="onnxruntime",
        description="openvino: OpenVINO's CPU runtime on the bundle's ONNX files (pip install '.[openvino]')",
    )
    precision: Literal["fp32", "fp16", "bf16", "int8"] = Field(
        default="fp32",
        description="fp16: the bundle's fp16 files (export --fp16; for a GPU); bf16: both towers in "
        "bf16 (ZEROSHOT_BACKEND=openvino, a CPU with native bf16); int8: the int8 image encoder",
    )
    # the GPU (onnxruntime's CUDA and TensorRT providers: model/bundle/providers.py)
    gpu_device_id: int = Field(default=0, ge=0, description="which GPU")
    gpu_mem_limit_mb: int | None = Field(
        default=None, ge=64, description="cap on the CUDA arena (and TensorRT workspace), MiB"
    )
    gpu_arena_strategy: Literal["next_power_of_two", "same_as_requested"] = Field(
        default="next_power_of_two",
        description="how the CUDA arena grows: powers of two (fewer allocations) or as asked (less waste)",
    )
    cudnn_conv_algo_search: Literal["exhaustive", "heuristic", "default"] = Field(
        default="exhaustive", description="cuDNN's convolution search, paid once per shape at warm-up"
    )
    tensorrt_cache_dir: Path | None = Field(
        default=None, description="where TensorRT engines are kept across restarts; unset: rebuilt each start"
    )
    tensorrt_fp16: bool = Field(
        default=True, description="TensorRT builds fp16 kernels where they are faster"
    )
    model_options: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="per-model backend, precision, image_precision or device, as JSON: "
        '{"vit-b-32": {"backend": "openvino", "precision": "bf16"}}',
    )
    intra_op_threads: int | None = Field(
        default=None, ge=1, description="onnxruntime threads per session; default: all cores"
    )
    reload_interval_s: float = Field(default=2.0, ge=0, description="how often CURRENT is checked; 0: never")
    drain_s: float = Field(
        default=5.0, ge=0, le=3600, description="after SIGTERM: /readyz answers 503 this long before shutdown"
    )
    shutdown_timeout_s: float = Field(
        default=30.0, gt=0, description="how long shutdown waits for requests in flight"
    )
    # the image micro-batcher
    max_batch: int = Field(default=32, ge=1, le=1024, description="images per image-encoder call")
    decode_workers: int | None = Field(
        default=None,
        ge=1,
        description="threads decoding and preprocessing uploaded images, shared by all models: Pillow "
        "releases the GIL, so they run in parallel and keep the encoder fed; default: the CPUs available",
    )
    max_wait_ms: float = Field(
        default=2.0, ge=0, le=10_000, description="how long a batch waits for more images once it has one"
    )
    max_queue: int = Field(
        default=256, ge=1, description="images waiting for the encoder; beyond it: 503 + Retry-After"
    )
    queue_timeout_s: float = Field(
        default=30.0, gt=0, description="a request still queued after this long is dropped (503)"
    )
    watchdog_ready_s: float = Field(
        default=30.0, ge=0, description="one image-encoder call running longer: /readyz 503; 0: off"
    )
    watchdog_live_s: float = Field(
        default=120.0,
        ge=0,
        description="one image-encoder call running longer: /healthz 503 (restart); 0: off",
    )
    text_slice_ms: float = Field(
        default=25.0,
        gt=0,
        le=10_000,
        description="text-encoder work runs in slices of about this long, one at a time, so a small "
        "request waits at most one slice of a large label-set build",
    )
    retry_after_s: int = Field(default=1, ge=0, description="the Retry-After sent with 503 overloaded")
    label_set_wait_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="PUT of a label set answers 200 when its build ends within this, else 202 and builds "
        "on in the background (GET shows its progress)",
    )
    # request limits
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="per image file")
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1, description="checked before decoding")
    max_images_per_request: int = Field(default=16, ge=1)
    max_labels_per_request: int = Field(default=1000, ge=1, description="also texts per embeddings call")
    max_templates_per_request: int = Field(
        default=100, ge=1, description="templates per request or label set (imagenet80 fits)"
    )
    max_prompts_per_request: int = Field(
        default=10_000, ge=1, description="labels x templates a request may ask to encode (413 beyond)"
    )
    max_prompts_per_label_set: int = Field(
        default=100_000, ge=1, description="labels x templates of one label set (1,000 x imagenet80 fits)"
    )
    jpeg_draft: bool = Field(
        default=False, description="decode large JPEGs at 1/2-1/8 scale in the DCT (faster, near-identical)"
    )
    allowed_formats: Annotated[frozenset[str], NoDecode] = Field(
        default=DEFAULT_FORMATS, description='"JPEG,PNG" or a JSON list; others get 415'
    )
    # image URLs (app/runtime/url_fetch.py): off unless turned on; never private addresses unless listed
    url_fetch: bool = Field(default=False, description="fetch images given by http(s) URL")
    url_allow: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="networks fetched from although not public (comma list, e.g. 10.1.0.0/16,::1); "
        "loopback, private, link-local and metadata addresses are refused otherwise",
    )
    url_fetch_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="one URL, redirects and the wait for a slot included"
    )
    url_fetch_max_concurrent: int = Field(default=16, ge=1, description="URL fetches at once, per process")
    url_max_redirects: int = Field(default=3, ge=0, le=10, description="each one checked like the first URL")
    default_top_k: int = Field(default=5, ge=1)
    max_calibration_images: int = Field(default=1000, ge=2, description="labelled images per calibration")
    # label sets and the label-embedding cache
    label_sets_dir: Path = Field(
        default=Path("label-sets"), description="registered label sets and their embeddings (writable)"
    )
    label_cache_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0, description="LRU bound of the in-memory label-embedding cache"
    )
    # auth
    api_keys: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(), description="keys accepted for /v1 (comma list); empty: /v1 is open"
    )
    key_requests_per_s: float = Field(
        default=0.0, ge=0, description="requests per second per API key (token bucket); 0: no limit"
    )
    key_request_burst: int = Field(
        default=0, ge=0, description="requests a key may send at once above its rate; 0: one second's worth"
    )
    key_max_concurrent: int = Field(
        default=0, ge=0, description="requests in flight per API key; 0: no limit"
    )
    key_prompts_per_minute: int = Field(
        default=0, ge=0, description="prompts a key may make the text encoder run per minute; 0: no limit"
    )
    admin_token: str | None = Field(
        default=None, description="enables reload and label-set changes; unset: those routes are off"
    )

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        v = _split(v)
        if isinstance(v, list | tuple | set | frozenset):
            return frozenset(str(s).upper() for s in v)
        return v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, v: object) -> object:
        v = _split(v)
        if isinstance(v, list | tuple | set | frozenset):
            return frozenset(str(s) for s in v if str(s))
        return v

    @field_validator("url_allow", mode="before")
    @classmethod
    def _networks(cls, v: object) -> object:
        v = _split(v)
        if isinstance(v, list | tuple | set | frozenset):
            try:  # normalised, so /v1/models shows what is meant; a host address is its /32 or /128
                return tuple(str(ipaddress.ip_network(str(n), strict=False)) for n in v)
            except ValueError as e:
                raise ValueError(f"url_allow: {e}") from None
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _model_names(cls, v: object) -> object:
        v = _split(v)
        if isinstance(v, list | tuple):
            names = tuple(str(n) for n in v)
            bad = [n for n in names if not MODEL_NAME.match(n)]
            if bad:
                raise ValueError(f"{bad[0]!r} is not a model folder name (letters, digits, . _ -)")
            if len(set(names)) != len(names):
                raise ValueError(f"a name is given twice in {', '.join(names)}")
            return names
        return v

    @property
    def served_models(self) -> tuple[str, ...]:
        """The model folders served, the default first."""
        return self.models or (self.model_name,)

    def gpu_options(self) -> GpuOptions:
        """The GPU settings as the encoders take them; TensorRT's profile spans max_batch images."""
        return GpuOptions(
            self.gpu_device_id,
            self.gpu_mem_limit_mb,
            self.gpu_arena_strategy,
            self.cudnn_conv_algo_search,
            self.tensorrt_cache_dir,
            self.tensorrt_fp16,
            self.max_batch,
        )

    def for_model(self, name: str) -> Settings:
        """These settings with the model's own options (model_options) in place, checked again."""
        options = self.model_options.get(name)
        return self if not options else Settings(**{**self.model_dump(), **options, "model_options": {}})

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_queue < self.max_images_per_request:
            raise ValueError(
                f"max_queue ({self.max_queue}) must hold one full request "
                f"(max_images_per_request={self.max_images_per_request})"
            )
        if 0 < self.watchdog_live_s < self.watchdog_ready_s:
            raise ValueError(
                f"watchdog_live_s ({self.watchdog_live_s}) must not be below watchdog_ready_s "
                f"({self.watchdog_ready_s}): a replica is taken out of the balancer before it is restarted"
            )
        strangers = sorted(set(self.model_options) - set(self.served_models))
        if strangers:
            raise ValueError(
                f"model_options names {', '.join(strangers)}, not served (models: {self.served_models})"
            )
        for name, options in self.model_options.items():
            extra = sorted(set(options) - PER_MODEL)
            if extra:
                raise ValueError(f"model_options[{name!r}]: {', '.join(extra)} cannot be set per model")
        if self.precision == "bf16" and self.backend != "openvino":
            raise ValueError("precision bf16 needs backend openvino (onnxruntime's CPU provider runs fp32)")
        if self.backend == "openvino" and (
            self.precision not in ("fp32", "bf16")
            or self.image_precision != "fp32"
            or self.device not in ("auto", "cpu")
        ):
            raise ValueError(
                "backend openvino runs on the CPU in fp32 or bf16: no fp16 or int8, no GPU device"
            )
        if self.precision == "fp16" and self.image_precision == "int8":
            raise ValueError("precision fp16 runs both towers' fp16 files: not with image_precision int8")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ValueError("admin_token must be at least 8 characters")
        return self
