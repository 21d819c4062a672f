"""mmdetection's SingleRoIExtractor (Paddle twin: torch_ref/roi_heads/roi_extractor.py): each RoI is pooled by
RoIAlign (aligned=True, adaptive sampling, 'avg') from one FPN level chosen by its scale
(../shared/specs/libra_rcnn.md B.5.5).

paddle.vision.ops.distribute_fpn_proposals is not used: it puts the eps elsewhere (1e-8 on s/224, B.11).
"""
import paddle
from paddle import nn
from paddle.vision.ops import roi_align

# mmdet's map_roi_levels adds this inside the log2, so a scale of exactly 56 * 2^k (or a hair below) maps to level k
LEVEL_EPS = 1e-6


def map_roi_levels(rois, num_levels, finest_scale=56):
    """Level per RoI [K] int64: floor(log2(sqrt(w h) / finest_scale + 1e-6)), clamped to [0, num_levels - 1]."""
    scale = paddle.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = paddle.floor(paddle.log2(scale / finest_scale + LEVEL_EPS))
    return levels.clip(min=0, max=num_levels - 1).astype("int64")


def _kernel_sizes(boxes, spatial_scale):
    """[K, 2] RoI width and height in feature pixels, as the aligned kernel computes them."""
    return (boxes[:, 2:] * spatial_scale - 0.5) - (boxes[:, :2] * spatial_scale - 0.5)


def _axis_samples(start, size, out_size, sampling_ratio, length):
    """One axis of torchvision's bilinear sampling: [D, out, G, 2] pixel indices and weights (low and high
    neighbour of each of the G samples per bin; 0 for padding samples and samples outside [-1, length])."""
    grid = paddle.full_like(size, sampling_ratio) if sampling_ratio > 0 else paddle.ceil(size / out_size)
    bin_size = (size / out_size)[:, None, None]
    it = paddle.arange(max(int(grid.max()), 1), dtype=size.dtype)[None, None, :]
    pos = (start[:, None, None] + paddle.arange(out_size, dtype=size.dtype)[None, :, None] * bin_size
           + (it + 0.5) * bin_size / grid.clip(min=1)[:, None, None])
    used = ((it < grid[:, None, None]) & (pos >= -1.0) & (pos <= length)).astype(size.dtype)
    y = pos.clip(min=0)
    low = paddle.floor(y)
    at_end = low >= length - 1
    low = paddle.where(at_end, paddle.full_like(low, length - 1), low)
    high = paddle.where(at_end, low, low + 1)
    frac = paddle.where(at_end, paddle.zeros_like(y), y - low)
    return (paddle.stack([low, high], -1).astype("int64"), paddle.stack([(1 - frac) * used, frac * used], -1),
            grid.clip(min=1))


def _bilinear_roi_align(feat, boxes, img, out_size, spatial_scale, sampling_ratio):
    """RoIAlign (aligned) from gathers and an einsum, so that autograd gives the exact gradient."""
    b, c, h, w = feat.shape
    start = boxes[:, :2] * spatial_scale - 0.5
    size = _kernel_sizes(boxes, spatial_scale)
    ix, wx, gx = _axis_samples(start[:, 0], size[:, 0], out_size, sampling_ratio, w)
    iy, wy, gy = _axis_samples(start[:, 1], size[:, 1], out_size, sampling_ratio, h)
    d = boxes.shape[0]
    rows = (img[:, None] * h + iy.reshape([d, -1]))[:, :, None] * w + ix.reshape([d, 1, -1])
    vals = paddle.gather(feat.transpose([0, 2, 3, 1]).reshape([b * h * w, c]), rows.reshape([-1]))
    vals = vals.reshape([d, out_size, iy.shape[2] * 2, out_size, ix.shape[2] * 2, c])
    out = paddle.einsum("dpi,dpiqjc,dqj->dcpq", wy.reshape([d, out_size, -1]), vals, wx.reshape([d, out_size, -1]))
    return out / (gx * gy)[:, None, None, None]


