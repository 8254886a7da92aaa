"""Service settings: environment variables with the prefix ZEROSHOT_, validated at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.preprocess import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSHOT_", protected_namespaces=())

    models_dir: Path = Field(default=Path("models"), description="folder that holds models/<name>/CURRENT")
    model_name: str = Field(default="default", description="which model folder to serve")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    intra_op_threads: int | None = Field(
        default=None, ge=1, description="onnxruntime threads; default: all cores"
    )
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="per image file")
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    max_images_per_request: int = Field(default=16, ge=1)
    max_labels_per_request: int = Field(default=1000, ge=1)
    allowed_formats: Annotated[frozenset[str], NoDecode] = DEFAULT_FORMATS  # "JPEG,PNG" or a JSON list
    default_top_k: int = Field(default=5, ge=1)
    reload_interval_s: float = Field(default=2.0, ge=0, description="how often CURRENT is checked; 0: never")
    admin_token: str | None = Field(default=None, description="enables /v1/admin/*; unset: admin routes off")
    label_cache_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0, description="LRU bound of the label cache"
    )

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        if isinstance(v, str):
            v = json.loads(v) if v.lstrip().startswith("[") else [s for s in v.replace(",", " ").split() if s]
        if isinstance(v, list | tuple | set | frozenset):
            return frozenset(str(s).upper() for s in v)
        return v
