"""Test oracle for twin_common/samplers.py: mmdetection 3.3's samplers written as the spec (libra_rcnn.md B.5.2-B.5.4)
reads, with Python sets and loops over gts and bins, drawing from the Generator in twin_common.samplers' documented
order (galleries sorted ascending; a draw only when a choice is needed). Not shipped code: slow on purpose."""
import numpy as np


def _choice(gallery, k, rng):
    gallery = np.array(sorted(gallery), np.int64)
    if len(gallery) > k:
        return [int(x) for x in gallery[rng.permutation(len(gallery))[:k]]]
    return [int(x) for x in gallery]


def _per_group(gallery, group_of, quota, rng):
    """gallery sorted; group_of(x) -> group id or None. One permutation if some group exceeds quota; each group
    then takes its first quota members in permuted order (else all)."""
    groups = {}
    for x in gallery:
        if group_of(x) is not None:
            groups.setdefault(group_of(x), []).append(x)
    if all(len(m) <= quota for m in groups.values()):
        return [x for g in sorted(groups) for x in groups[g]]
    order = [int(gallery[i]) for i in rng.permutation(len(gallery))]
    out = []
    for g in sorted(groups):
        out += [x for x in order if group_of(x) == g][:quota]
    return out


def random_sampler(gt_inds, num, pos_fraction, neg_pos_ub, rng):
    pos = _choice([i for i, g in enumerate(gt_inds) if g > 0], int(num * pos_fraction), rng)
    num_neg = num - len(set(pos))
    if neg_pos_ub >= 0:
        num_neg = min(num_neg, int(neg_pos_ub * max(1, len(set(pos)))))
    neg = _choice([i for i, g in enumerate(gt_inds) if g == 0], num_neg, rng)
    return sorted(set(pos)), sorted(set(neg))


def instance_balanced_pos(gt_inds, num_expected, rng):
    pos = [i for i, g in enumerate(gt_inds) if g > 0]
    if len(pos) <= num_expected:
        return pos
    gts = sorted({int(gt_inds[i]) for i in pos})
    num_per_gt = int(round(num_expected / float(len(gts))) + 1)
    sampled = _per_group(pos, lambda i: int(gt_inds[i]), num_per_gt, rng)
    if len(sampled) < num_expected:
        extra_pool = set(pos)  # mmdet's set(pos) - set(sampled) of 0-d tensors: removes nothing
        sampled = sampled + _choice(extra_pool, num_expected - len(sampled), rng)
    elif len(sampled) > num_expected:
        sampled = _choice(sampled, num_expected, rng)
    return sorted(set(sampled))


class IoUBalancedNeg:
    """Keeps floor_thr across calls, like the mmdet instance."""

    def __init__(self, floor_thr=-1, floor_fraction=0, num_bins=3):
        self.floor_thr, self.floor_fraction, self.num_bins = floor_thr, floor_fraction, num_bins

    def _via_interval(self, mo, full_set, num_expected, rng):
        max_iou = mo.max()
        width = (max_iou - self.floor_thr) / self.num_bins
        per_bin = int(num_expected / self.num_bins)
        bins = {}
        for i in range(self.num_bins):
            start, end = self.floor_thr + i * width, self.floor_thr + (i + 1) * width
            for j in full_set:
                if start <= mo[j] < end:
                    bins[j] = i
        sampled = _per_group(sorted(full_set), bins.get, per_bin, rng)
        if len(sampled) < num_expected:
            sampled += _choice(full_set - set(sampled), num_expected - len(sampled), rng)
        return sampled

    def sample(self, gt_inds, mo, num_expected, rng):
        neg = [i for i, g in enumerate(gt_inds) if g == 0]
        if len(neg) <= num_expected:
            return neg
        if self.floor_thr > 0:
            floor_set = {i for i in range(len(mo)) if 0 <= mo[i] < self.floor_thr}
            iou_set = {i for i in range(len(mo)) if mo[i] >= self.floor_thr}
        elif self.floor_thr == 0:
            floor_set = {i for i in range(len(mo)) if mo[i] == 0}
            iou_set = {i for i in range(len(mo)) if mo[i] > 0}
        else:
            floor_set = set()
            iou_set = {i for i in range(len(mo)) if mo[i] > self.floor_thr}
            self.floor_thr = 0
        floor_negs, iou_negs = floor_set & set(neg), iou_set & set(neg)
        num_iou = int(num_expected * (1 - self.floor_fraction))
        if len(iou_negs) > num_iou:
            if self.num_bins >= 2:
                iou_part = self._via_interval(mo, iou_negs, num_iou, rng)
            else:
                iou_part = _choice(iou_negs, num_iou, rng)
        else:
            iou_part = sorted(iou_negs)
        sampled = _choice(floor_negs, num_expected - len(iou_part), rng) + iou_part
        if len(sampled) < num_expected:
            sampled += _choice(set(neg) - set(sampled), num_expected - len(sampled), rng)
        return sorted(set(sampled))


def combined_sampler(gt_inds, mo, neg_sampler, rng, num=512, pos_fraction=0.25):
    """InstanceBalancedPos + the given IoUBalancedNeg instance, in base_sampler's frame (neg_pos_ub -1)."""
    pos = instance_balanced_pos(gt_inds, int(num * pos_fraction), rng)
    neg = neg_sampler.sample(gt_inds, mo, num - len(pos), rng)
    return pos, neg
