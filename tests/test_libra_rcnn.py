"""The Libra R-CNN detector twins: mmdetection's 356 state_dict keys, the Paddle twin holding the same weights,
inference outputs that agree in float64, and the analytically zero gradient the backward check judges as zero."""
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch

from align import zoo
from align.detections import two_stage_outputs
from align.hooks import flatten_outputs

KEYS = Path(__file__).parent / "fixtures" / "libra_keys" / "libra_keys.txt"


@pytest.fixture(scope="module")
def twins():
    spec = zoo.get_spec("libra_rcnn")
    t, p = zoo.build_models(spec, None, 0, num_classes=80)
    return spec, t, p


def test_torch_twin_has_mmdetections_keys_and_shapes(twins):
    _, t, p = twins
    want = [line.split("\t") for line in KEYS.read_text().splitlines() if line.strip()]
    got = [(k, str(list(v.shape))) for k, v in t.state_dict().items()]
    assert got == [(k, s) for k, s in want]
    # the Paddle twin: the same parameters and buffers but torch's num_batches_tracked, Linear weights [in, out]
    p_state = p.state_dict()
    assert len(p_state) == len(want) - sum(k.endswith("num_batches_tracked") for k, _ in want)
    assert list(p_state["roi_head.bbox_head.shared_fcs.0.weight"].shape) == [12544, 1024]
    assert "neck.1.refine.phi.conv.bias" in p_state and "backbone.bn1._variance" in p_state


def _float64_outputs(spec, t, p, shape=(1, 3, 96, 128), outputs=two_stage_outputs()):
    x = spec.inputs(0, shape)["images"]
    t.double().eval()
    p.to(dtype="float64")
    p.eval()
    with torch.no_grad():
        rt = outputs(t, {"images": torch.from_numpy(x)})
    with paddle.no_grad():
        rp = outputs(p, {"images": paddle.to_tensor(x)})
    return rt, rp


def test_float64_inference_agrees(twins):
    spec, t, p = twins
    rt, rp = _float64_outputs(spec, t, p)
    pt, pp = rt["proposals"]["0"], rp["proposals"]["0"]
    assert int(pt["count"][0]) == int(pp["count"][0]) > 0
    np.testing.assert_allclose(pp["boxes"], pt["boxes"], rtol=0, atol=1e-9 * 128)
    np.testing.assert_array_equal(pp["labels"], pt["labels"])
    np.testing.assert_array_equal(pp["anchor_index"], pt["anchor_index"])
    scale = float(rt["cls_score"].abs().max())
    np.testing.assert_allclose(rp["cls_score"].numpy(), rt["cls_score"].numpy(), rtol=0, atol=1e-9 * scale)
    dt, dp = rt["detections"]["0"], rp["detections"]["0"]
    assert int(dt["count"][0]) == int(dp["count"][0]) > 0
    np.testing.assert_array_equal(dp["labels"], dt["labels"])


