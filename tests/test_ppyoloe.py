"""PP-YOLOE twins: PaddleDetection's names and sizes per scale, its initialisation, decode and anchors against
closed forms and a float64 NumPy reference, the RepVGG deploy fold, and the float64 forward alignment."""
import json
import math

import numpy as np
import paddle
import pytest
import torch

from align.zoo import build_models, build_twins, get_spec
from align.zoo.ppyoloe import SCALES
from paddle_impl.priors.grid_cells import generate_anchors_for_grid_cell as p_anchors
from tests.conftest import ROOT
from torch_ref.priors.grid_cells import generate_anchors_for_grid_cell as t_anchors
from weights_convert.rules import torch_key_to_paddle

KEYS = ROOT / "tests" / "fixtures" / "ppyoloe_keys"
# ../shared/specs/ppyoloe.md A.3: trainable parameters of PaddleDetection's models
TRAINABLE = {"s": 8_084_588, "m": 24_134_892, "l": 54_078_556, "x": 102_331_484}
# A.3: blocks per backbone stage, blocks per neck CSPStage, and the order inside neck.fpn_stages.0.0.convs
BLOCKS = {"s": ([1, 2, 2, 1], 1, ["0", "spp"]), "m": ([2, 4, 4, 2], 2, ["0", "spp", "1"]),
          "l": ([3, 6, 6, 3], 3, ["0", "1", "spp", "2"]), "x": ([4, 8, 8, 4], 4, ["0", "1", "spp", "2", "3"])}


def reference_keys(scale):
    """PaddleDetection 2.6's state_dict of ppyoloe_crn_<scale>_300e_coco: {name: shape}."""
    out = {}
    for line in (KEYS / f"ppyoloe_{scale}_keys.txt").read_text().splitlines():
        name, shape = line.split("\t")[:2]
        out[name] = json.loads(shape)
    return out


@pytest.fixture(scope="module", params=sorted(SCALES))
def twins(request):
    return request.param, *build_twins(get_spec(f"ppyoloe_{request.param}"))


def test_paddle_state_dict_is_paddledetections(twins):
    scale, t, p = twins
    assert {k: list(v.shape) for k, v in p.state_dict().items()} == reference_keys(scale)
    assert sum(int(np.prod(v.shape)) for v in p.parameters() if not v.stop_gradient) == TRAINABLE[scale]
    mapped = {torch_key_to_paddle(k): list(v.shape) for k, v in t.state_dict().items()}
    assert {k: v for k, v in mapped.items() if k is not None} == reference_keys(scale)
    assert sum(v.numel() for v in t.parameters() if v.requires_grad) == TRAINABLE[scale]


def test_depth_multiplier_and_spp_position(twins):
    scale, t, p = twins
    stages, neck_blocks, spp_order = BLOCKS[scale]
    for model, children in ((t, lambda m: [n for n, _ in m.named_children()]),
                            (p, lambda m: [n for n, _ in m.named_children()])):
        assert [len(s.blocks) for s in model.backbone.stages] == stages
        assert children(model.neck.fpn_stages[0][0].convs) == spp_order
        assert len(model.neck.pan_stages[1][0].convs) == neck_blocks


