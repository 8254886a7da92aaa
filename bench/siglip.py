"""SigLIP-B/16 beside CLIP ViT-B/16 (both 224 px, random weights): image and text encoder throughput
in onnxruntime on this machine's CPUs, side by side.

    .venv/bin/python bench/siglip.py [--rounds 5] [--seconds 2] [--out /tmp/siglip_bench.json]
    .venv/bin/python bench/siglip.py --quick      # tiny configs, one short round (tests)

Both models are built with random weights (speed does not depend on them), exported with the
project's exporter (model/export.py, fp32) and opened as the server opens them: onnxruntime CPU,
intra-op threads = the CPUs this process may use, one inter-op thread, all graph optimizations
(model/bundle/encoders.py). Figures, timed in interleaved rounds (each figure of one model, then the
same figure of the other, the order alternating by round) so that a noisy machine slows both alike;
each round's figure is items / the median call over about `--seconds`, and the median round counts:
- image encoder, images/s at batch 1 and 8;
- text encoder, prompts/s at batch 32: CLIP on typical label prompts (the synthetic class names x
  the 80 ImageNet templates, sorted by token length as the server batches them, the 32 at the
  median) padded to the longest, as the server pads them, and padded to 77; SigLIP at its fixed 64,
  the only length that gives its trained features (non-causal attention, read at the last position);
  and, to separate the tower's cost from the padding's, SigLIP at CLIP's typical length (features
  wrong there: a cost, not a use).
The SigLIP/CLIP ratio of a figure is the median over rounds of that round's ratio. Parameters per
tower and GFLOPs per image / per prompt (torch's FLOP counter, 2 per multiply-add) come with them.
Prints a markdown table; `--out` writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.bundle.encoders import available_cpus, open_session, run_normalized  # noqa: E402
from model.bundle.format import IMAGE_ENCODER, TEXT_ENCODER  # noqa: E402
from model.bundle.prompts import fill, get_templates  # noqa: E402
from model.bundle.tokenizer import ClipTokenizer  # noqa: E402
from model.clip import PRESETS, CLIPConfig, TextConfig, VisionConfig, build_model, get_preset  # noqa: E402
from model.data.synthetic import all_classes, class_name  # noqa: E402
from model.export import Model, export_onnx  # noqa: E402
from model.siglip import SIGLIP_B16, SiglipConfig, build_siglip, tiny_siglip_config  # noqa: E402

MODELS = ("clip", "siglip")
NAMES = {"clip": "CLIP ViT-B/16", "siglip": "SigLIP-B/16"}
IMAGE_BATCHES = (1, 8)
TEXT_BATCH = 32
# (row label, CLIP's figure, SigLIP's figure); {n}: CLIP's typical padded length, {c} and {s}: the
# context lengths of CLIP and SigLIP
PAIRS = (
    ("image encoder, batch 1, images/s", "image_b1", "image_b1"),
    ("image encoder, batch 8, images/s", "image_b8", "image_b8"),
    (
        "text, batch 32, as served: CLIP {n} tokens (dynamic), SigLIP {s}, prompts/s",
        "text_dynamic",
        "text_full",
    ),
    ("text, batch 32, full context: CLIP {c}, SigLIP {s}, prompts/s", "text_full", "text_full"),
    (
        "text, batch 32, both at {n} tokens (SigLIP's features wrong there), prompts/s",
        "text_dynamic",
        "text_dynamic",
    ),
)


def clip_b16() -> CLIPConfig:
    """The ViT-B/16 preset, or ViT-B/32's with patch 16 where a checkout has none."""
    if "ViT-B-16" in PRESETS:
        return get_preset("ViT-B-16")
    b32 = get_preset("ViT-B-32")
    return replace(b32, vision=replace(b32.vision, patch_size=16))


def configs(quick: bool) -> tuple[CLIPConfig, SiglipConfig]:
    """The two B/16s at 224 px, or tiny stand-ins (32 px, patch 8, width 64) for --quick."""
    if not quick:
        return clip_b16(), SIGLIP_B16
    tiny_clip = CLIPConfig(
        64, VisionConfig("vit", 32, 64, 2, 8, heads=2), TextConfig(width=64, heads=2, layers=1), "gelu"
    )
    return tiny_clip, tiny_siglip_config()


def typical_prompts(n: int) -> list[str]:
    """n label prompts at the median of all the label prompts sorted by token length (as
    encode_by_length batches them)."""
    prompts = [p for c in all_classes() for p in fill(get_templates("imagenet80"), class_name(*c))]
    lengths = ClipTokenizer.clip_bpe().token_lengths(prompts)
    ordered = [prompts[i] for i in np.argsort(lengths, kind="stable")]
    mid = (len(ordered) - n) // 2
    return ordered[mid : mid + n]


