"""Libra R-CNN sampling (twin_common/samplers.py) against the literal loop oracle (align/numpy_ref/samplers.py),
the spec's measured effects (libra_rcnn.md B.5.3, B.5.4) and planted defects; MaxIoUAssigner in both Libra configs."""
import numpy as np
import paddle
import pytest
import torch

from align.numpy_ref import samplers as ref
from align.numpy_ref.max_iou import box_iou as np_box_iou
from align.numpy_ref.max_iou import max_iou_assign
from paddle_impl.assigners import MaxIoUAssigner as PMaxIoUAssigner
from torch_ref.assigners import MaxIoUAssigner as TMaxIoUAssigner
from twin_common.samplers import (
    CombinedSampler,
    InstanceBalancedPosSampler,
    IoUBalancedNegSampler,
    RandomSampler,
    add_gt_as_proposals,
    choose_per_group,
    random_choice,
)

paddle.set_device("cpu")


def make_case(rng, pos_per_gt, n_zero, n_low, n_ign=0, gt_props=True, dtype=np.float64):
    """Shuffled priors: positives per gt (IoU in [0.5, 1)), zero-IoU and (0, 0.5) negatives, ignored; then the gts
    prepended as proposals. Some negatives sit exactly on the bin edges 1/3."""
    pos_per_gt = np.asarray(pos_per_gt, np.int64)
    gt = np.repeat(np.arange(1, len(pos_per_gt) + 1), pos_per_gt)
    gt_inds = np.concatenate([gt, np.zeros(n_zero + n_low, np.int64), -np.ones(n_ign, np.int64)])
    low = rng.uniform(1e-6, 0.5, n_low)
    low[: n_low // 10] = np.asarray(1.0, dtype) / 3  # the edge as float: w = (1 - 0) / 3 in dtype
    mo = np.concatenate([rng.uniform(0.5, 1.0, len(gt)), np.zeros(n_zero), low, rng.uniform(0.3, 0.5, n_ign)])
    order = rng.permutation(len(gt_inds))
    gt_inds, mo = gt_inds[order], mo[order].astype(dtype)
    if gt_props:
        gt_inds, mo, _ = add_gt_as_proposals(gt_inds, mo, None, np.zeros(len(pos_per_gt), np.int64))
    return gt_inds, mo


KINDS = {
    "many_gts_few_pos": lambda r: ([int(x) for x in r.integers(1, 5, 40)], 900, 700),
    "few_gts_many_pos": lambda r: ([300, 5, 5], 800, 1000),
    "gts_at_quota": lambda r: ([2] * 64, 500, 500),  # 3 each with the gt proposal = num_per_gt: no draw, trim
    "one_gt": lambda r: ([int(r.integers(100, 400))], 400, 400),
    "no_pos": lambda r: ([], 800, 0),
    "no_pos_iou": lambda r: ([], 300, 600),
    "no_neg": lambda r: ([200, 150], 0, 0),
    "fewer_than_num": lambda r: ([5, 3], 20, 30),
    "all_iou_zero": lambda r: ([30, 30, 30, 30, 30], 1500, 0),
    "few_iou_pos": lambda r: ([50] * 4, 900, 100),
}
NEG_CONFIGS = [dict(), dict(num_bins=1), dict(num_bins=4), dict(floor_thr=0.1, floor_fraction=0.5),
               dict(floor_thr=0, floor_fraction=0.2, num_bins=2), dict(floor_fraction=0.3)]


@pytest.mark.parametrize("config", range(len(NEG_CONFIGS)))
@pytest.mark.parametrize("seed", range(12))
def test_combined_matches_loop_oracle(seed, config):
    case_rng = np.random.default_rng(1000 + seed)
    dtype = np.float32 if seed % 2 else np.float64
    vec = CombinedSampler(neg_sampler=IoUBalancedNegSampler(**NEG_CONFIGS[config]))
    oracle = ref.IoUBalancedNeg(**NEG_CONFIGS[config])
    rng_v, rng_r = np.random.default_rng(seed), np.random.default_rng(seed)
    for kind in case_rng.permutation(sorted(KINDS))[:5]:  # a sequence on the same instances: floor_thr state
        spec = KINDS[kind](case_rng)
        gt_inds, mo = make_case(case_rng, *spec, n_ign=int(case_rng.integers(0, 50)), dtype=dtype,
                                gt_props=kind != "no_pos_iou")
        pos, neg = vec.sample(gt_inds, mo, rng_v)
        rpos, rneg = ref.combined_sampler(gt_inds, mo, oracle, rng_r)
        assert pos.dtype == neg.dtype == np.int64, kind
        np.testing.assert_array_equal(pos, rpos, err_msg=kind)
        np.testing.assert_array_equal(neg, rneg, err_msg=kind)
        assert vec.neg_sampler.floor_thr == oracle.floor_thr, kind
        assert rng_v.bit_generator.state == rng_r.bit_generator.state, kind  # the same draws were consumed
        assert np.all(gt_inds[pos] > 0) and np.all(gt_inds[neg] == 0) and len(pos) + len(neg) <= 512


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ub", [-1, 0, 5])
def test_random_sampler_matches_loop_oracle(seed, ub):
    case_rng = np.random.default_rng(seed)
    gt_inds, mo = make_case(case_rng, [int(x) for x in case_rng.integers(0, 60, 4)],
                            int(case_rng.integers(0, 400)), 100, n_ign=30, gt_props=False)
    rng_v, rng_r = np.random.default_rng(seed), np.random.default_rng(seed)
    pos, neg = RandomSampler(256, 0.5, ub).sample(gt_inds, mo, rng_v)
    rpos, rneg = ref.random_sampler(gt_inds, 256, 0.5, ub, rng_r)
    np.testing.assert_array_equal(pos, rpos)
    np.testing.assert_array_equal(neg, rneg)
    assert rng_v.bit_generator.state == rng_r.bit_generator.state


def test_random_sampler_neg_pos_ub_5_cap():
    sampler, rng = RandomSampler(256, 0.5, neg_pos_ub=5), np.random.default_rng(0)
    for n_pos, want_pos, want_neg in [(10, 10, 50), (0, 0, 5), (40, 40, 200), (200, 128, 128)]:
        gt_inds = np.concatenate([np.ones(n_pos, np.int64), np.zeros(1000, np.int64), -np.ones(7, np.int64)])
        pos, neg = sampler.sample(gt_inds, np.zeros(len(gt_inds)), rng)
        assert (len(pos), len(neg)) == (want_pos, want_neg)
    pos, neg = RandomSampler(256, 0.5).sample(gt_inds, np.zeros(len(gt_inds)), rng)
    assert (len(pos), len(neg)) == (128, 128)


def test_choose_per_group_one_group_is_random_choice_and_uniform():
    gallery = np.arange(10, 30)
    for seed in range(5):
        one = choose_per_group(gallery, np.zeros(20, np.int64), 7, np.random.default_rng(seed))
        np.testing.assert_array_equal(one, np.sort(random_choice(gallery, 7, np.random.default_rng(seed))))
    group = np.array([0] * 6 + [1] * 3 + [-1] * 2 + [2])
    rng, hits = np.random.default_rng(0), np.zeros(12)
    for _ in range(3000):
        hits[choose_per_group(np.arange(12), group, 2, rng)] += 1
    np.testing.assert_allclose(hits[:9] / 3000, [1 / 3] * 6 + [2 / 3] * 3, atol=0.04)  # 2 of 6, 2 of 3, uniformly
    np.testing.assert_array_equal(hits[9:], [0, 0, 3000])  # group -1 never; a lone member always


def test_add_gt_as_proposals():
    gi, mo, lab = add_gt_as_proposals(np.array([0, 2, -1]), np.array([0.1, 0.6, 0.4], np.float32),
                                      np.array([-1, 9, -1]), np.array([4, 9]))
    np.testing.assert_array_equal(gi, [1, 2, 0, 2, -1])
    np.testing.assert_array_equal(lab, [4, 9, -1, 9, -1])
    assert mo.dtype == np.float32 and mo[:2].tolist() == [1.0, 1.0]
    gi, mo, lab = add_gt_as_proposals(np.zeros(3, np.int64), np.zeros(3), None, np.zeros(0, np.int64))
    assert len(gi) == 3 and lab is None


def b53_case():
    """3 gts with 300 / 6 / 6 positives, gt proposals included (num_per_gt = int(round(128 / 3) + 1) = 44)."""
    gt_inds, mo = make_case(np.random.default_rng(7), [299, 5, 5], 0, 1000)
    return gt_inds, mo


def check_b53(pos_sampler, seed=0):
    gt_inds, mo = b53_case()
    pos, neg = CombinedSampler(pos_sampler=pos_sampler).sample(gt_inds, mo, np.random.default_rng(seed))
    counts = np.bincount(gt_inds[pos], minlength=4)[1:]
    assert counts[0] >= 44 and counts[1:].tolist() == [6, 6]  # per gt 44 + 6 + 6, then 72 extras
    assert len(pos) < 128, "extras drawn from all positives must re-draw some already sampled"
    assert len(pos) + len(neg) == 512
    return len(pos)


def test_instance_balanced_extras_quirk_gives_fewer_than_128():
    counts = [check_b53(InstanceBalancedPosSampler(), seed) for seed in range(200)]
    # 72 extras from 312 positives of which 56 are sampled: 72 * 56 / 312 = 12.9 re-draws expected (mmdet: 112)
    assert abs(np.mean(counts) - (128 - 72 * 56 / 312)) < 1.0


def test_planted_defect_pool_excluding_sampled_fails():
    class PoolExcludesSampled(InstanceBalancedPosSampler):
        def _extra_pool(self, pos, sampled):
            return np.setdiff1d(pos, sampled)

    with pytest.raises(AssertionError, match="re-draw"):
        check_b53(PoolExcludesSampled())


def b54_case(seed=0):
    """2000 priors: 800 with IoU 0, 1000 in (0, 0.5), 200 positives (4 of them gt proposals at 1.0)."""
    rng = np.random.default_rng(seed)
    gt_inds, mo = make_case(rng, [49] * 4, 800, 1000)
    mo[gt_inds == 0] = np.where(mo[gt_inds == 0] == 0, 0, rng.uniform(1e-6, 0.5, (gt_inds == 0).sum()))
    assert len(mo) == 2000 and (gt_inds > 0).sum() == 200 and (mo[gt_inds == 0] == 0).sum() == 800
    return gt_inds, mo


def neg_split(sampler, gt_inds, mo, rng):
    pos, neg = sampler.sample(gt_inds, mo, rng)
    assert len(pos) + len(neg) == 512
    m = mo[neg]
    bins = sampler.neg_sampler.interval_bins(mo, neg)
    assert not (bins == 2).any()  # negatives < 0.5 and max 1.0: bin 2 [2/3, 1) is empty
    return (m == 0).sum(), ((m > 0) & (m < 1 / 3)).sum(), ((m >= 1 / 3) & (m < 2 / 3)).sum(), len(neg)


def check_b54(neg_sampler):
    sampler, rng = CombinedSampler(neg_sampler=neg_sampler), np.random.default_rng(3)
    gt_inds, mo = b54_case()
    zero, low, mid, n = neg_split(sampler, gt_inds, mo, rng)  # mmdet: 140 / 111 / 149
    q = n // 3
    assert zero > 60 and low > 60 and mid >= q and zero + low + mid == n, (zero, low, mid)
    assert 100 < zero < 180 and 80 < low < 150, (zero, low, mid)
    zero, low, mid, n = neg_split(sampler, gt_inds, mo, rng)  # mmdet: 0 / 231 / 175
    assert zero == 0, "later calls take zero-IoU negatives only when the IoU > 0 ones run out"
    assert low + mid == n and mid >= n // 3 and low >= n // 3
    assert sampler.neg_sampler.floor_thr == 0


def test_iou_balanced_first_and_later_calls():
    check_b54(IoUBalancedNegSampler())
    sampler = CombinedSampler()
    gt_inds, mo = b54_case(1)
    zeros = np.flatnonzero((mo == 0) & (gt_inds == 0))
    assert (sampler.neg_sampler.interval_bins(mo, zeros) == 0).all()  # zero IoU shares bin 0 with (0, 1/3)
    # when the IoU > 0 negatives run short, later calls fill from the zero-IoU floor
    sampler.sample(gt_inds, mo, np.random.default_rng(0))
    short = np.where((gt_inds == 0) & (mo > 0) & (np.arange(2000) % 4 > 0), -1, gt_inds)  # ~250 IoU > 0 left
    pos, neg = sampler.sample(short, mo, np.random.default_rng(0))
    assert ((mo[neg] > 0).sum(), len(pos) + len(neg)) == (((short == 0) & (mo > 0)).sum(), 512)


def test_planted_defect_floor_thr_not_persisted_fails():
    class Forgets(IoUBalancedNegSampler):
        def sample_neg(self, *args):
            out = super().sample_neg(*args)
            self.floor_thr = -1
            return out

    with pytest.raises(AssertionError, match="later calls"):
        check_b54(Forgets())


def test_floor_thr_is_per_instance_and_flips_only_when_sampling():
    a, b = CombinedSampler(), CombinedSampler()
    gt_inds, mo = b54_case()
    few = np.where(np.arange(2000) < 1700, -1, gt_inds)  # at most 300 negatives: no sampling, no flip
    a.sample(few, mo, np.random.default_rng(0))
    assert a.neg_sampler.floor_thr == -1
    a.sample(gt_inds, mo, np.random.default_rng(0))
    assert (a.neg_sampler.floor_thr, b.neg_sampler.floor_thr) == (0, -1)
    a.sample(gt_inds, mo, np.random.default_rng(0))
    assert a.neg_sampler.floor_thr == 0


def test_determinism_same_seed_same_sets():
    gt_inds, mo = b54_case()
    runs = [CombinedSampler().sample(gt_inds, mo, np.random.default_rng(s)) for s in (5, 5, 6)]
    for x, y in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(runs[0][1], runs[2][1])
    first = [RandomSampler(256, 0.5, 5).sample(gt_inds, mo, np.random.default_rng(9)) for _ in range(2)]
    np.testing.assert_array_equal(first[0][1], first[1][1])


def test_bad_inputs_raise():
    s = CombinedSampler()
    with pytest.raises(ValueError, match="gt_inds"):
        s.sample(np.zeros(3), np.zeros(3), np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_overlaps"):
        s.sample(np.zeros(3, np.int64), np.zeros(4), np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        s.sample(np.zeros(3, np.int64), np.zeros(3), 0)
    with pytest.raises(ValueError, match="floor_thr"):
        IoUBalancedNegSampler(floor_thr=-0.5)


# ---- MaxIoUAssigner (B.5.1): both twins vs the float64 loop, tie-heavy integer boxes ----

LIBRA_ASSIGNERS = {"rpn": dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, low_quality=True),
                   "rcnn": dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, low_quality=False)}


def int_boxes(rng, n, grid=10):
    xy = rng.integers(0, grid, (n, 2))
    return np.concatenate([xy, xy + rng.integers(1, 5, (n, 2))], axis=1).astype(np.float64)


def twin_assign(kw, anchors, gts, labels, dtype):
    t = TMaxIoUAssigner(**kw).assign(torch.tensor(anchors, dtype=getattr(torch, dtype)),
                                     torch.tensor(gts, dtype=getattr(torch, dtype)).reshape(-1, 4),
                                     torch.tensor(labels, dtype=torch.int64))
    p = PMaxIoUAssigner(**kw).assign(paddle.to_tensor(anchors.astype(dtype)),
                                     paddle.to_tensor(gts.astype(dtype).reshape(-1, 4)),
                                     paddle.to_tensor(np.asarray(labels, np.int64)))
    return [x.numpy() for x in t], [x.numpy() for x in p]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config", sorted(LIBRA_ASSIGNERS))
@pytest.mark.parametrize("seed", range(4))
def test_libra_assigners_match_loop_on_ties(seed, config, dtype):
    rng = np.random.default_rng(seed)
    gts = int_boxes(rng, 6)
    anchors = np.concatenate([int_boxes(rng, 300), gts[:2], [[0, 0, 10, 1], [0, 0, 3, 1], [0, 0, 5, 1], [0, 0, 7, 1]]])
    gts = np.concatenate([gts, [[0, 0, 10, 1], [0, 0, 10, 1]]])  # a duplicate gt: argmax and overwrite ties
    labels = rng.integers(0, 80, len(gts))
    overlaps = np_box_iou(gts, anchors)  # float64; integer boxes make the float32 IoU its rounding
    assert np.isin([0.3, 0.5, 0.7], overlaps).all()  # exact threshold values occur
    (tg, tm, tl), (pg, pm, pl) = twin_assign(LIBRA_ASSIGNERS[config], anchors, gts, labels, dtype)
    # float32 twins compare float32 IoU with float32-rounded thresholds (as mmdet's float32 tensors do)
    thr = {k: float(np.asarray(v, dtype)) if k != "low_quality" else v for k, v in LIBRA_ASSIGNERS[config].items()}
    rg, rm, rl = max_iou_assign(anchors, gts, labels, overlaps=overlaps.astype(dtype).astype(np.float64), **thr)
    for got in ((tg, tl), (pg, pl)):
        np.testing.assert_array_equal(got[0], rg)
        np.testing.assert_array_equal(got[1], rl)
    np.testing.assert_array_equal(tm, pm)
    np.testing.assert_array_equal(tm, rm.astype(dtype))
    assert {-1, 0}.issubset(set(rg.tolist())) or config == "rcnn"
    assert rg.max() > 0


def test_assigner_union_eps_and_no_gt():
    tiny = np.array([[0, 0, 1e-4, 1e-4], [0, 0, 1e-4, 5e-5]])  # unions below 1e-6: mmdet divides by 1e-6
    (tg, tm, _), (pg, pm, _) = twin_assign(LIBRA_ASSIGNERS["rpn"], tiny, tiny[:1], [3], "float64")
    np.testing.assert_allclose(tm, [1e-8 / 1e-6, 5e-9 / 1e-6], rtol=1e-12)
    np.testing.assert_allclose(pm, tm, rtol=1e-15)
    np.testing.assert_allclose(np_box_iou(tiny[:1], tiny)[0], tm, rtol=1e-12)
    for kw in LIBRA_ASSIGNERS.values():
        (tg, tm, tl), (pg, pm, pl) = twin_assign(kw, int_boxes(np.random.default_rng(0), 5), np.zeros((0, 4)),
                                                 np.zeros(0, np.int64), "float64")
        for g, m, lab in ((tg, tm, tl), (pg, pm, pl)):
            assert g.tolist() == [0] * 5 and m.tolist() == [0.0] * 5 and lab.tolist() == [-1] * 5