def roi_align_guarded(feat, boxes, boxes_num, img, out_size, spatial_scale, sampling_ratio):
    """paddle.vision.ops.roi_align (aligned=True) with torchvision's values and gradients; img: [K] image index.

    Paddle 3.3.1 defects:
    - for a zero-width or zero-height box the kernel divides the empty sum by a sample count of 0 and returns
      NaN (torchvision and mmcv divide by max(count, 1) and give 0). A GT box added as a proposal can be
      degenerate (B.11). Such a box has no samples, hence no feature gradient.
    - the CPU backward kernel clamps the RoI width and height to >= 1 feature pixel even with aligned=True (the
      forward and the GPU backward do not), so the gradient of a RoI narrower than its level's stride is not
      that of the forward. For those RoIs the gradient is taken from an exact gather form; the value stays the
      kernel's (x + (e - e) with e detached in the second term).
    tests/test_libra_bbox_head.py checks that both defects are still there."""
    out = roi_align(feat, boxes, boxes_num, out_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                    aligned=True)
    sizes = _kernel_sizes(boxes, spatial_scale)
    empty = (sizes <= 0).any(axis=1)
    # a select, not a product with a 0/1 mask: NaN * 0 stays NaN
    out = paddle.where(empty[:, None, None, None], paddle.zeros_like(out), out)
    if feat.place.is_cpu_place() and not feat.stop_gradient:
        narrow_w = (sizes[:, 0] < 1) & ~empty
        # in two groups, each with one sample per bin (adaptive) along its narrow axis, so that padding the other
        # axis's samples to the group's most stays small
        for group in (narrow_w, (sizes[:, 1] < 1) & ~empty & ~narrow_w):
            narrow = paddle.nonzero(group).reshape([-1])
            if narrow.shape[0] == 0:
                continue
            exact = _bilinear_roi_align(feat, paddle.gather(boxes, narrow), paddle.gather(img, narrow), out_size,
                                        spatial_scale, sampling_ratio)
            fixed = paddle.gather(out, narrow).detach() + (exact - exact.detach())
            out = paddle.scatter(out, narrow, fixed, overwrite=True)
    return out


class SingleRoIExtractor(nn.Layer):
    def __init__(self, out_size=7, sampling_ratio=0, featmap_strides=(4, 8, 16, 32), finest_scale=56):
        super().__init__()
        self.out_size, self.sampling_ratio = out_size, sampling_ratio
        self.featmap_strides, self.finest_scale = tuple(featmap_strides), finest_scale

    def forward(self, feats, rois):
        """feats: the first len(featmap_strides) levels [B, C, H_l, W_l]; rois [K, 5] (image index, x1, y1, x2, y2).
        Returns [K, C, out_size, out_size] in the RoI order."""
        levels = map_roi_levels(rois, len(self.featmap_strides), self.finest_scale)
        img = rois[:, 0].astype("int64")
        outs, order = [], []
        for lvl, (feat, stride) in enumerate(zip(feats, self.featmap_strides)):   # one RoIAlign call per level
            inds = paddle.nonzero(levels == lvl).reshape([-1])
            if inds.shape[0] == 0:
                continue
            # Paddle's roi_align takes boxes grouped by image, in image order, with a count per image
            inds = inds[paddle.argsort(img[inds], stable=True)]
            boxes_num = paddle.bincount(img[inds], minlength=feat.shape[0]).astype("int32")
            outs.append(roi_align_guarded(feat, paddle.gather(rois, inds)[:, 1:], boxes_num, img[inds],
                                          self.out_size, 1.0 / stride, self.sampling_ratio))
            order.append(inds)
        if not outs:
            return paddle.zeros([0, feats[0].shape[1], self.out_size, self.out_size], dtype=feats[0].dtype)
        # the levels' outputs are concatenated level by level; the inverse permutation puts them back in RoI order
        return paddle.gather(paddle.concat(outs), paddle.argsort(paddle.concat(order)))
