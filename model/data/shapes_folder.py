"""Write rendered synthetic shapes as an image folder, `root/<colour>_<shape>/NNNN.png|jpg`.

It is the layout `zeroshot train --data folder` and `zeroshot eval --folder` read, so the worked
example in the README (fine-tune, evaluate, roll out) runs without any downloaded data:

    python -m model.data.shapes_folder data/shapes-train --per-class 40 --seed 1
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from model.data.synthetic import SyntheticShapes, all_classes


def write_image_folder(
    root: str | Path, per_class: int, classes: int = 36, seed: int = 31, image_size: int = 64
) -> Path:
    """`per_class` images of each of the first `classes` of the 36 colour-shape classes (held-out
    pairs included), PNG and JPEG in turn; file i shows class i % 36."""
    root = Path(root)
    shapes = SyntheticShapes(image_size=image_size, seed=seed, split="all", length=36 * per_class)
    for i in range(len(shapes)):  # the "all" split cycles through the 36 classes
        if i % 36 >= classes:
            continue
        s = shapes[i]
        folder = root / f"{s.colour}_{s.shape}"
        folder.mkdir(parents=True, exist_ok=True)
        fmt, ext = (("PNG", "png"), ("JPEG", "jpg"))[(i // 36) % 2]
        s.image.save(folder / f"{i:04d}.{ext}", format=fmt, quality=95)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.data.shapes_folder", description=__doc__.split("\n")[0])
    p.add_argument("root", help="folder to write (class sub-folders are created)")
    p.add_argument("--per-class", type=int, default=20, help="images per class (default 20)")
    p.add_argument("--classes", type=int, default=len(all_classes()), help="first N classes (default 36)")
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--image-size", type=int, default=64)
    a = p.parse_args(argv)
    root = write_image_folder(a.root, a.per_class, a.classes, a.seed, a.image_size)
    print(f"wrote {a.per_class} images x {min(a.classes, 36)} classes to {root}")


if __name__ == "__main__":
    main()
