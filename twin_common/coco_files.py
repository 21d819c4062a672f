"""Framework-free COCO reading shared by the torch and Paddle datasets: layout, annotations, decoding.

Both frameworks' CocoDetection wrap CocoRecords, so the bytes they start from are identical; all tensor
work happens afterwards in each framework's own transforms.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

COCO_FIELDS = {"images": list, "annotations": list, "categories": list}


def check_annotations(ann_file: str | os.PathLike) -> dict:
    """The annotation json, checked for what pycocotools asserts or indexes without a message: a JSON object
    with 'images', 'annotations' and 'categories' lists; ValueError naming the file and the field."""
    try:
        data = json.loads(Path(ann_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"ann_file {ann_file}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"ann_file {ann_file}: expected a COCO JSON object, found a {type(data).__name__}")
    for field, kind in COCO_FIELDS.items():
        if not isinstance(data.get(field), kind):
            found = "missing" if field not in data else f"a {type(data[field]).__name__}"
            raise ValueError(f"ann_file {ann_file}: '{field}' must be a list, it is {found}")
    return data


def load_coco(ann_file: str | os.PathLike, quiet: bool = True) -> Any:
    """pycocotools COCO for ann_file (checked first: check_annotations), without its progress printing
    unless quiet=False."""
    from pycocotools.coco import COCO
    if not Path(ann_file).is_file():
        raise ValueError(f"ann_file: no such annotation file: {ann_file}")
    data = check_annotations(ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        coco.createIndex()
    return coco


def resolve_layout(root: str | os.PathLike, ann_file: str | os.PathLike | None = None,
                   img_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(ann_file, img_dir) for a COCO-format directory.

    root may be: a set root with annotations/instances.json + images/ (the synthetic set) or with the
    official annotations/instances_<split>.json + <split>/ (one such json, else pass ann_file); an official
    image folder such as coco/val2017 (its json is ../annotations/instances_val2017.json); or a json file.
    """
    root = Path(root)
    if ann_file is None and root.is_file():
        ann_file, root = root, root.parent.parent
    elif ann_file is None and not (root / "annotations").is_dir():
        sibling = root.parent / "annotations" / f"instances_{root.name}.json"
        if sibling.is_file():
            ann_file, img_dir, root = sibling, img_dir or root, root.parent
    if ann_file is None:
        default = root / "annotations" / "instances.json"
        found = [default] if default.is_file() else sorted((root / "annotations").glob("instances_*.json"))
        if len(found) != 1:
            raise ValueError(f"root: expected one annotations/instances*.json under {root}, found "
                             f"{[p.name for p in found]}; give the json file or the image folder instead")
        ann_file = found[0]
    ann_file = Path(ann_file)
    if img_dir is None:
        split = ann_file.stem[len("instances_"):] if ann_file.stem.startswith("instances_") else ""
        candidates = ([root / split, root / "images" / split] if split else []) + [root / "images"]
        img_dir = next((c for c in candidates if c.is_dir()), None)
        if img_dir is None:
            raise ValueError(f"img_dir: none of {[str(c) for c in candidates]} exists; pass img_dir")
    return ann_file, Path(img_dir)


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 (H, W, 3) array, as PIL decodes it."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def rescale_size(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int, float, float]:
    """mmdetection's keep-ratio rescale: scale so the short side reaches short_side and the long side stays
    <= max_size; sizes rounded half up. Returns (new_h, new_w, w_scale, h_scale), the scales being the
    realised new/old ratios (what boxes are multiplied by)."""
    scale = min(short_side / min(height, width), max_size / max(height, width))
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    return new_h, new_w, new_w / width, new_h / height


class CocoRecords:
    """Annotations of a COCO-format set, one image at a time, as numpy.

    Labels are contiguous 0..C-1 in sorted category-id order. Like mmdetection, a box is skipped when it is
    crowd, has w < 1 or h < 1 or area <= 0, lies outside the image, or has an unknown category.
    Images are in ascending id order; filter_empty drops those left without boxes.
    """

    def __init__(self, root=None, ann_file=None, img_dir=None, filter_empty=False):
        if root is None and (ann_file is None or img_dir is None):
            raise ValueError("root: give root, or both ann_file and img_dir")
        if root is not None:
            ann_file, img_dir = resolve_layout(root, ann_file, img_dir)
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        self.coco = load_coco(self.ann_file)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat_id_to_label = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.label_to_cat_id = list(self.cat_ids)
        self.img_ids = sorted(self.coco.getImgIds())
        if filter_empty:
            self.img_ids = [i for i in self.img_ids if len(self.annotations(i)[1])]

    def __len__(self):
        return len(self.img_ids)

    def annotations(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes x1y1x2y2 float64 (N, 4), labels int64 (N,)) of one image."""
        info = self.coco.imgs[image_id]
        boxes, labels = [], []
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id])):
            x, y, w, h = (float(v) for v in ann["bbox"])
            inter_w = max(0.0, min(x + w, info["width"]) - max(x, 0.0))
            inter_h = max(0.0, min(y + h, info["height"]) - max(y, 0.0))
            if (ann.get("iscrowd", 0) or inter_w * inter_h == 0 or ann.get("area", w * h) <= 0
                    or w < 1 or h < 1 or ann["category_id"] not in self.cat_id_to_label):
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.cat_id_to_label[ann["category_id"]])
        return (np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, np.int64))

    def load(self, index: int) -> dict:
        """{'image': uint8 (H, W, 3), 'boxes', 'labels', 'image_id', 'orig_size': (H, W)} of image index."""
        image_id = self.img_ids[index]
        image = decode_image(self.img_dir / self.coco.imgs[image_id]["file_name"])
        boxes, labels = self.annotations(image_id)
        return {"image": image, "boxes": boxes, "labels": labels, "image_id": int(image_id),
                "orig_size": (int(image.shape[0]), int(image.shape[1]))}
