"""Detection preprocessing in torch ops: to tensor, keep-ratio resize, horizontal flip, normalise, pad-collate.

Each transform takes and returns a sample dict (image CHW, boxes x1y1x2y2 (N, 4), labels (N,), metadata).
The Paddle twin (paddle_impl/data/transforms.py) mirrors every class and function.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from twin_common.coco_files import rescale_size
from twin_common.sampling import flip_decisions

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 units
IMAGENET_STD = (58.395, 57.12, 57.375)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_dtype(dtype):
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[dtype]


class ToTensor:
    """uint8 HWC image -> CHW in dtype; boxes -> dtype; labels -> int64."""

    def __init__(self, dtype="float32"):
        self.dtype = check_dtype(dtype)

    def __call__(self, sample):
        out = dict(sample)
        image = np.ascontiguousarray(sample["image"].transpose(2, 0, 1))
        out["image"] = torch.from_numpy(image).to(self.dtype)
        out["boxes"] = torch.from_numpy(np.asarray(sample["boxes"], np.float64).reshape(-1, 4)).to(self.dtype)
        out["labels"] = torch.from_numpy(np.asarray(sample["labels"], np.int64).reshape(-1))
        return out


def resize_bilinear(image, new_h, new_w):
    """(C, H, W) -> (C, new_h, new_w), half-pixel bilinear (align_corners=False, no antialias)."""
    return F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]


class Resize:
    """Keep-ratio bilinear resize (align_corners=False, no antialias); boxes scaled by the realised
    factors and clipped to the new image. Records img_size (H, W) and scale_factor (w_scale, h_scale)."""

    def __init__(self, short_side=800, max_size=1333):
        for name, v in (("short_side", short_side), ("max_size", max_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.short_side, self.max_size = short_side, max_size

    def __call__(self, sample):
        image, boxes = sample["image"], sample["boxes"]
        new_h, new_w, w_scale, h_scale = rescale_size(image.shape[-2], image.shape[-1],
                                                      self.short_side, self.max_size)
        out = dict(sample)
        out["image"] = resize_bilinear(image, new_h, new_w)
        scale = boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
        limit = boxes.new_tensor([new_w, new_h, new_w, new_h])
        out["boxes"] = torch.minimum(boxes * scale, limit).clamp(min=0)
        out["img_size"] = (new_h, new_w)
        out["scale_factor"] = (w_scale, h_scale)
        return out


class RandomHorizontalFlip:
    """Flip with probability prob; decisions come from the caller's numpy Generator (decide), so two
    frameworks fed the same Generator flip the same images."""

    def __init__(self, prob=0.5):
        if not isinstance(prob, (int, float)) or isinstance(prob, bool) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob!r}")
        self.prob = float(prob)

    def decide(self, rng, n):
        """n flip decisions; always draws n numbers, so the stream does not depend on prob."""
        return flip_decisions(rng, n, self.prob)

    def __call__(self, sample, flip):
        out = dict(sample)
        out["flip"] = bool(flip)
        if flip:
            width = sample["image"].shape[-1]
            x1, y1, x2, y2 = sample["boxes"].unbind(dim=1)
            out["image"] = torch.flip(sample["image"], dims=[-1])
            out["boxes"] = torch.stack([width - x2, y1, width - x1, y2], dim=1)
        return out


class Normalize:
    """(image - mean) / std per RGB channel, in the image dtype."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must have 3 entries, std > 0; got mean={mean!r}, std={std!r}")
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, sample):
        image = sample["image"]
        mean = image.new_tensor(self.mean)[:, None, None]
        std = image.new_tensor(self.std)[:, None, None]
        out = dict(sample)
        out["image"] = (image - mean) / std
        return out


def collate(samples, stride=32):
    """Pad every image bottom/right with zeros to the batch max size rounded up to a multiple of stride.

    Returns {'images': (B, 3, H, W), 'boxes': [(N_i, 4)], 'labels': [(N_i,)], 'metas': [dict]}, each meta
    holding image_id, orig_size, img_size, scale_factor (w, h) and flip.
    """
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if not samples:
        raise ValueError("samples must not be empty")
    pad_h = math.ceil(max(s["image"].shape[-2] for s in samples) / stride) * stride
    pad_w = math.ceil(max(s["image"].shape[-1] for s in samples) / stride) * stride
    images = samples[0]["image"].new_zeros((len(samples), 3, pad_h, pad_w))
    for i, s in enumerate(samples):
        images[i, :, :s["image"].shape[-2], :s["image"].shape[-1]] = s["image"]
    metas = [{"image_id": s["image_id"], "orig_size": s["orig_size"], "img_size": s["img_size"],
              "scale_factor": s["scale_factor"], "flip": s["flip"]} for s in samples]
    return {"images": images, "boxes": [s["boxes"] for s in samples],
            "labels": [s["labels"] for s in samples], "metas": metas}
