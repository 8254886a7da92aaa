"""open_clip's side of tests/model/test_import.py; runs in .venv-openclip (`make setup` creates it).

open_clip needs torchvision, which cannot live beside the main venv's torch build, so this script runs
in its own interpreter and talks to the test through files in WORKDIR:

reads   inputs.npz     pixels [N,3,224,224] float32 (our preprocessing), ids [M,77] int64 (our
                       tokenizer), texts (the prompts), photo_<i> uint8 [H,W,3] (the photos unprocessed)
writes  open_clip.pt   random ViT-B-32 (nn.GELU) as open_clip's DDP training saves it:
                       {"epoch", "name", "state_dict": {"module.<name>": tensor}, "optimizer"}
        openai.pt      random ViT-B-32-quickgelu as an OpenAI-style TorchScript archive: fp16 weights
                       plus the input_resolution/context_length/vocab_size entries OpenAI's files carry
        features.npz   open_clip's normalized features of both models (fp16-rounded weights for
                       openai.pt, which is what the file holds), open_clip's own token ids for the
                       texts and its own preprocessing of the photos (cross-checks)

Weights are random (fixed seeds): nothing is downloaded.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # open_clip must never try the hub here

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn


def features(model: nn.Module, pixels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(pixels), normalize=True)
        txt = model.encode_text(torch.from_numpy(ids), normalize=True)
    return img.numpy(), txt.numpy()


def random_model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)  # random init: no weights are fetched
    return model.eval()


def save_openclip_checkpoint(model: nn.Module, path: Path) -> None:
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}  # DDP wraps the model in .module
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.save({"epoch": 3, "name": "ViT-B-32-random", "state_dict": sd, "optimizer": opt.state_dict()}, path)


def save_openai_archive(model: nn.Module, path: Path) -> None:
    """A TorchScript archive with OpenAI's names, fp16 weights and OpenAI's extra integer entries."""
    scripted = copy.deepcopy(model).half()
    for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(scripted, name):  # open_clip keeps some as plain ints, unused by forward
            delattr(scripted, name)
        scripted.register_buffer(name, torch.tensor(value))
    torch.jit.save(torch.jit.script(scripted), str(path))


def main(workdir: Path) -> None:
    inputs = np.load(workdir / "inputs.npz")
    pixels, ids, texts = inputs["pixels"], inputs["ids"], [str(t) for t in inputs["texts"]]
    out: dict[str, np.ndarray] = {}

    gelu = random_model("ViT-B-32", seed=0)
    assert isinstance(gelu.transformer.resblocks[0].mlp.gelu, nn.GELU)  # open_clip's default
    save_openclip_checkpoint(gelu, workdir / "open_clip.pt")
    out["open_clip_image"], out["open_clip_text"] = features(gelu, pixels, ids)

    quick = random_model("ViT-B-32-quickgelu", seed=1)
    assert type(quick.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    quick = quick.half().float()  # the reference sees exactly the weights the fp16 archive holds
    save_openai_archive(quick, workdir / "openai.pt")
    out["openai_image"], out["openai_text"] = features(quick, pixels, ids)

    out["open_clip_ids"] = open_clip.get_tokenizer("ViT-B-32")(texts).numpy()
    preprocess = open_clip.image_transform(224, is_train=False)
    photos = [inputs[k] for k in sorted(inputs.files) if k.startswith("photo_")]
    out["open_clip_pixels"] = np.stack([preprocess(Image.fromarray(p)).numpy() for p in photos])
    out["versions"] = np.array([torch.__version__, open_clip.__version__])
    np.savez(workdir / "features.npz", **out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
