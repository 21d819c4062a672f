"""AP-Loss twins against the float64 NumPy loop (align/numpy_ref/aploss.py), closed forms and each other.

Float64 must equal the loop definition to 1e-9 (it does to ~1e-15). Float32 is held to FLOAT32_REL against
the float64 reference: a few hundred float32 ulps of the largest gradient (measured errors are ~1e-7).
"""
import math

import numpy as np
import paddle
import pytest
import torch
import torch.nn.functional as F

import paddle_impl.assigners.aploss_assign as PA
import paddle_impl.losses.aploss as P
import torch_ref.assigners.aploss_assign as TA
import torch_ref.losses.aploss as T
from align.compare import check_float32, check_float64, diff_stats
from align.loss_specs.aploss import SPEC, _anchors
from align.numpy_ref import aploss as ref

FRAMEWORKS = ("torch", "paddle")
DTYPES = ("float64", "float32")
FLOAT32_REL = 2e-5
CASES = {case.name: case for case in SPEC.make_cases(np.random.default_rng(0))}


def to_tensor(fw, array, dtype, grad=False):
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(dtype)
    if fw == "torch":
        return torch.tensor(array, requires_grad=grad)
    return paddle.to_tensor(array, stop_gradient=not grad)


def call(fw, dtype, inputs, grad_wrt, upstream=1.0):
    """Run the spec's loss object like the runner: -> ({output: float}, {input: grad array})."""
    tensors = {k: to_tensor(fw, v, dtype, grad=k in grad_wrt) for k, v in inputs.items()}
    outputs = (SPEC.build_torch if fw == "torch" else SPEC.build_paddle)(dtype)(**tensors)
    total = sum(outputs.values())
    (total * upstream).backward()
    return ({k: float(v.item()) for k, v in outputs.items()},
            {k: tensors[k].grad.numpy() for k in grad_wrt})


@pytest.fixture(scope="module")
def reference():
    cache = {}

    def get(name):
        if name not in cache:
            case = CASES[name]
            cache[name] = SPEC.numpy_reference(case.steps, case.grad_wrt)
        return cache[name]
    return get


def assert_close(expected, actual, dtype, what):
    if dtype == "float64":
        stats = check_float64(expected, actual)
        assert stats["passed"], f"{what}: {stats}"
    else:
        stats = diff_stats(expected, actual)
        assert stats["max_rel"] <= FLOAT32_REL, f"{what}: {stats}"


# ------------------------------------------------------------------------------------------ vs NumPy loop
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("name", list(CASES))
def test_spec_cases_match_numpy_loop(name, fw, dtype, reference):
    case = CASES[name]
    for step, expected in zip(case.steps, reference(name)):
        outputs, grads = call(fw, dtype, step, case.grad_wrt)
        for key, value in expected["outputs"].items():
            assert_close(np.array([value]), np.array([outputs[key]]), dtype, f"{name} {fw} {key}")
        for key, value in expected["grads"].items():
            assert np.all(np.isfinite(grads[key]))
            assert_close(value, grads[key], dtype, f"{name} {fw} grad {key}")


@pytest.mark.parametrize("name", ["random", "extreme_logits", "large_batch", "module"])
def test_float32_cross_framework_within_noise(name):
    """The project's float32 rule: torch vs paddle within 4x the smaller float32-vs-float64 noise."""
    case = CASES[name]
    step = case.steps[0]
    runs = {(fw, dt): call(fw, dt, step, case.grad_wrt) for fw in FRAMEWORKS for dt in DTYPES}
    for key in case.grad_wrt:
        stats = check_float32(*(runs[fw, dt][1][key] for dt in ("float32", "float64") for fw in FRAMEWORKS))
        assert stats["passed"], f"{name} {key}: {stats}"


