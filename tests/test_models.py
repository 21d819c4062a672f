"""The model twins: torchvision compatibility, shapes, anchors, box coder, NMS post-processing."""
import math

import numpy as np
import paddle
import pytest
import torch
import torchvision

from align.numpy_ref.box_coder import delta_decode, delta_encode
from align.seeded_init import seeded_init_torch
from align.zoo import MODELS, build_twins, get_spec
from paddle_impl.coders.box_coder import DeltaXYWHBBoxCoder as PCoder
from paddle_impl.priors.anchors import AnchorGenerator as PAnchors
from torch_ref.backbones.resnet import resnet50
from torch_ref.coders.box_coder import DeltaXYWHBBoxCoder as TCoder
from torch_ref.detectors.retinanet import RetinaNet as TRetina
from torch_ref.necks.fpn import FPN as TFPN
from torch_ref.priors.anchors import AnchorGenerator as TAnchors
from weights_convert.convert import layout_from_models
from weights_convert.transfer import copy_torch_to_paddle


def test_torchvision_resnet50_state_dict_loads_and_matches():
    tv = torchvision.models.resnet50().eval().double()
    ours = resnet50().double()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 80, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), tv(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_twins_mirror_names_and_shapes(name):
    layout = layout_from_models(*build_twins(get_spec(name)))   # raises if the twins differ
    assert len(layout.paddle_shapes) > 100


def test_fpn_p5_variant_matches_torchvision_feature_pyramid():
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7
    torch.manual_seed(0)
    ours = TFPN((8, 16, 32), 8, extra_from="p5", relu_before_p7=True).double()
    tv = FeaturePyramidNetwork([8, 16, 32], 8, extra_blocks=LastLevelP6P7(8, 8)).double()
    mapping = {}
    for i in range(3):
        mapping[f"lateral_convs.{i}"] = f"inner_blocks.{i}.0"
        mapping[f"fpn_convs.{i}"] = f"layer_blocks.{i}.0"
    mapping.update({"p6_conv": "extra_blocks.p6", "p7_conv": "extra_blocks.p7"})
    tv.load_state_dict({f"{mapping[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v
                        for k, v in ours.state_dict().items()})
    feats = [torch.randn(2, c, s, s + 3, dtype=torch.float64) for c, s in ((8, 15), (16, 8), (32, 4))]
    ours_out = ours(feats)
    tv_out = list(tv({str(i): f for i, f in enumerate(feats)}).values())
    assert len(ours_out) == 5 and [o.shape[-2:] for o in ours_out][-2:] == [(2, 4), (1, 2)]
    for a, b in zip(ours_out, tv_out):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_fpn_default_takes_p6_from_c5_without_relu():
    ours = TFPN((8, 16, 32), 8).double()
    feats = [torch.randn(1, c, s, s, dtype=torch.float64) for c, s in ((8, 16), (16, 8), (32, 4))]
    out = ours(feats)
    torch.testing.assert_close(out[3], ours.p6_conv(feats[2]))
    torch.testing.assert_close(out[4], ours.p7_conv(out[3]))      # no ReLU: negative P6 values pass


def test_retina_head_shapes_and_prior():
    model = TRetina(num_classes=5)
    assert torch.allclose(model.bbox_head.retina_cls.bias, torch.tensor(-math.log(99.0)))
    cls, reg = model.eval()(torch.zeros(2, 3, 64, 96))
    sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    assert [c.shape for c in cls] == [(2, h * w * 9, 5) for h, w in sizes]
    assert [r.shape for r in reg] == [(2, h * w * 9, 4) for h, w in sizes]


def _numpy_anchors(stride, h, w, base, per_octave, ratios, offset):
    rows = []
    for y in range(h):
        for x in range(w):
            cx, cy = (x + offset) * stride, (y + offset) * stride
            for r in ratios:
                for i in range(per_octave):
                    s = base * 2 ** (i / per_octave) * stride
                    bw, bh = s / math.sqrt(r), s * math.sqrt(r)
                    rows.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return np.array(rows)


@pytest.mark.parametrize("cfg", [dict(), dict(scales_per_octave=2, center_offset=0.5)])
def test_anchors_match_closed_form_in_both_frameworks(cfg):
    t = TAnchors(**cfg)(([5, 7], [3, 4]), dtype=torch.float64)
    p = PAnchors(**cfg)(([5, 7], [3, 4]), dtype="float64")
    per_octave = cfg.get("scales_per_octave", 3)
    for level, (stride, (h, w)) in enumerate(zip((8, 16), [(5, 7), (3, 4)])):
        ref = _numpy_anchors(stride, h, w, 4, per_octave, (0.5, 1.0, 2.0), cfg.get("center_offset", 0.0))
        assert t[level].shape == (h * w * 3 * per_octave, 4)
        np.testing.assert_allclose(t[level].numpy(), ref, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(p[level].numpy(), t[level].numpy())
    if not cfg:  # ratio 1 (ratio-major: anchor 3), first scale, first location: 32 x 32 centred on the origin
        assert t[0][3].tolist() == [-16.0, -16.0, 16.0, 16.0]


def test_box_coder_round_trip_and_numpy_reference():
    rng = np.random.default_rng(0)
    anchors = np.sort(rng.uniform(0, 100, (50, 2, 2)), axis=1).transpose(0, 2, 1).reshape(50, 4)[:, [0, 1, 2, 3]]
    anchors = np.concatenate([anchors[:, :2], anchors[:, :2] + rng.uniform(4, 60, (50, 2))], axis=1)
    gt = np.concatenate([anchors[:, :2] + rng.uniform(-5, 5, (50, 2)), anchors[:, 2:] + rng.uniform(-3, 8, (50, 2))], 1)
    means, stds = (0.1, -0.1, 0.0, 0.05), (0.1, 0.1, 0.2, 0.2)
    ref = delta_encode(anchors, gt, means, stds)
    t = TCoder(means, stds)
    p = PCoder(means, stds)
    te = t.encode(torch.from_numpy(anchors), torch.from_numpy(gt))
    pe = p.encode(paddle.to_tensor(anchors), paddle.to_tensor(gt))
    np.testing.assert_allclose(te.numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pe.numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.decode(torch.from_numpy(anchors), te).numpy(), gt, rtol=0, atol=1e-9)
    np.testing.assert_allclose(p.decode(paddle.to_tensor(anchors), pe).numpy(), gt, rtol=0, atol=1e-9)
    # huge dw is clamped at log(1000/16); boxes are clipped to the image
    big = np.array([[0.0, 0.0, 20.0, 10.0]])
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    expected = delta_decode(box, big, max_shape=(30, 40))
    for out in (t.decode(torch.from_numpy(box), torch.from_numpy(big), max_shape=(30, 40)).numpy(),
                p.decode(paddle.to_tensor(box), paddle.to_tensor(big), max_shape=(30, 40)).numpy()):
        np.testing.assert_allclose(out, expected, rtol=1e-12)
        assert out.max() == 40.0


def test_nms_twins_agree_with_each_other_and_torchvision():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (300, 2))], axis=1)
    scores = rng.permutation(300) / 300.0 + 0.001
    labels = rng.integers(0, 3, 300)
    tv = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5)
    pd = paddle.vision.ops.nms(paddle.to_tensor(boxes), 0.5, scores=paddle.to_tensor(scores),
                               category_idxs=paddle.to_tensor(labels), categories=[0, 1, 2])
    assert 0 < len(tv) < 300
    np.testing.assert_array_equal(tv.numpy(), pd.numpy())


