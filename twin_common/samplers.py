"""mmdetection 3.3's RoI/anchor samplers (Random, InstanceBalancedPos, IoUBalancedNeg, Combined), framework-free, so
both twins draw the same sets from one seeded numpy Generator (spec libra_rcnn.md B.5.2-B.5.4, B.9).

Arrays: gt_inds (N,) int, per prior: 0 negative, -1 ignored, k > 0 assigned to gt k - 1; max_overlaps (N,) float,
each prior's best IoU. Outputs are int64 prior indices, sorted ascending and unique. No loops over elements.

Random draws (the project's definition; mmdet's torch.randperm stream is not reproducible anyway). Every gallery is
sorted ascending, and a draw happens only when a choice is needed:
- random_choice(g, k), when len(g) > k: g[rng.permutation(len(g))[:k]];
- choose_per_group(g, group, q), when some group has more than q members: perm = rng.permutation(len(g)), and each
  group keeps its first q members in the order g[perm] (with one group this is random_choice exactly).
Order within one `sample` call: the positive part's draws, then the negative part's:
- RandomSampler: random_choice(positives), then random_choice(negatives);
- InstanceBalancedPos: per-gt choose_per_group(positives, gt id, num_per_gt), then extras random_choice(positives)
  or trim random_choice(sampled);
- IoUBalancedNeg: per-bin choose_per_group(IoU negatives, bin, q) then its fill random_choice(remaining IoU
  negatives) (num_bins 1: one random_choice(IoU negatives)), then floor random_choice(floor negatives), then final
  fill random_choice(remaining negatives).
"""
import numpy as np


def random_choice(gallery, k, rng):
    """k members of a sorted gallery uniformly without replacement (one draw), or the whole gallery if it is small."""
    return gallery if len(gallery) <= k else gallery[rng.permutation(len(gallery))[:k]]


def choose_per_group(gallery, group, quota, rng):
    """Up to `quota` members of each group (ids >= 0; < 0: never chosen), uniformly without replacement within
    each group; returns the chosen, sorted. One draw, and only when some group has more than quota members."""
    ok = group >= 0
    if not (np.bincount(group[ok]) > quota).any():
        return gallery[ok]
    perm = rng.permutation(len(gallery))
    g = group[perm]
    order = np.argsort(g, kind="stable")        # by group, permutation order inside each group
    gs = g[order]
    rank = np.arange(len(gs)) - np.searchsorted(gs, gs, side="left")
    return np.sort(gallery[perm][order][(gs >= 0) & (rank < quota)])


def add_gt_as_proposals(gt_inds, max_overlaps, labels, gt_labels):
    """B.5.2: the G gts prepended as priors: gt_inds 1..G, max_overlaps 1.0, labels = gt_labels (labels may be
    None: then None is returned for them)."""
    num_gts = len(gt_labels)
    gt_inds = np.concatenate([np.arange(1, num_gts + 1, dtype=np.int64), np.asarray(gt_inds, np.int64)])
    max_overlaps = np.asarray(max_overlaps)
    max_overlaps = np.concatenate([np.ones(num_gts, max_overlaps.dtype), max_overlaps])
    if labels is not None:
        labels = np.concatenate([np.asarray(gt_labels, np.int64), np.asarray(labels, np.int64)])
    return gt_inds, max_overlaps, labels