# ------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_closed_form_with_interpolation(fw):
    """Positives 0 and 1, negative 1.5 (delta 1). Positive 0: a = 2, b = 1, prec 2/3. Positive 1: a = 1,
    b = 0.75, prec 4/7 < 2/3, so it takes 2/3 and its negative term is scaled by (1/3)/(3/7) = 7/9.
    grad(neg) = (1/3 + 0.75/1.75 * 7/9) / 2 = 1/3, grad(pos) = -(1 - 2/3)/2 each, loss = 1/3."""
    outputs, grads = call(fw, "float64", {"logits": np.array([0.0, 1.0, 1.5]), "targets": np.array([1, 1, 0])},
                          ("logits",))
    assert outputs["loss"] == pytest.approx(1 / 3, abs=1e-15)
    np.testing.assert_allclose(grads["logits"], [-1 / 6, -1 / 6, 1 / 3], rtol=0, atol=1e-15)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_closed_form_threshold_and_ignored(fw):
    """Negative at f - delta exactly has ramp 0 (the threshold keeps it, grad 0); negative below it is
    filtered; ignored elements get no gradient however high their logit. One negative at f: b = 0.5."""
    logits = np.array([[2.0, 1.0, 0.5, 2.0, 9.0]])
    targets = np.array([[1, 0, 0, 0, -1]])
    outputs, grads = call(fw, "float64", {"logits": logits, "targets": targets}, ("logits",))
    assert outputs["loss"] == pytest.approx(1 - 1 / 1.5, abs=1e-15)
    np.testing.assert_allclose(grads["logits"], [[-(1 - 1 / 1.5), 0, 0, 0.5 / 1.5, 0]], rtol=0, atol=1e-15)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("targets", [np.zeros((3, 4), np.int64), np.full((3, 4), -1),
                                     -(np.eye(3, 4) > 0).astype(np.int64)])
def test_no_positive_gives_zero_loss_and_zero_grad(fw, targets):
    outputs, grads = call(fw, "float32", {"logits": np.linspace(-5, 5, 12).reshape(3, 4), "targets": targets},
                          ("logits",))
    assert outputs["loss"] == 0.0
    assert grads["logits"].shape == (3, 4) and not np.any(grads["logits"])


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_backward_is_saved_gradient_times_incoming(fw):
    """The custom backward scales the forward's gradient; it is not the derivative of the value."""
    case = CASES["random"]
    step = case.steps[0]
    _, once = call(fw, "float64", step, ("logits",))
    _, scaled = call(fw, "float64", step, ("logits",), upstream=-2.5)
    np.testing.assert_allclose(scaled["logits"], -2.5 * once["logits"], rtol=1e-15, atol=0)
    expected = ref.ap_loss_loop(step["logits"], step["targets"])[1]
    assert check_float64(expected, once["logits"])["passed"]


# ------------------------------------------------------------------------ chunking and the bucket lookup
@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("fallback", [False, True])
def test_small_chunks_and_searchsorted_fallback_equal_loop(fw, fallback, monkeypatch):
    """Element chunks of 257, positive blocks of a few rows, and the searchsorted path all give the loop."""
    mod = T if fw == "torch" else P
    monkeypatch.setattr(mod, "ELEMENT_CHUNK", 257)
    monkeypatch.setattr(mod, "TABLE_ENTRIES", 300)
    if fallback:
        monkeypatch.setattr(mod, "LOOKUP_MAX_PER_CELL", 0)
    rng = np.random.default_rng(3)
    logits = np.round(rng.standard_normal(3000) * 4, 1)                 # many ties
    targets = np.where(rng.random(3000) < 0.03, 1, np.where(rng.random(3000) < 0.1, -1, 0))
    expected_loss, expected_grad = ref.ap_loss_loop(logits, targets)
    outputs, grads = call(fw, "float64", {"logits": logits, "targets": targets}, ("logits",))
    assert abs(outputs["loss"] - expected_loss) <= 1e-12
    assert check_float64(expected_grad, grads["logits"])["passed"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_bucket_lookup_equals_searchsorted(fw, dtype):
    mod = T if fw == "torch" else P
    rng = np.random.default_rng(4)
    used_grid = 0
    for trial in range(40):
        edges = np.sort(rng.standard_normal(2 * int(rng.integers(1, 40))) * [1e-3, 1, 30, 1e6][trial % 4])
        if trial % 5 == 0:
            edges = np.round(edges)                                      # duplicated edges
        edges = edges.astype(dtype)
        x = np.concatenate([edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf),
                            (rng.standard_normal(500) * (np.abs(edges).max() + 1)).astype(dtype)])
        e_t, x_t = to_tensor(fw, edges, dtype), to_tensor(fw, x, dtype)
        lookup = mod._edge_lookup(e_t)
        used_grid += lookup is not None
        np.testing.assert_array_equal(mod._bucket_of(x_t, e_t, lookup).numpy(),
                                      np.searchsorted(edges, x, side="right"))
    assert used_grid >= 20