def test_paddledetection_init_gives_zero_detections_in_float32():
    """pred_cls bias -4.595 and weights 0: every score is sigmoid(float32(-4.5951199)), which is not > 0.01f, so
    PaddleDetection's init detects nothing in float32; every distance is 8 grid cells (uniform bins). The spec
    measured the score equal to 0.01f; both CPU kernels here give the correctly rounded 0.0099999988, 1 ulp below."""
    t, p = build_twins(get_spec("ppyoloe_s"))
    x = np.random.default_rng(0).normal(size=(1, 3, 96, 128)).astype(np.float32)
    with torch.no_grad():
        rt = t.eval().forward_with_detections(torch.from_numpy(x))
    rp = p.eval().forward_with_detections(paddle.to_tensor(x))
    for res, to_numpy in ((rt, lambda v: v.numpy()), (rp, lambda v: v.numpy())):
        scores = to_numpy(res["scores"])
        assert scores.shape == (1, 80, 3 * 4 + 6 * 8 + 12 * 16) and scores.dtype == np.float32
        assert np.all(scores == np.float32(0.009999998845160007)) and np.float32(0.01) > scores.max()
        np.testing.assert_allclose(to_numpy(res["distances"]), 8.0, rtol=1e-6)
        assert [len(d["scores"]) for d in res["detections"]] == [0]
    assert math.isclose(-math.log(0.99 / 0.01), -4.59511985013459, rel_tol=1e-14)
    assert float(t.yolo_head.pred_cls[0].bias[0].detach()) == pytest.approx(-4.59511985013459, rel=1e-7)


def numpy_decode(cls_logits, reg_logits, strides, reg_max=16):
    """Float64 reference of forward_eval + post_process's decode from the spec's text (A.5, A.8, A.12)."""
    scores, boxes = [], []
    for cls, reg, s in zip(cls_logits, reg_logits, strides):
        b, c, h, w = cls.shape
        scores.append((1 / (1 + np.exp(-cls))).reshape(b, c, h * w))
        bins = reg.reshape(b, 4, reg_max + 1, h, w)                       # channel = side * 17 + bin
        prob = np.exp(bins - bins.max(2, keepdims=True))
        prob /= prob.sum(2, keepdims=True)
        dist = (prob * np.arange(reg_max + 1).reshape(1, 1, -1, 1, 1)).sum(2)  # (b, 4, h, w) l, t, r, b
        ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        x1, y1 = xs - dist[:, 0], ys - dist[:, 1]
        x2, y2 = xs + dist[:, 2], ys + dist[:, 3]
        boxes.append(np.stack([x1, y1, x2, y2], -1).reshape(b, h * w, 4) * s)
    return np.concatenate(scores, -1), np.concatenate(boxes, 1)


def test_decode_matches_numpy_reference():
    t, p = build_models(get_spec("ppyoloe_s"), seed=1)
    x = np.random.default_rng(1).normal(size=(2, 3, 96, 160))
    with torch.no_grad():
        t.double().eval()
        cls, reg = t(torch.from_numpy(x))
        res = t.forward_with_detections(torch.from_numpy(x))
    scores, boxes = numpy_decode([c.numpy() for c in cls], [r.numpy() for r in reg], (32, 16, 8))
    np.testing.assert_allclose(res["scores"].numpy(), scores, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res["boxes"].numpy(), boxes, rtol=1e-12, atol=1e-11)
    p.to(dtype="float64")
    rp = p.eval().forward_with_detections(paddle.to_tensor(x))
    np.testing.assert_allclose(rp["boxes"].numpy(), boxes, rtol=1e-12, atol=1e-11)
    # a detection is the pre-NMS score and box at its (label, anchor)
    det = res["detections"][1]
    assert len(det["scores"]) > 0
    idx, labels = det["anchor_index"].numpy(), det["labels"].numpy()
    np.testing.assert_array_equal(det["scores"].numpy(), res["scores"].numpy()[1, labels, idx])
    np.testing.assert_array_equal(det["boxes"].numpy(), res["boxes"].numpy()[1, idx])