def _check(gt_inds, max_overlaps, rng):
    gt_inds, max_overlaps = np.asarray(gt_inds), np.asarray(max_overlaps)
    if gt_inds.ndim != 1 or not np.issubdtype(gt_inds.dtype, np.integer):
        raise ValueError(f"gt_inds must be a 1-D integer array, got {gt_inds.dtype} {gt_inds.shape}")
    if max_overlaps.shape != gt_inds.shape or not np.issubdtype(max_overlaps.dtype, np.floating):
        raise ValueError(f"max_overlaps must be a float array of shape {gt_inds.shape}, got "
                         f"{max_overlaps.dtype} {max_overlaps.shape}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return gt_inds.astype(np.int64), max_overlaps


class RandomSampler:
    """mmdet RandomSampler; also the frame (base_sampler.sample) that CombinedSampler reuses."""

    def __init__(self, num, pos_fraction, neg_pos_ub=-1):
        if int(num) != num or num < 0 or not 0 <= pos_fraction <= 1:
            raise ValueError(f"need num >= 0 and pos_fraction in [0, 1], got {num!r}, {pos_fraction!r}")
        self.num, self.pos_fraction, self.neg_pos_ub = int(num), pos_fraction, neg_pos_ub

    def sample(self, gt_inds, max_overlaps, rng):
        """(pos_inds, neg_inds), both int64 sorted unique; draws in the module docstring's order."""
        gt_inds, max_overlaps = _check(gt_inds, max_overlaps, rng)
        pos = np.unique(self.sample_pos(gt_inds, max_overlaps, int(self.num * self.pos_fraction), rng))
        num_neg = self.num - len(pos)
        if self.neg_pos_ub >= 0:
            num_neg = min(num_neg, int(self.neg_pos_ub * max(1, len(pos))))
        neg = np.unique(self.sample_neg(gt_inds, max_overlaps, num_neg, rng))
        return pos.astype(np.int64), neg.astype(np.int64)

    def sample_pos(self, gt_inds, max_overlaps, num_expected, rng):
        return random_choice(np.flatnonzero(gt_inds > 0), num_expected, rng)

    def sample_neg(self, gt_inds, max_overlaps, num_expected, rng):
        return random_choice(np.flatnonzero(gt_inds == 0), num_expected, rng)


class InstanceBalancedPosSampler:
    """B.5.3: up to num_per_gt positives per gt, then extras drawn from ALL positives (mmdet's quirk: its pool
    'positives minus sampled' removes nothing), de-duplicated, so fewer than num_expected may come out."""

    def sample_pos(self, gt_inds, max_overlaps, num_expected, rng):
        pos = np.flatnonzero(gt_inds > 0)
        if len(pos) <= num_expected:
            return pos
        num_per_gt = int(round(num_expected / float(len(np.unique(gt_inds[pos])))) + 1)
        sampled = choose_per_group(pos, gt_inds[pos], num_per_gt, rng)
        if len(sampled) < num_expected:
            extra = random_choice(self._extra_pool(pos, sampled), num_expected - len(sampled), rng)
            return np.unique(np.concatenate([sampled, extra]))
        return random_choice(sampled, num_expected, rng)

    def _extra_pool(self, pos, sampled):
        return pos  # the quirk, on purpose (not np.setdiff1d(pos, sampled))


class IoUBalancedNegSampler:
    """B.5.4, with mmdet's floor_thr quirk: while floor_thr == -1 every negative is binned ([0, w) holds the zero-IoU
    ones) and the first call that samples (more negatives than expected) sets self.floor_thr = 0 for good; from then
    on zero-IoU negatives are the floor, used only when the IoU > 0 ones run short. State is per instance."""

    def __init__(self, floor_thr=-1, floor_fraction=0, num_bins=3):
        if not (floor_thr >= 0 or floor_thr == -1) or not 0 <= floor_fraction <= 1 or int(num_bins) != num_bins \
                or num_bins < 1:
            raise ValueError(f"need floor_thr >= 0 or -1, floor_fraction in [0, 1], num_bins >= 1, got "
                             f"{floor_thr!r}, {floor_fraction!r}, {num_bins!r}")
        self.floor_thr, self.floor_fraction, self.num_bins = floor_thr, floor_fraction, int(num_bins)

    def interval_bins(self, max_overlaps, members):
        """Bin id of each member ([floor + k w, floor + (k+1) w), w = (max over ALL priors - floor) / num_bins),
        -1 outside every bin; edges computed as mmdet's floor + k * w in max_overlaps' dtype. floor = floor_thr,
        0 while it is -1 (the sampling call sets it to 0 before binning)."""
        floor = max(self.floor_thr, 0)
        width = (max_overlaps.max() - floor) / self.num_bins
        edges = np.arange(self.num_bins + 1, dtype=max_overlaps.dtype) * width + max_overlaps.dtype.type(floor)
        k = np.searchsorted(edges, max_overlaps[members], side="right") - 1
        return np.where(k < self.num_bins, k, -1)

    def _via_interval(self, max_overlaps, iou_negs, num_expected, rng):
        sampled = choose_per_group(iou_negs, self.interval_bins(max_overlaps, iou_negs),
                                   int(num_expected / self.num_bins), rng)
        if len(sampled) < num_expected:
            rest = np.setdiff1d(iou_negs, sampled)
            sampled = np.concatenate([sampled, random_choice(rest, num_expected - len(sampled), rng)])
        return sampled

    def sample_neg(self, gt_inds, max_overlaps, num_expected, rng):
        neg = np.flatnonzero(gt_inds == 0)
        if len(neg) <= num_expected:
            return neg
        mo = max_overlaps[neg]
        if self.floor_thr > 0:
            floor, iou = (mo >= 0) & (mo < self.floor_thr), mo >= self.floor_thr
        elif self.floor_thr == 0:
            floor, iou = mo == 0, mo > 0
        else:
            floor, iou = np.zeros(len(neg), bool), mo > self.floor_thr
            self.floor_thr = 0  # the quirk: permanent, and before binning
        floor_negs, iou_negs = neg[floor], neg[iou]
        num_iou = int(num_expected * (1 - self.floor_fraction))
        if len(iou_negs) <= num_iou:
            iou_part = iou_negs
        elif self.num_bins >= 2:
            iou_part = self._via_interval(max_overlaps, iou_negs, num_iou, rng)
        else:
            iou_part = random_choice(iou_negs, num_iou, rng)
        sampled = np.concatenate([random_choice(floor_negs, num_expected - len(iou_part), rng), iou_part])
        if len(sampled) < num_expected:
            rest = np.setdiff1d(neg, sampled)
            sampled = np.concatenate([sampled, random_choice(rest, num_expected - len(sampled), rng)])
        return sampled


class CombinedSampler(RandomSampler):
    """mmdet CombinedSampler: the base frame with a positive and a negative part sampler (Libra's by default).
    Keep one instance for the whole training run: the negative part's floor_thr is state."""

    def __init__(self, num=512, pos_fraction=0.25, pos_sampler=None, neg_sampler=None, neg_pos_ub=-1):
        super().__init__(num, pos_fraction, neg_pos_ub)
        self.pos_sampler = InstanceBalancedPosSampler() if pos_sampler is None else pos_sampler
        self.neg_sampler = IoUBalancedNegSampler() if neg_sampler is None else neg_sampler

    def sample_pos(self, gt_inds, max_overlaps, num_expected, rng):
        return self.pos_sampler.sample_pos(gt_inds, max_overlaps, num_expected, rng)

    def sample_neg(self, gt_inds, max_overlaps, num_expected, rng):
        return self.neg_sampler.sample_neg(gt_inds, max_overlaps, num_expected, rng)


def step_rng(seed, step):
    """The samplers' Generator for one training step: from (seed, step) alone, so both twins draw alike and a
    resumed run draws what the uninterrupted one would."""
    return np.random.default_rng([int(seed), int(step)])
