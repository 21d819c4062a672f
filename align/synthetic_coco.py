"""A small synthetic COCO-format detection set, so every data/metric check runs offline.

    python align/synthetic_coco.py --out data/synthetic_coco --num-images 24 --seed 0 [--format png|jpg]

Writes ROOT/images/NNNNNN.png and ROOT/annotations/instances.json. Each image has a noisy background and
1-6 non-overlapping filled shapes of four categories with COCO-like non-contiguous ids (1 rectangle,
3 ellipse, 7 triangle, 12 cross). Objects are drawn in all three COCO size ranges (area < 32^2, < 96^2,
larger), so COCOeval's size breakdown is non-trivial. Boxes and areas come from the drawn pixels (no
occlusion), so the annotations are exact. Everything is a function of the seed; every file is written
atomically and the json last, so a present json means a complete set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin_common.atomic import atomic_path, write_json  # noqa: E402

CATEGORIES = [  # (id, name, base colour RGB)
    (1, "rectangle", (220, 40, 40)),
    (3, "ellipse", (40, 190, 60)),
    (7, "triangle", (40, 80, 230)),
    (12, "cross", (230, 200, 30)),
]
# Bounding-box area ranges drawn per size class; the drawn (mask) area decides the COCO class in the end.
_BOX_AREA_RANGES = {"small": (80.0, 900.0), "medium": (1600.0, 7000.0), "large": (13000.0, 26000.0)}
_MARGIN = 2  # free pixels kept between objects, so boxes never touch


def _shape_mask(kind, width, height, box):
    """uint8 mask (H, W) of one filled shape inside the integer box (x0, y0, x1, y1), inclusive corners."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    if kind == "rectangle":
        draw.rectangle(box, fill=255)
    elif kind == "ellipse":
        draw.ellipse(box, fill=255)
    elif kind == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2.0, y0)], fill=255)
    else:  # cross: two bars a third of the box thick
        tw, th = max((x1 - x0) // 3, 1), max((y1 - y0) // 3, 1)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((x0, cy - th // 2, x1, cy - th // 2 + th), fill=255)
        draw.rectangle((cx - tw // 2, y0, cx - tw // 2 + tw, y1), fill=255)
    return np.asarray(mask) > 0


def _sample_box(rng, width, height, size_class):
    lo, hi = _BOX_AREA_RANGES[size_class]
    area = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # w / h
    w = int(round(min(max(np.sqrt(area * aspect), 4), width - 2 * _MARGIN)))
    h = int(round(min(max(np.sqrt(area / aspect), 4), height - 2 * _MARGIN)))
    x0 = int(rng.integers(_MARGIN, width - w - _MARGIN + 1))
    y0 = int(rng.integers(_MARGIN, height - h - _MARGIN + 1))
    return (x0, y0, x0 + w - 1, y0 + h - 1)


def _free(box, taken):
    x0, y0, x1, y1 = box
    return all(x0 > b[2] + _MARGIN or x1 < b[0] - _MARGIN or y0 > b[3] + _MARGIN or y1 < b[1] - _MARGIN
               for b in taken)


def _render_image(rng, image_id):
    """One image and its annotations (without ids), all drawn from rng."""
    width, height = (int(v) for v in rng.integers(160, 321, size=2))
    base = rng.integers(60, 200, size=3)
    noise = rng.normal(0.0, 12.0, size=(height, width, 3))
    pixels = np.clip(base[None, None, :] + noise, 0, 255)
    anns, taken = [], []
    for _ in range(int(rng.integers(1, 7))):
        cat = int(rng.integers(len(CATEGORIES)))
        size_class = ("small", "medium", "large")[int(rng.integers(3))]
        for _attempt in range(30):  # rejection sampling keeps objects apart (exact boxes, no occlusion)
            box = _sample_box(rng, width, height, size_class)
            if _free(box, taken):
                break
        else:
            continue
        cat_id, kind, colour = CATEGORIES[cat]
        mask = _shape_mask(kind, width, height, box)
        ys, xs = np.nonzero(mask)
        if xs.size == 0:
            continue
        taken.append(box)
        colour = np.clip(np.asarray(colour) + rng.integers(-25, 26, size=3), 0, 255)
        pixels[mask] = colour
        x, y = int(xs.min()), int(ys.min())
        anns.append({"image_id": image_id, "category_id": cat_id,
                     "bbox": [float(x), float(y), float(xs.max() + 1 - x), float(ys.max() + 1 - y)],
                     "area": float(xs.size), "iscrowd": 0})
    return Image.fromarray(pixels.astype(np.uint8), "RGB"), width, height, anns


def generate_synthetic_coco(root: str | os.PathLike, num_images: int = 24, seed: int = 0,
                            image_format: str = "png") -> str:
    """Write the dataset under root; returns root (what CocoDetection takes)."""
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images!r}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, int(num_images) + 1):
        image, width, height, anns = _render_image(rng, image_id)
        file_name = f"{image_id:06d}.{image_format}"
        with atomic_path(root / "images" / file_name, suffix="." + image_format) as tmp:
            image.save(tmp, format="PNG" if image_format == "png" else "JPEG", quality=95)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for ann in anns:
            ann["id"] = len(annotations) + 1  # COCOeval treats annotation id 0 as "unmatched"
            annotations.append(ann)
    ann_file = root / "annotations" / "instances.json"
    write_json(ann_file, {
        "info": _info(num_images, seed, image_format),
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for cid, name, _ in CATEGORIES],
    })
    return str(root)


def _info(num_images, seed, image_format):
    return {"description": "synthetic shapes (align/synthetic_coco.py)", "num_images": int(num_images),
            "seed": int(seed), "format": image_format}


def ensure_synthetic_coco(root: str | os.PathLike, num_images: int = 24, seed: int = 0,
                          image_format: str = "png") -> str:
    """Generate the set under root unless a complete one made with the same arguments is there; returns
    root."""
    ann_file = Path(root) / "annotations" / "instances.json"
    if ann_file.is_file():
        try:
            with open(ann_file, encoding="utf-8") as f:
                info = json.load(f).get("info", {})
        except (OSError, ValueError):
            info = {}
        if info == _info(num_images, seed, image_format):
            return str(root)
    return generate_synthetic_coco(root, num_images, seed, image_format)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("data", "synthetic_coco"))
    p.add_argument("--num-images", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="png", choices=["png", "jpg"])
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error("--num-images must be >= 1")
    root = generate_synthetic_coco(args.out, args.num_images, args.seed, args.format)
    print(f"wrote {args.num_images} images and annotations/instances.json under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