def text_inputs(clip_cfg: CLIPConfig, siglip_cfg: SiglipConfig) -> dict[str, dict[str, np.ndarray]]:
    """Token ids per model and figure: CLIP's real BPE ids, SigLIP's random ids in its vocabulary
    (its SentencePiece file is not here; the ids' values do not change the work)."""
    tok = ClipTokenizer.clip_bpe(clip_cfg.text.context_length)
    texts = typical_prompts(TEXT_BATCH)
    dynamic = tok.encode_batch(texts)
    n = dynamic.shape[1]
    rng = np.random.default_rng(0)
    full = siglip_cfg.text.context_length
    siglip_ids = rng.integers(0, siglip_cfg.text.vocab_size, (TEXT_BATCH, full), dtype=np.int64)
    return {
        "clip": {"text_dynamic": dynamic, "text_full": tok.encode_batch(texts, pad_to=tok.context_length)},
        "siglip": {"text_dynamic": siglip_ids[:, : min(n, full)].copy(), "text_full": siglip_ids},
    }


def tower_parameters(model: Model) -> dict[str, int]:
    """Parameters of the image tower, and of everything else but the logit scale and bias (the text
    tower, its embeddings and projection)."""
    total = sum(p.numel() for p in model.parameters())
    image = sum(p.numel() for p in model.visual.parameters())
    scalars = sum(p.numel() for p in (model.logit_scale, model.logit_bias) if p is not None)
    return {"image": image, "text": total - image - scalars}


def gflops(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """GFLOPs of one call (torch's FLOP counter: matmuls, linears, convolutions; 2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(x)
    return counter.get_total_flops() / 1e9


def model_facts(model: Model, ids: dict[str, np.ndarray]) -> dict[str, Any]:
    s = model.config.vision.image_size
    flops = {"image": gflops(model.encode_image, torch.zeros(1, 3, s, s))}
    for key, batch in ids.items():
        flops[key] = gflops(model.encode_text, torch.from_numpy(batch[:1]))
    tokens = {key: int(batch.shape[1]) for key, batch in ids.items()}
    return {"parameters": tower_parameters(model), "gflops": flops, "text_tokens": tokens}


def export(model: Model, out_dir: Path) -> float:
    out_dir.mkdir(parents=True)
    t = time.perf_counter()
    export_onnx(model, out_dir)
    return time.perf_counter() - t


def session_options() -> ort.SessionOptions:
    """What OnnxEncoders opens a bundle's sessions with on a CPU."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = available_cpus()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def figure_calls(
    folder: Path, image_size: int, ids: dict[str, np.ndarray]
) -> dict[str, tuple[Callable[[], Any], int]]:
    """figure -> (one call of the session, items it encodes), for one exported model."""
    image = open_session(folder / IMAGE_ENCODER, session_options())
    text = open_session(folder / TEXT_ENCODER, session_options())
    rng = np.random.default_rng(0)
    calls: dict[str, tuple[Callable[[], Any], int]] = {}
    for b in IMAGE_BATCHES:
        x = rng.standard_normal((b, 3, image_size, image_size)).astype(np.float32)
        calls[f"image_b{b}"] = (functools.partial(run_normalized, image, {"pixel_values": x}), b)
    for key, batch in ids.items():
        calls[key] = (functools.partial(run_normalized, text, {"input_ids": batch}), len(batch))
    return calls


def per_second(fn: Callable[[], Any], items: int, seconds: float) -> float:
    """items / the median call over about `seconds` (at least two calls)."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 2:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return items / statistics.median(times)


def run_rounds(
    calls: dict[str, dict[str, tuple[Callable[[], Any], int]]], rounds: int, seconds: float
) -> dict[str, dict[str, list[float]]]:
    """Per model and figure, one rate per round; figure by figure, both models in turn."""
    for model in MODELS:  # warm: every shape timed below, twice
        for fn, _ in calls[model].values():
            fn()
            fn()
    samples: dict[str, dict[str, list[float]]] = {m: {f: [] for f in calls[m]} for m in MODELS}
    for r in range(rounds):
        order = MODELS if r % 2 == 0 else MODELS[::-1]
        for figure in calls["clip"]:
            for model in order:
                if figure in calls[model]:
                    fn, items = calls[model][figure]
                    samples[model][figure].append(per_second(fn, items, seconds))
        print(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{m} {f} {v[-1]:.1f}" for m in MODELS for f, v in samples[m].items()),
            flush=True,
        )
    return samples


def ratios(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """SigLIP/CLIP per table row: the median, min and max over rounds of the round's ratio."""
    out = {}
    for _, clip_key, siglip_key in PAIRS:
        per_round = [
            s / c for c, s in zip(samples["clip"][clip_key], samples["siglip"][siglip_key], strict=True)
        ]
        out[f"siglip {siglip_key} / clip {clip_key}"] = {
            "ratio": statistics.median(per_round),
            "min": min(per_round),
            "max": max(per_round),
        }
    return out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.machine(),
        "cpu": cpu,
        "nproc": available_cpus(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
    }