def test_float64_views_recompute_each_selection_in_numpy(twins):
    """The float64 views of float32 forward (align.zoo.libra.detection_view): evaluated at a float64 run's own
    proposals and detections, NumPy's decode and sigmoid / softmax of the logged head outputs give the run's
    values; and the R-CNN on given proposal anchors (proposals_at) is the R-CNN on the run's own."""
    spec, t, p = twins
    shape = (2, 3, 96, 128)
    view = spec.float64_view(t, shape)
    for side, model in (("torch", t), ("paddle", p)):
        res = _float64_outputs(spec, t, p, shape)[side == "paddle"]
        flat = []
        flatten_outputs("output", res, lambda v: v.detach().numpy() if hasattr(v, "detach") else (
            v.numpy() if hasattr(v, "numpy") else v), flat)
        records = dict(flat)
        got = view(records, records)
        for name in ("proposals", "detections"):
            for i in range(2):
                base = f"output.{name}.{i}"
                n = int(records[f"{base}.count"][0])
                assert n > 0, (side, base)
                np.testing.assert_allclose(got[f"{base}.boxes"][:n], records[f"{base}.boxes"][:n], rtol=0,
                                           atol=1e-9 * 128, err_msg=f"{side} {base}")
                np.testing.assert_allclose(got[f"{base}.scores"][:n], records[f"{base}.scores"][:n], rtol=1e-12,
                                           err_msg=f"{side} {base}")
        index = [res["proposals"][str(i)]["anchor_index"][:int(res["proposals"][str(i)]["count"][0])]
                 for i in range(2)]
        forced = _float64_outputs(spec, t, p, shape, two_stage_outputs(index))[side == "paddle"]
        # the same proposals in canonical order: the same RoIs, each image's rows permuted
        assert sorted(map(tuple, forced["rois"].numpy().round(9).tolist())) == \
            sorted(map(tuple, res["rois"].numpy().round(9).tolist()))
        for i in range(2):                 # RoI indices differ: compare the detections in (label, score) order
            a, b = forced["detections"][str(i)], res["detections"][str(i)]
            n = int(b["count"][0])
            assert int(a["count"][0]) == n
            oa, ob = (np.lexsort((d["scores"][:n], d["labels"][:n])) for d in (a, b))
            np.testing.assert_array_equal(a["labels"][:n][oa], b["labels"][:n][ob])
            np.testing.assert_allclose(a["scores"][:n][oa], b["scores"][:n][ob], rtol=1e-12)
            np.testing.assert_allclose(a["boxes"][:n][oa], b["boxes"][:n][ob], rtol=0, atol=1e-9 * 128)


def test_phi_bias_gradient_is_zero_to_rounding():
    """NonLocal2d adds theta_i . b_phi to every logit of row i; the softmax cancels it, so d loss / d b_phi is 0
    up to rounding: both frameworks return noise there, judged by align.backward.check_analytically_zero."""
    from torch_ref.necks.bfp import NonLocal2d
    torch.manual_seed(0)
    block = NonLocal2d(16).double()
    for m in block.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.3)
            torch.nn.init.normal_(m.bias, std=0.3)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    (block(x) * torch.randn(2, 16, 5, 7, dtype=torch.float64)).sum().backward()
    phi, theta = block.phi.conv.bias.grad.abs().max(), block.theta.conv.bias.grad.abs().max()
    assert theta > 1e-3 and phi < 1e-12 * theta * 1e3


def test_analytically_zero_rule_passes_rounding_and_fails_a_real_gradient():
    from align.backward import check_analytically_zero
    from align.compare import recheck
    t = {"grad.m.weight": np.full(4, 3e3), "grad.m.bias": np.full(3, 5e-12)}
    noise = check_analytically_zero(t, {**t, "grad.m.bias": np.full(3, -4e-12)}, "grad.m.bias", "softmax")
    assert noise["passed"] and recheck(noise) is None and noise["max_rel"] == pytest.approx(5e-12 / 3e3)
    real = check_analytically_zero(t, {**t, "grad.m.bias": np.full(3, 1e-3)}, "grad.m.bias", "softmax")
    assert not real["passed"] and recheck({**real, "passed": True}).startswith("not zero")
    with pytest.raises(ValueError, match="no other non-zero gradient"):
        check_analytically_zero({"grad.m.bias": np.zeros(3)}, {"grad.m.bias": np.zeros(3)}, "grad.m.bias", "x")