def test_grid_cell_anchors_closed_form():
    """A.8: 96x128 gives 3x4, 6x8, 12x16 cells; centres (x + 0.5) * s; ATSS boxes centre +- 2.5 * s, x1y1x2y2."""
    sizes, strides = [(3, 4), (6, 8), (12, 16)], (32, 16, 8)
    ta, tp, tn, ts = t_anchors(sizes, strides, dtype=torch.float64)
    pa, pp, pn, ps = p_anchors(sizes, strides, dtype="float64")
    assert tn == pn == [12, 48, 192]
    np.testing.assert_array_equal(ta.numpy()[0], [16 - 80, 16 - 80, 16 + 80, 16 + 80])
    np.testing.assert_array_equal(ta.numpy()[1], [48 - 80, 16 - 80, 48 + 80, 16 + 80])     # x inner
    np.testing.assert_array_equal(ta.numpy()[4], [16 - 80, 48 - 80, 16 + 80, 48 + 80])     # next row
    np.testing.assert_array_equal(ta.numpy()[12], [8 - 40, 8 - 40, 8 + 40, 8 + 40])        # stride 16
    np.testing.assert_array_equal(ts.numpy()[[0, 11, 12, 59, 60]].ravel(), [32, 32, 16, 16, 8])
    for a, b in ((ta, pa), (tp, pp), (ts, ps)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_deploy_form_equals_training_form_in_each_framework():
    spec = get_spec("ppyoloe_s")
    t, p = build_models(spec, seed=2)
    x = np.random.default_rng(2).normal(size=(1, 3, 96, 128))
    with torch.no_grad():
        before_t = [o.numpy() for o in sum(t.double().eval()(torch.from_numpy(x)), [])]
    before_p = [o.numpy() for o in sum(p.to(dtype="float64").eval()(paddle.to_tensor(x)), [])]
    spec.deploy(t, "float64")
    spec.deploy(p, "float64")
    keys = p.state_dict()
    folded = "backbone.stages.0.blocks.0.conv2.conv"
    assert f"{folded}.weight" in keys and f"{folded}.bias" in keys
    assert not any(".conv2.conv1." in k or ".conv2.conv2." in k for k in keys)
    assert {torch_key_to_paddle(k) for k in t.state_dict()} - {None} == set(keys)
    with torch.no_grad():
        after_t = [o.numpy() for o in sum(t(torch.from_numpy(x)), [])]
    after_p = [o.numpy() for o in sum(p(paddle.to_tensor(x)), [])]
    for before, after in ((before_t, after_t), (before_p, after_p)):
        for a, b in zip(before, after):
            assert np.abs(a - b).max() <= 1e-9 * np.abs(a).max()
            assert np.abs(a - b).max() > 0          # the fold really replaced the branches


def test_forward_alignment_float64_and_deploy(tmp_path):
    from align.forward_diff import run
    summary = run("ppyoloe_s", "float64", str(tmp_path), input_shape=(1, 3, 96, 128))
    assert summary["passed"], summary["first_divergence"]
    worst = max(v["max_rel"] for v in summary["keys"].values())
    assert worst <= 1e-9
    keys = summary["keys"]
    assert "backbone.stages.0.attn" in keys and "neck.fpn_stages.0.0.convs.spp" in keys
    assert "output.detections.0.scores" in keys and "output.boxes" in keys
    deployed = run("ppyoloe_s", "float64", str(tmp_path), input_shape=(1, 3, 96, 128), deploy=True)
    assert deployed["passed"] and "backbone.stages.0.blocks.0.conv2.conv" in deployed["keys"]
    assert "backbone.stages.0.blocks.0.conv2.conv1" not in deployed["keys"]
    assert (tmp_path / "ppyoloe_s" / "forward_deploy" / "summary.json").exists()


def test_paddle_hardsigmoid_in_the_twin_is_caught(tmp_path, monkeypatch):
    """A torch twin with torch's own hardsigmoid (slope 1/6) fails in float64 first at the first EffectiveSE."""
    import torch_ref.backbones.cspresnet as tc
    monkeypatch.setattr(tc, "paddle_hardsigmoid", torch.nn.functional.hardsigmoid)
    from align.forward_diff import run
    summary = run("ppyoloe_s", "float64", str(tmp_path), input_shape=(1, 3, 96, 128))
    assert not summary["passed"]
    assert summary["first_divergence"] == "backbone.stages.0.attn"