def build(
    quick: bool, tmp: Path
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[Callable[[], Any], int]]]]:
    """Build, describe and export both models, then open their sessions (the torch models freed)."""
    clip_cfg, siglip_cfg = configs(quick)
    ids = text_inputs(clip_cfg, siglip_cfg)
    models: dict[str, Any] = {}
    calls = {}
    for name, make in (("clip", lambda: build_model(clip_cfg)), ("siglip", lambda: build_siglip(siglip_cfg))):
        torch.manual_seed(0)
        model = make().eval().requires_grad_(False)  # FlopCounterMode's hooks trip on grads
        size = model.config.vision.image_size
        models[name] = {
            "name": NAMES[name] + (" (tiny)" if quick else ""),
            "config": model.config.to_dict(),
            **model_facts(model, ids[name]),
        }
        models[name]["export_s"] = round(export(model, tmp / name), 1)
        print(
            f"{models[name]['name']}: exported in {models[name]['export_s']} s, {models[name]['parameters']}",
            flush=True,
        )
        del model
        gc.collect()
        calls[name] = figure_calls(tmp / name, size, ids[name])
    return models, calls


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 10 else f"{v:.2f}"


def table(result: dict[str, Any]) -> str:
    clip, siglip = result["models"]["clip"], result["models"]["siglip"]
    tokens = {
        "n": clip["text_tokens"]["text_dynamic"],
        "c": clip["text_tokens"]["text_full"],
        "s": siglip["text_tokens"]["text_full"],
    }
    lines = [
        f"| figure | {clip['name']} | {siglip['name']} | SigLIP/CLIP (per-round range) |",
        "|---|---|---|---|",
    ]
    for label, ck, sk in PAIRS:
        r = result["ratios"][f"siglip {sk} / clip {ck}"]
        c, s = clip["figures"][ck]["per_s"], siglip["figures"][sk]["per_s"]
        lines.append(
            f"| {label.format(**tokens)} | {fmt(c)} | {fmt(s)} | "
            f"**{r['ratio']:.2f}x** ({r['min']:.2f}-{r['max']:.2f}) |"
        )
    for tower in ("image", "text"):
        c, s = clip["parameters"][tower] / 1e6, siglip["parameters"][tower] / 1e6
        lines.append(f"| {tower} tower parameters, M | {c:.1f} | {s:.1f} | {s / c:.2f}x |")
    cg, sg = clip["gflops"], siglip["gflops"]
    lines.append(
        f"| GFLOPs per image | {cg['image']:.2f} | {sg['image']:.2f} | {sg['image'] / cg['image']:.2f}x |"
    )
    served = "as served (CLIP {n} tokens, SigLIP {s})".format(**tokens)
    for label, ck in ((served, "text_dynamic"), ("CLIP {c}, SigLIP {s}".format(**tokens), "text_full")):
        lines.append(
            f"| GFLOPs per prompt, {label} | {cg[ck]:.2f} | {sg['text_full']:.2f} | "
            f"{sg['text_full'] / cg[ck]:.2f}x |"
        )
    return "\n".join(lines)


def run(quick: bool, rounds: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="siglip-bench-") as tmp:
        models, calls = build(quick, Path(tmp))
        samples = run_rounds(calls, rounds, seconds)
        del calls
        gc.collect()
    for name in MODELS:
        models[name]["figures"] = {
            f: {"per_s": statistics.median(v), "rounds": v} for f, v in samples[name].items()
        }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "quick": quick,
        "rounds": rounds,
        "seconds": seconds,
        "models": models,
        "ratios": ratios(samples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median shown)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing window per figure per round")
    ap.add_argument("--quick", action="store_true", help="tiny configs, one short round (tests)")
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    args = ap.parse_args()
    rounds, seconds = (1, 0.1) if args.quick else (args.rounds, args.seconds)
    t = time.perf_counter()
    result = run(args.quick, rounds, seconds)
    result["elapsed_s"] = round(time.perf_counter() - t, 1)
    print(table(result))
    m = result["machine"]
    print(f"{m['nproc']} threads, {m['cpu']}, onnxruntime {m['onnxruntime']}; {result['elapsed_s']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
