"""Detection preprocessing in Paddle ops: to tensor, keep-ratio resize, horizontal flip, normalise, pad-collate.

Twin of torch_ref/data/transforms.py. One deliberate difference in means, not in result: the bilinear resize
is written out with Paddle ops instead of paddle.nn.functional.interpolate, because Paddle's CPU kernel
(phi/kernels/cpu/interpolate_kernel.cc) keeps the source/destination ratio and the interpolation weights in
float32 even for float64 tensors; that moves float64 pixels by up to ~1e-2 (of 255) against torch and a
float64 reference. The written-out version computes torch's half-pixel formula in the input dtype.
"""
import math

import numpy as np
import paddle

from twin_common.coco_files import rescale_size
from twin_common.sampling import flip_decisions

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 units
IMAGENET_STD = (58.395, 57.12, 57.375)
_DTYPES = {"float32": "float32", "float64": "float64"}


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
        out["image"] = paddle.to_tensor(image).astype(self.dtype)
        out["boxes"] = paddle.to_tensor(np.asarray(sample["boxes"], np.float64).reshape(-1, 4)).astype(self.dtype)
        out["labels"] = paddle.to_tensor(np.asarray(sample["labels"], np.int64).reshape(-1))
        return out


def _linear_taps(in_size, out_size, dtype):
    """Half-pixel (align_corners=False) linear resampling along one axis, as torch computes it:
    src = max(scale * (dst + 0.5) - 0.5, 0), scale = in/out, all in dtype; neighbours i0 = floor(src) and
    i1 = min(i0 + 1, in - 1) with weights 1 - l and l = src - i0."""
    scale = paddle.full([], in_size, dtype) / paddle.full([], out_size, dtype)
    src = paddle.clip(scale * (paddle.arange(out_size, dtype=dtype) + 0.5) - 0.5, min=0.0)
    i0 = paddle.clip(paddle.floor(src).astype("int64"), max=in_size - 1)
    i1 = paddle.clip(i0 + 1, max=in_size - 1)
    w1 = paddle.clip(src - i0.astype(dtype), min=0.0, max=1.0)
    return i0, i1, 1.0 - w1, w1


def resize_bilinear(image, new_h, new_w):
    """(C, H, W) -> (C, new_h, new_w). Interpolating every input row along W first and then along H is
    torch's accumulation order, (x00 w0 + x01 w1) h0 + (x10 w0 + x11 w1) h1, at a fraction of the gathers."""
    y0, y1, wy0, wy1 = _linear_taps(image.shape[-2], new_h, image.dtype)
    x0, x1, wx0, wx1 = _linear_taps(image.shape[-1], new_w, image.dtype)
    rows = paddle.index_select(image, x0, axis=2) * wx0 + paddle.index_select(image, x1, axis=2) * wx1
    return (paddle.index_select(rows, y0, axis=1) * wy0[:, None]
            + paddle.index_select(rows, y1, axis=1) * wy1[:, None])


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
        scale = paddle.to_tensor([w_scale, h_scale, w_scale, h_scale], dtype=boxes.dtype)
        limit = paddle.to_tensor([new_w, new_h, new_w, new_h], dtype=boxes.dtype)
        out["boxes"] = paddle.clip(paddle.minimum(boxes * scale, limit), min=0.0)
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
            x1, y1, x2, y2 = paddle.unbind(sample["boxes"], axis=1)
            out["image"] = paddle.flip(sample["image"], axis=[-1])
            out["boxes"] = paddle.stack([width - x2, y1, width - x1, y2], axis=1)
        return out


class Normalize:
    """(image - mean) / std per RGB channel, in the image dtype."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must have 3 entries, std > 0; got mean={mean!r}, std={std!r}")
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, sample):
        image = sample["image"]
        mean = paddle.to_tensor(self.mean, dtype=image.dtype)[:, None, None]
        std = paddle.to_tensor(self.std, dtype=image.dtype)[:, None, None]
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
    images = paddle.zeros([len(samples), 3, pad_h, pad_w], dtype=samples[0]["image"].dtype)
    for i, s in enumerate(samples):
        images[i, :, :s["image"].shape[-2], :s["image"].shape[-1]] = s["image"]
    metas = [{"image_id": s["image_id"], "orig_size": s["orig_size"], "img_size": s["img_size"],
              "scale_factor": s["scale_factor"], "flip": s["flip"]} for s in samples]
    return {"images": images, "boxes": [s["boxes"] for s in samples],
            "labels": [s["labels"] for s in samples], "metas": metas}