def test_an_mmdetection_checkpoint_round_trips_through_paddle_bit_exactly(twins, tmp_path):
    """A seeded torch state_dict under mmdetection's names (as libra_faster_rcnn_r50_fpn_1x_coco.pth holds it)
    -> Paddle (Linear weights transposed) -> torch, byte for byte; it loads strictly into the torch twin."""
    from align.convert import layout_for
    from weights_convert.checkpoint_io import load_paddle, load_torch
    from weights_convert.convert import convert_file
    from weights_convert.rules import torch_key_to_paddle as to_paddle
    _, t, _ = twins
    src_path, pd_path, back = tmp_path / "libra.pth", tmp_path / "libra.pdparams", tmp_path / "back.pth"
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in t.state_dict().items()}, src_path)
    layout = layout_for("libra_rcnn")
    assert sorted(layout.linear_keys) == sorted(k for k in t.state_dict()
                                                if k.startswith("roi_head.bbox_head.") and k.endswith(".weight"))
    convert_file(layout, str(src_path), str(pd_path))
    convert_file(layout, str(pd_path), str(back))
    src, pd, rt = load_torch(str(src_path)), load_paddle(str(pd_path)), load_torch(str(back))
    assert list(rt) == list(src)
    assert all(src[k].tobytes() == rt[k].tobytes() for k in src)
    fc = "roi_head.bbox_head.shared_fcs.0.weight"
    assert pd[fc].shape == (12544, 1024) and np.array_equal(pd[fc], src[fc].T)
    assert all(to_paddle(k) in pd for k in src if not k.endswith("num_batches_tracked"))


def test_faster_rcnn_has_libras_keys_without_bfp_and_its_plain_l1():
    """faster_rcnn_r50: mmdetection's faster-rcnn keys are Libra's without neck.1.refine and with the FPN at neck.*;
    its box loss is plain L1 (sum |d| over the positives' 4 deltas / #RoIs), Libra's Balanced L1."""
    want = [line.split("\t") for line in KEYS.read_text().splitlines() if line.strip()]
    want = [(k.replace("neck.0.", "neck.", 1), s) for k, s in want if not k.startswith("neck.1.")]
    t, p = zoo.build_twins(zoo.get_spec("faster_rcnn_r50"), num_classes=80)
    assert [(k, str(list(v.shape))) for k, v in t.state_dict().items()] == want
    paddle_names = {k.replace('._mean', '.running_mean').replace('._variance', '.running_var') for k in p.state_dict()}
    assert paddle_names == {k for k, _ in want if not k.endswith("num_batches_tracked")}
    rng = np.random.default_rng(0)
    cls, pred = rng.normal(size=(4, 81)), rng.normal(size=(4, 320))
    labels, targets = np.array([3, 80, 7, 80]), rng.normal(size=(4, 4))
    weights = np.array([[1.0] * 4, [0.0] * 4, [1.0] * 4, [0.0] * 4])
    want_l1 = sum(np.abs(pred.reshape(4, 80, 4)[i, labels[i]] - targets[i]).sum() for i in (0, 2)) / (4 + 2.0 ** -23)
    args_t = [torch.tensor(a) for a in (cls, pred, labels, np.ones(4), targets, weights)]
    args_p = [paddle.to_tensor(a) for a in (cls, pred, labels, np.ones(4), targets, weights)]
    for model, args in ((t, args_t), (p, args_p)):
        got = float(model.roi_head.bbox_head.loss(*args)["loss_bbox"])
        assert abs(got - want_l1) <= 1e-12 * want_l1


def test_float32_forward_replays_proposals_and_catches_a_planted_tf32_layer(tmp_path):
    """Float32 forward on torch's float64 proposals passes; TF32 truncation of the first fc's input in the
    Paddle twin (align.defects) fails there, the RPN and the proposals still passing."""
    from align.defects import plant
    from align.forward import align_forward
    spec = zoo.get_spec("libra_rcnn")
    shape = (1, 3, 64, 96)
    t, p = zoo.build_models(spec, None, 0)
    inputs = spec.inputs(0, shape)

    def run(out):
        return align_forward(t, p, inputs, "float32", tmp_path / out, spec.float32_outputs(t, inputs),
                             float64_view=spec.float64_view(t, shape), save_tensors="none")
    clean = run("clean")
    assert clean["passed"], clean.get("first_divergence")
    assert clean["keys"]["output.proposals.0.anchor_index"]["passed"]
    with plant(p, "roi_head.bbox_head.shared_fcs.0", "tf32"):
        planted = run("planted")
    assert not planted["passed"] and planted["first_divergence"] == "roi_head.bbox_head.shared_fcs.0"
    assert planted["keys"]["rpn_head.rpn_cls#4"]["passed"] and planted["keys"]["output.proposals.0.boxes"]["passed"]