# --------------------------------------------------------------------------- assignment and regression
def assign(fw, anchors, annotations, num_classes, dtype="float64"):
    if fw == "torch":
        out = TA.assign_targets(torch.tensor(anchors), torch.tensor(annotations), num_classes, getattr(torch, dtype))
    else:
        out = PA.assign_targets(paddle.to_tensor(anchors), paddle.to_tensor(annotations), num_classes, dtype)
    return [o.numpy() for o in out]


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_assignment_matches_reference_with_ties(fw):
    """Anchors 0-3 are identical boxes: a GT equal to them gives a 4-way column-max tie (all positive).
    GTs 1 and 2 are identical too: anchors matching both take the first. Image 2 has only padding."""
    anchors = np.array([[0, 0, 15, 15]] * 4 + [[16, 0, 31, 15], [40, 40, 71, 71], [100, 100, 107, 107]], float)
    ann = np.full((2, 4, 5), -1.0)
    ann[0, 0] = [0, 0, 15, 15, 2]
    ann[0, 1] = [38, 38, 70, 72, 0]
    ann[0, 2] = [38, 38, 70, 72, 1]
    expected = ref.assign(anchors, ann, 3)
    got = assign(fw, anchors, ann, 3)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert check_float64(expected[2], got[2])["passed"]
    assert got[1][0, :4].all() and got[1][0, 5] and not got[1][1].any()
    assert got[0][0, 5].tolist() == [1, 0, 0]                        # first of the two tied GTs (label 0)
    assert (got[0][1] == 0).all()                                     # no GT: all negatives


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_assignment_official_quirk_gt_without_overlap(fw):
    """A GT that overlaps no anchor has column max 0, so (officially) every anchor attains it."""
    anchors = np.array([[0, 0, 15, 15], [16, 0, 31, 15]], float)
    ann = np.array([[[0, 0, 15, 15, 1], [200, 200, 220, 220, 0]]], float)
    targets, positive, _ = assign(fw, anchors, ann, 2)
    assert positive.tolist() == [[True, True]]
    assert targets[0].tolist() == [[0, 1], [0, 1]]                     # both assigned to GT 0 (IoU 1 and 0)
    np.testing.assert_array_equal(targets, ref.assign(anchors, ann, 2)[0])


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_regression_targets_clip_degenerate_gt_width_to_one(fw):
    """GT [10, 10, 9.5, 9.5]: legacy width 0.5, centre 9.75 (from the unclipped width), width clipped to 1."""
    anchors = np.array([[8, 8, 11, 11], [40, 40, 47, 47]], float)
    ann = np.array([[[10, 10, 9.5, 9.5, 0]]])
    _, positive, reg = assign(fw, anchors, ann, 1)
    assert positive.tolist() == [[True, False]]
    expected = [(9.75 - 9.5) / 4 / 0.1, (9.75 - 9.5) / 4 / 0.1, math.log(1 / 4) / 0.2, math.log(1 / 4) / 0.2]
    np.testing.assert_allclose(reg[0, 0], expected, rtol=1e-15)
    np.testing.assert_allclose(reg, ref.assign(anchors, ann, 1)[2], rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_regression_gradient_is_a_quarter_of_autograd(fw, dtype):
    """The official regression gradient is smooth-L1's derivative / 4 (value: sum / num_pos)."""
    case = CASES["module"]
    step = case.steps[0]
    _, positive, reg_targets = ref.assign(step["anchors"], step["annotations"], step["cls_logits"].shape[-1])
    outputs, grads = call(fw, dtype, step, case.grad_wrt)
    pred = torch.tensor(step["reg_preds"], requires_grad=True)
    mask = torch.tensor(positive)
    value = F.smooth_l1_loss(pred[mask], torch.tensor(reg_targets)[mask], beta=1.0, reduction="sum") / mask.sum()
    value.backward()
    assert 0 < positive.sum() and outputs["reg_loss"] == pytest.approx(value.item(), rel=1e-6)
    assert_close(pred.grad.numpy() / 4, grads["reg_preds"], dtype, "quarter gradient")


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_no_gt_gives_zero_regression_and_all_negatives(fw):
    outputs, grads = call(fw, "float64", CASES["module_no_gt"].steps[0], ("cls_logits", "reg_preds"))
    assert outputs == {"cls_loss": 0.0, "reg_loss": 0.0}              # no positive anywhere: AP-Loss 0 too
    assert not grads["reg_preds"].any() and not grads["cls_logits"].any()


def test_anchor_helper_is_exact_in_float32():
    anchors = _anchors()
    assert anchors.shape == (384, 4) and np.array_equal(anchors.astype(np.float32).astype(np.float64), anchors)


# ------------------------------------------------------------------------------------------- bad inputs
def _bad_ap_inputs():
    x, t = np.zeros((2, 3)), np.zeros((2, 3), np.int64)
    nan, inf = x.copy(), x.copy()
    nan[0, 1], inf[1, 2] = np.nan, -np.inf
    return {
        "logits int": ("logits", dict(logits=t, targets=t)),
        "logits float16": ("logits", dict(logits=x.astype(np.float16), targets=t)),
        "logits NaN": ("logits", dict(logits=nan, targets=t)),
        "logits Inf": ("logits", dict(logits=inf, targets=t)),
        "targets shape": ("targets", dict(logits=x, targets=t[:, :2])),
        "targets bool": ("targets", dict(logits=x, targets=t > 0)),
        "targets uint8": ("targets", dict(logits=x, targets=t.astype(np.uint8))),
        "targets value": ("targets", dict(logits=x, targets=t + 2)),
        "targets NaN": ("targets", dict(logits=x, targets=nan)),
        "delta zero": ("delta", dict(logits=x, targets=t, delta=0.0)),
        "delta nan": ("delta", dict(logits=x, targets=t, delta=math.nan)),
        "delta inf": ("delta", dict(logits=x, targets=t, delta=math.inf)),
        "delta bool": ("delta", dict(logits=x, targets=t, delta=True)),
    }


def _raise_message(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


def _native(fw, value):
    """Arrays become tensors in their own dtype (float16 / int / bool kept), other values pass through."""
    if not isinstance(value, np.ndarray):
        return value
    return torch.from_numpy(value.copy()) if fw == "torch" else paddle.to_tensor(value)


@pytest.mark.parametrize("case", list(_bad_ap_inputs()))
def test_bad_ap_inputs_raise_same_value_error(case):
    name, kwargs = _bad_ap_inputs()[case]
    messages = [_raise_message(lambda: mod.ap_loss(**{k: _native(fw, v) for k, v in kwargs.items()}))
                for fw, mod in (("torch", T), ("paddle", P))]
    assert messages[0] == messages[1]
    assert messages[0].startswith(name), messages[0]


def _bad_module_inputs():
    step = {k: v[:, :12] if k in ("cls_logits", "reg_preds") else v for k, v in CASES["module"].steps[0].items()}
    step["anchors"] = step["anchors"][:12]
    bad_label, frac_label, nan_ann = (step["annotations"].copy() for _ in range(3))
    bad_label[0, 0, 4], frac_label[0, 0, 4], nan_ann[0, 0, 1] = 5, 1.5, np.nan
    return {
        "cls_logits 2-D": ("cls_logits", dict(step, cls_logits=step["cls_logits"][0])),
        "reg_preds shape": ("reg_preds", dict(step, reg_preds=step["reg_preds"][..., :3])),
        "reg_preds dtype": ("reg_preds", dict(step, reg_preds=step["reg_preds"].astype(np.float32))),
        "anchors count": ("anchors", dict(step, anchors=step["anchors"][:5])),
        "anchors int": ("anchors", dict(step, anchors=step["anchors"].astype(np.int64))),
        "annotations columns": ("annotations", dict(step, annotations=step["annotations"][..., :4])),
        "annotations batch": ("annotations", dict(step, annotations=step["annotations"][:1])),
        "annotations NaN": ("annotations", dict(step, annotations=nan_ann)),
        "label out of range": ("annotations", dict(step, annotations=bad_label)),
        "label not integer": ("annotations", dict(step, annotations=frac_label)),
    }


@pytest.mark.parametrize("case", list(_bad_module_inputs()))
def test_bad_module_inputs_raise_same_value_error(case):
    name, kwargs = _bad_module_inputs()[case]
    messages = [_raise_message(lambda: mod.APLoss()(**{k: _native(fw, v) for k, v in kwargs.items()}))
                for fw, mod in (("torch", T), ("paddle", P))]
    assert messages[0] == messages[1]
    assert messages[0].startswith(name), messages[0]


def test_bad_delta_in_constructor():
    for mod in (T, P):
        with pytest.raises(ValueError, match="^delta"):
            mod.APLoss(delta=-1.0)