def test_postprocess_nms_keeps_best_of_overlapping_same_class():
    model = TRetina(num_classes=2, score_thresh=0.05)
    anchors = [torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10]], dtype=torch.float64)]
    logits = [torch.tensor([[3.0, -9], [2.0, -9], [-9, 1.0]], dtype=torch.float64)]
    deltas = [torch.zeros(3, 4, dtype=torch.float64)]
    det = model.postprocess_single(logits, deltas, anchors, (20, 20))
    # anchors 0 and 1 overlap (IoU 0.82) in class 0: only the higher score survives; class 1 is separate
    assert det["labels"].tolist() == [0, 1] and det["anchor_index"].tolist() == [0, 2]
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([3.0, 1.0], dtype=torch.float64)))


def test_frozen_stages_and_norm_eval_on_both_sides():
    t, p = build_twins(get_spec("retina_r50"))
    seeded_init_torch(t, 0)
    copy_torch_to_paddle(t, p)
    t.double().train()
    p.to(dtype="float64")
    p.train()
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64))
    mean_before = p.backbone.layer3[0].bn1._mean.numpy().copy()
    t_out = t.backbone(torch.from_numpy(x))[-1].detach().numpy()
    p_out = p.backbone(paddle.to_tensor(x))[-1].numpy()
    # train mode, yet every BatchNorm used (and kept) its running statistics: same function as eval mode
    np.testing.assert_array_equal(p.backbone.layer3[0].bn1._mean.numpy(), mean_before)
    np.testing.assert_allclose(p_out, t_out, rtol=0, atol=1e-9 * np.abs(t_out).max())
    with torch.no_grad():
        np.testing.assert_array_equal(t.eval().backbone(torch.from_numpy(x))[-1].numpy(), t_out)
    assert not t.backbone.layer1[0].conv1.weight.requires_grad and t.backbone.layer2[0].conv1.weight.requires_grad
    assert p.backbone.layer1[0].conv1.weight.stop_gradient and not p.backbone.layer2[0].conv1.weight.stop_gradient
