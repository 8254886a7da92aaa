"""Bench-only baseline: the Hugging Face `transformers` zero-shot-image-classification pipeline behind
a minimal FastAPI endpoint, the way many teams serve CLIP first.

    .venv/bin/python bench/baseline_hf.py --model DIR --port 8101

DIR is a Hugging Face CLIP folder (config.json + weights + tokenizer.json). POST /classify takes
multipart `image` file(s) and `labels` (a JSON array); every request encodes its labels again, as the
pipeline does.
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Annotated, Any

import torch
import uvicorn
from fastapi import FastAPI, File, Form, UploadFile
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizerFast, pipeline


def make_app(model_dir: str) -> FastAPI:
    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = CLIPTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json")
    pipe = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=tokenizer,
        image_processor=CLIPImageProcessorPil(),
    )
    app = FastAPI()

    @app.post("/classify")
    def classify(  # sync: FastAPI runs it in its thread pool, as a typical baseline does
        image: Annotated[list[UploadFile], File()],
        labels: Annotated[str, Form()],
        templates: Annotated[str, Form()] = "a photo of a {}.",
    ) -> dict[str, Any]:
        images = [Image.open(io.BytesIO(f.file.read())).convert("RGB") for f in image]
        out = pipe(images, candidate_labels=json.loads(labels), hypothesis_template=templates)
        return {"results": [{"labels": r} for r in out]}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=8101)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    uvicorn.run(make_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
