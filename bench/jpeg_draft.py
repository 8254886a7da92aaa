"""JPEG draft mode (ZEROSHOT_JPEG_DRAFT): decode time saved and the effect on features.

    .venv/bin/python bench/jpeg_draft.py [--bundle models/default]

Preprocessing time per photo with and without draft decoding (scikit-image photos at 1x and 2x, as
JPEG quality 90, at 224 and 64 px), and, through the default model, the cosine between the features
of the two decodes and the top-1 agreement on the 2,100 eval images saved as 512 px JPEGs.
Writes bench/results/jpeg_draft.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage import data

from model.bundle.encoders import OnnxEncoders
from model.bundle.format import current_bundle
from model.bundle.preprocess import PreprocessConfig, preprocess_bytes
from model.bundle.prompts import get_templates
from model.bundle.zeroshot import label_matrix
from model.data.synthetic import SyntheticShapes, all_classes, class_name
from model.evaluate import EVAL_SEED


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def ms(fn: Any) -> float:
    fn()
    times = []
    for _ in range(30):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="models/default")
    args = ap.parse_args()
    out: dict[str, Any] = {"timing": [], "features": {}}
    photos = {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
    }
    print(f"{'size':>5} {'photo':<10}{'pixels':>11}{'full ms':>9}{'draft ms':>9}")
    for size in (224, 64):
        cfg = PreprocessConfig(image_size=size)
        for name, arr in photos.items():
            for k in (1, 2):
                img = Image.fromarray(arr)
                img = img.resize((img.width * k, img.height * k), Image.Resampling.BICUBIC)
                b = jpeg(img)
                full = ms(lambda b=b, cfg=cfg: preprocess_bytes(b, cfg))
                draft = ms(lambda b=b, cfg=cfg: preprocess_bytes(b, cfg, jpeg_draft=True))
                out["timing"].append(
                    {
                        "size": size,
                        "photo": name,
                        "w": img.width,
                        "h": img.height,
                        "full_ms": full,
                        "draft_ms": draft,
                    }
                )
                print(f"{size:>5} {name:<10}{img.width:>5}x{img.height:<5}{full:>9.2f}{draft:>9.2f}")
    enc = OnnxEncoders(current_bundle(args.bundle), device="cpu")
    cfg = enc.preprocess
    classes = [class_name(*c) for c in all_classes()]
    matrix = label_matrix(enc, classes, get_templates("synthetic"))
    files = []
    for split, n in (("heldout", 600), ("seen", 1500)):
        shapes = SyntheticShapes(image_size=cfg.image_size, seed=EVAL_SEED, split=split, length=n)
        files += [jpeg(shapes[i].image.resize((512, 512), Image.Resampling.BICUBIC)) for i in range(n)]
    full = enc.encode_images(np.stack([preprocess_bytes(f, cfg) for f in files]))
    draft = enc.encode_images(np.stack([preprocess_bytes(f, cfg, jpeg_draft=True) for f in files]))
    cos = (full * draft).sum(axis=1)
    agree = float(((full @ matrix.T).argmax(1) == (draft @ matrix.T).argmax(1)).mean())
    out["features"] = {
        "images": len(files),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "top1_agreement": agree,
    }
    print(
        f"default model, {len(files)} eval images as 512 px JPEGs: cosine full vs draft "
        f"mean {cos.mean():.4f}, min {cos.min():.4f}; top-1 agreement {100 * agree:.1f}%"
    )
    path = Path("bench/results/jpeg_draft.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
